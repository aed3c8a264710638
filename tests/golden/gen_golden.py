#!/usr/bin/python3
"""Writes the golden optimizer trajectories that golden_test.cc checks.

Every rule except Eve runs on torch.optim (1.13, single-tensor path,
foreach=False); Eve, which torch lacks, runs on a plain float32 numpy reading of
Algorithm 1 of arXiv:1611.01505v2. The learning rate of each step comes from
torch.optim.lr_scheduler (StepLR, ExponentialLR, CosineAnnealingLR) driving a
shadow optimizer, times the warm-up factor min(1, t / W), and is written into
the real optimizer's param_group before the step. Clipping is
torch.nn.utils.clip_grad_norm_ on the single tensor before the step.

Run with Debian's interpreter, which has python3-torch:
  /usr/bin/python3 tests/golden/gen_golden.py tests/data/golden_trajectories.txt
  /usr/bin/python3 tests/golden/gen_golden.py --check \
      tests/data/golden_trajectories.txt

File format (text, one token per value, '#' starts a comment line):
  inputs <name> <num_values> <num_steps>
  initial <num_values floats>
  step <t> <loss> <num_values gradient floats>        (num_steps lines)
  end
  case <name>
  inputs <name of an inputs block>
  config <ps.v1.OptimizerConfig in protobuf text format, one line>
  expect <t> <num_values floats>                      (the checked steps)
  end
Floats are written as the shortest decimal that reads back as the same
float32. Expected values are written for steps 1, 2, 3, 8, 16, 24 and 32,
which keeps the file small; the values are cumulative, so a deviation at an
unlisted step carries into the values at the next listed one.

With --check, the file is regenerated in memory and compared with the given
one: the same text, or the same tokens with numbers within 1e-5 relative (a
machine whose torch build picks other SIMD kernels may round differently).
"""

import math
import sys

import numpy as np
import torch

NUM_VALUES = 37  # odd, and not a multiple of any SIMD width
NUM_STEPS = 32
CHECKED_STEPS = [1, 2, 3, 8, 16, 24, 32]


def f32(x):
    """The shortest decimal that reads back as float32 x."""
    return np.format_float_positional(np.float32(x), unique=True, trim='-') \
        if 1e-4 <= abs(x) < 1e4 or x == 0 else \
        np.format_float_scientific(np.float32(x), unique=True, trim='-')


def make_inputs(seed, grad_scales, losses):
    rng = np.random.default_rng(seed)
    initial = rng.standard_normal(NUM_VALUES).astype(np.float32)
    grads = []
    for t in range(NUM_STEPS):
        g = (rng.standard_normal(NUM_VALUES) * grad_scales[t]).astype(
            np.float32)
        g[5] = 0.0  # one value never sees a gradient: the eps paths
        grads.append(g)
    return {'initial': initial, 'grads': grads,
            'losses': [float(l) for l in losses]}


# Gradient scales vary so that clip_norm = 4 clips some steps and not others
# (||g|| is about 6 * scale for 37 standard normal values).
SCALES_A = [1.0, 0.3, 2.0, 0.5, 1.5, 0.1, 0.8, 3.0] * (NUM_STEPS // 8)
SCALES_B = [0.05, 0.2, 0.6, 1.2, 0.4, 2.5, 0.7, 0.9] * (NUM_STEPS // 8)

# Losses that rise and fall, with jumps that hit every clip branch of Eve's
# feedback: f/f_hat above K + 1, between 1 and k + 1, below 1 / (K + 1),
# and between 1 / (k + 1) and 1.
LOSSES_A = [
    5.0, 4.0, 4.2, 60.0, 61.0, 3.0, 0.2, 0.21, 0.5, 0.45, 0.44, 2.0,
    1.9, 1.7, 1.75, 1.6, 40.0, 1.0, 0.9, 0.95, 0.7, 0.6, 0.65, 0.5,
    0.4, 0.42, 0.3, 0.01, 0.02, 0.3, 0.25, 0.2,
]
LOSSES_B = [
    1.5 + math.sin(0.7 * t) + (3.0 if t % 9 == 4 else 0.0)
    for t in range(NUM_STEPS)
]

INPUTS = {
    'a': make_inputs(1, SCALES_A, LOSSES_A),
    'b': make_inputs(2, SCALES_B, LOSSES_B),
}

SCHEDULES = {
    'const': None,
    'step': ('step', {'step_size': 7, 'gamma': 0.5}),
    'exp': ('exponential', {'gamma': 0.93}),
    'cos': ('cosine', {'t_max': 20, 'eta_min': 1e-4}),  # 32 steps: past t_max
}

# Default learning rates of the product (DESIGN.md).
DEFAULT_LR = {'sgd': 1e-2, 'momentum': 1e-2, 'adagrad': 1e-2,
              'rmsprop': 1e-2, 'adam': 1e-3, 'eve': 1e-3}

# (name, rule, rule options, learning rate or None for the default)
RULES = [
    ('sgd', 'sgd', {}, 0.05),
    ('momentum', 'momentum', {}, None),
    ('momentum_mu05', 'momentum', {'momentum': 0.5}, 0.03),
    ('momentum_ema', 'momentum', {'dampening': 0.9}, 0.05),
    ('momentum_nesterov', 'momentum', {'nesterov': True}, 0.02),
    ('adagrad', 'adagrad', {}, 0.1),
    ('adagrad_init_decay', 'adagrad',
     {'initial_accumulator_value': 0.1, 'lr_decay': 0.05, 'eps': 1e-6}, None),
    ('rmsprop', 'rmsprop', {}, None),
    ('rmsprop_alpha09', 'rmsprop', {'alpha': 0.9, 'eps': 1e-6}, 0.005),
    ('rmsprop_centered', 'rmsprop', {'centered': True}, 0.005),
    ('rmsprop_momentum', 'rmsprop', {'momentum': 0.9}, 0.002),
    ('rmsprop_centered_momentum', 'rmsprop',
     {'centered': True, 'momentum': 0.5}, 0.002),
    ('adam', 'adam', {}, 0.02),
    ('adam_betas', 'adam', {'beta1': 0.8, 'beta2': 0.99, 'eps': 1e-6}, None),
    ('adam_amsgrad', 'adam', {'amsgrad': True}, 0.02),
    ('eve', 'eve', {}, 0.02),
    ('eve_params', 'eve',
     {'beta1': 0.8, 'beta2': 0.99, 'beta3': 0.9, 'k': 0.2, 'big_k': 5.0,
      'loss_floor': -0.5}, None),
]

# Extra cases: (name, rule name from RULES, schedule, warmup, weight_decay,
# clip_norm, decoupled, inputs)
EXTRA = []
for _name, _rule, _opts, _lr in RULES:
    if _name == _rule:  # the plain form of each rule
        EXTRA.append((_name + '_warmup5', _name, 'const', 5, 0.0, None, False,
                      'b'))
        EXTRA.append((_name + '_wd', _name, 'const', 0, 0.05, None, False,
                      'a'))
        EXTRA.append((_name + '_clip', _name, 'const', 0, 0.0, 4.0, False,
                      'a'))
EXTRA += [
    ('momentum_nesterov_wd_clip_cos_warmup8', 'momentum_nesterov', 'cos', 8,
     0.01, 3.0, False, 'b'),
    ('rmsprop_centered_momentum_wd_clip_step', 'rmsprop_centered_momentum',
     'step', 0, 0.02, 4.0, False, 'a'),
    ('adagrad_init_decay_warmup3_exp', 'adagrad_init_decay', 'exp', 3, 0.01,
     None, False, 'b'),
    ('adam_wd_clip_exp', 'adam', 'exp', 0, 0.05, 4.0, False, 'a'),
    ('adamw', 'adam', 'const', 0, 0.1, None, True, 'a'),
    ('adamw_amsgrad', 'adam_amsgrad', 'const', 0, 0.1, None, True, 'a'),
    ('adamw_cos_warmup5', 'adam', 'cos', 5, 0.2, None, True, 'b'),
    ('adamw_clip_step', 'adam_betas', 'step', 0, 0.05, 4.0, True, 'b'),
    ('adam_amsgrad_wd_step_warmup10', 'adam_amsgrad', 'step', 10, 0.05, None,
     False, 'b'),
    ('eve_params_wd_clip_cos_warmup4', 'eve_params', 'cos', 4, 0.02, 4.0,
     False, 'a'),
    ('eve_exp_b', 'eve', 'exp', 0, 0.0, None, False, 'b'),
]


def config_text(rule, opts, lr, schedule, warmup, wd, clip, decoupled):
    """The case's ps.v1.OptimizerConfig in protobuf text format."""
    fields = []
    for key, value in opts.items():
        if isinstance(value, bool):
            fields.append('%s: %s' % (key, 'true' if value else 'false'))
        else:
            fields.append('%s: %r' % (key, value))
    if decoupled:
        fields.append('decoupled_weight_decay: true')
    parts = ['%s { %s }' % (rule, ' '.join(fields)) if fields else
             '%s {}' % rule]
    if lr is not None:
        parts.append('learning_rate: %r' % lr)
    if wd:
        parts.append('weight_decay: %r' % wd)
    if clip is not None:
        parts.append('clip_norm: %r' % clip)
    sched = []
    if schedule is not None:
        kind, params = schedule
        sched.append('%s { %s }' % (kind, ' '.join(
            '%s: %r' % kv for kv in params.items())))
    if warmup:
        sched.append('warmup_steps: %d' % warmup)
    if sched:
        parts.append('schedule { %s }' % ' '.join(sched))
    return ' '.join(parts)


def scheduled_rates(base_lr, schedule, warmup):
    """lr_t for t = 1..NUM_STEPS from torch's schedulers on a shadow
    optimizer, times the warm-up factor."""
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    if schedule is None:
        sched = None
    else:
        kind, p = schedule
        if kind == 'step':
            sched = torch.optim.lr_scheduler.StepLR(
                shadow, step_size=p['step_size'], gamma=p['gamma'])
        elif kind == 'exponential':
            sched = torch.optim.lr_scheduler.ExponentialLR(
                shadow, gamma=p['gamma'])
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                shadow, T_max=p['t_max'], eta_min=p['eta_min'])
    rates = []
    for t in range(1, NUM_STEPS + 1):
        lr = shadow.param_groups[0]['lr']
        if warmup:
            lr = lr * min(1.0, t / warmup)
        rates.append(lr)
        shadow.step()  # no gradient: a no-op that keeps the scheduler quiet
        if sched is not None:
            sched.step()
    return rates


def torch_optimizer(rule, opts, param, lr, wd, decoupled):
    if rule == 'sgd':
        return torch.optim.SGD([param], lr=lr, weight_decay=wd, foreach=False)
    if rule == 'momentum':
        return torch.optim.SGD([param], lr=lr, weight_decay=wd,
                               momentum=opts.get('momentum', 0.9),
                               dampening=opts.get('dampening', 0.0),
                               nesterov=opts.get('nesterov', False),
                               foreach=False)
    if rule == 'adagrad':
        return torch.optim.Adagrad(
            [param], lr=lr, weight_decay=wd,
            lr_decay=opts.get('lr_decay', 0.0),
            initial_accumulator_value=opts.get('initial_accumulator_value',
                                               0.0),
            eps=opts.get('eps', 1e-10), foreach=False)
    if rule == 'rmsprop':
        return torch.optim.RMSprop(
            [param], lr=lr, weight_decay=wd, alpha=opts.get('alpha', 0.99),
            eps=opts.get('eps', 1e-8), momentum=opts.get('momentum', 0.0),
            centered=opts.get('centered', False), foreach=False)
    if rule == 'adam':
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls([param], lr=lr, weight_decay=wd,
                   betas=(opts.get('beta1', 0.9), opts.get('beta2', 0.999)),
                   eps=opts.get('eps', 1e-8),
                   amsgrad=opts.get('amsgrad', False), foreach=False)
    raise ValueError(rule)


def run_torch(rule, opts, inputs, rates, wd, clip, decoupled):
    param = torch.tensor(inputs['initial'], requires_grad=True)
    opt = torch_optimizer(rule, opts, param, rates[0], wd, decoupled)
    out = []
    for t in range(NUM_STEPS):
        param.grad = torch.tensor(inputs['grads'][t])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([param], clip)
        opt.param_groups[0]['lr'] = rates[t]
        opt.step()
        out.append(param.detach().numpy().copy())
    return out


def run_eve(opts, inputs, rates, wd, clip):
    """Algorithm 1 of arXiv:1611.01505v2 in float32, as issue 2 states it:
    m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t);
    t = 1: f_hat = f, d = 1; t > 1: (delta, Delta) = (k + 1, K + 1) if
    f >= f_hat else (1 / (K + 1), 1 / (k + 1)), c = min(max(delta,
    f / f_hat), Delta), f_hat' = c f_hat, r = |f_hat' - f_hat| /
    min(f_hat', f_hat), d = beta3 d + (1 - beta3) r, f_hat = f_hat';
    theta -= lr_t m_hat / (d sqrt(v_hat) + eps). The scalars f_hat and d
    are kept in float64, the per-value arrays in float32."""
    b1 = opts.get('beta1', 0.9)
    b2 = opts.get('beta2', 0.999)
    b3 = opts.get('beta3', 0.999)
    k = opts.get('k', 0.1)
    big_k = opts.get('big_k', 10.0)
    eps = opts.get('eps', 1e-8)
    floor = opts.get('loss_floor', 0.0)
    f32t = np.float32
    theta = inputs['initial'].copy()
    m = np.zeros(NUM_VALUES, np.float32)
    v = np.zeros(NUM_VALUES, np.float32)
    d, f_hat = 1.0, None
    out = []
    for i in range(NUM_STEPS):
        t = i + 1
        g = inputs['grads'][i].copy()
        if clip is not None:
            norm = f32t(np.sqrt(np.sum(g.astype(np.float64) ** 2)))
            coef = f32t(clip) / (norm + f32t(1e-6))
            if coef < 1:
                g = g * coef
        if wd:
            g = g + f32t(wd) * theta
        f = inputs['losses'][i] - floor
        m = f32t(b1) * m + f32t(1 - b1) * g
        v = f32t(b2) * v + f32t(1 - b2) * (g * g)
        m_hat = m / f32t(1 - b1 ** t)
        v_hat = v / f32t(1 - b2 ** t)
        if t == 1:
            f_hat, d = f, 1.0
        else:
            if f >= f_hat:
                delta, big_delta = k + 1, big_k + 1
            else:
                delta, big_delta = 1 / (big_k + 1), 1 / (k + 1)
            c = min(max(delta, f / f_hat), big_delta)
            f_hat_new = c * f_hat
            r = abs(f_hat_new - f_hat) / min(f_hat_new, f_hat)
            d = b3 * d + (1 - b3) * r
            f_hat = f_hat_new
        theta = theta - f32t(rates[i]) * m_hat / (
            f32t(d) * np.sqrt(v_hat) + f32t(eps))
        assert theta.dtype == np.float32
        out.append(theta.copy())
    return out


def all_cases():
    by_name = {r[0]: r for r in RULES}
    cases = []
    for name, rule, opts, lr in RULES:
        for sname, schedule in SCHEDULES.items():
            cases.append(('%s_%s' % (name, sname), rule, opts, lr, schedule, 0,
                          0.0, None, False, 'a' if sname != 'exp' else 'b'))
    for (name, base, sname, warmup, wd, clip, decoupled, inputs) in EXTRA:
        _, rule, opts, lr = by_name[base]
        cases.append((name, rule, opts, lr, SCHEDULES[sname], warmup, wd,
                      clip, decoupled, inputs))
    return cases


def generate():
    lines = [
        '# Golden optimizer trajectories; written by tests/golden/'
        'gen_golden.py (torch %s), read by tests/golden/golden_test.cc.'
        % torch.__version__.split('a')[0],
        '# Format: see the generator\'s docstring.',
    ]
    for name, inp in INPUTS.items():
        lines.append('inputs %s %d %d' % (name, NUM_VALUES, NUM_STEPS))
        lines.append('initial ' + ' '.join(f32(x) for x in inp['initial']))
        for t in range(NUM_STEPS):
            lines.append('step %d %r %s' % (
                t + 1, inp['losses'][t],
                ' '.join(f32(x) for x in inp['grads'][t])))
        lines.append('end')
    for (name, rule, opts, lr, schedule, warmup, wd, clip, decoupled,
         inputs) in all_cases():
        base_lr = DEFAULT_LR[rule] if lr is None else lr
        rates = scheduled_rates(base_lr, schedule, warmup)
        inp = INPUTS[inputs]
        if rule == 'eve':
            traj = run_eve(opts, inp, rates, wd, clip)
        else:
            traj = run_torch(rule, opts, inp, rates, wd, clip, decoupled)
        lines.append('case ' + name)
        lines.append('inputs ' + inputs)
        lines.append('config ' + config_text(rule, opts, lr, schedule, warmup,
                                             wd, clip, decoupled))
        for t in CHECKED_STEPS:
            lines.append('expect %d %s' % (
                t, ' '.join(f32(x) for x in traj[t - 1])))
        lines.append('end')
    return '\n'.join(lines) + '\n'


def close_enough(a, b):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return abs(x - y) <= 1e-5 * max(abs(x), abs(y)) + 1e-9


def check(path, text):
    """0 when the committed file at path matches the regenerated text."""
    with open(path) as f:
        committed = f.read()
    if committed == text:
        print('%s matches the generator exactly' % path)
        return 0
    old_lines, new_lines = committed.splitlines(), text.splitlines()
    if len(old_lines) != len(new_lines):
        print('%s has %d lines; the generator writes %d' %
              (path, len(old_lines), len(new_lines)))
        return 1
    for n, (old, new) in enumerate(zip(old_lines, new_lines), 1):
        a, b = old.split(), new.split()
        if len(a) != len(b) or not all(map(close_enough, a, b)):
            print('%s:%d differs from the generator:\n  file: %.200s\n'
                  '  gen:  %.200s' % (path, n, old, new))
            return 1
    print('%s matches the generator to within 1e-5 relative' % path)
    return 0


def main():
    args = sys.argv[1:]
    checking = args[:1] == ['--check']
    if checking:
        args = args[1:]
    if len(args) != 1:
        sys.exit('usage: gen_golden.py [--check] FILE')
    torch.set_num_threads(1)
    text = generate()
    if checking:
        sys.exit(check(args[0], text))
    with open(args[0], 'w') as out:
        out.write(text)


if __name__ == '__main__':
    main()
