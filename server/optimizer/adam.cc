#include "server/optimizer/adam.h"

#include <cmath>

namespace ps::optimizer {

AdamStep MakeAdamStep(double lr, double beta1, double beta2, double eps,
                      uint64_t t) {
  const double td = static_cast<double>(t);
  AdamStep step;
  step.beta1 = static_cast<float>(beta1);
  step.beta2 = static_cast<float>(beta2);
  step.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  step.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  step.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, td)));
  step.bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(beta2, td)));
  step.eps = static_cast<float>(eps);
  return step;
}

namespace {

namespace ei = Eigen::internal;

// The SIMD packet Eigen uses for float arrays of dynamic size, its length,
// and the alignment (in bytes) Eigen wants of the destination before it
// switches from scalar to packet code.
using Packet = ei::packet_traits<float>::type;
constexpr Eigen::Index kPacketSize = ei::packet_traits<float>::size;
constexpr int kPacketAlignment = kPacketSize * sizeof(float);

// One Adam step over [offset, offset + length) as Eigen array statements.
// Used for the values that Eigen itself would compute with scalar code.
void ApplyWithEigen(FlatArray var, FlatArray m, FlatArray v,
                    std::optional<FlatArray> max_square_avg,
                    const AdamStep& step, const GradientTransform& transform,
                    ConstFlatArray grad, Eigen::Index offset,
                    Eigen::Index length) {
  alignas(64) float scratch[kChunk];
  auto p = var.segment(offset, length);
  if (step.decay_factor != 1.0f) p *= step.decay_factor;
  TransformGradient(transform, grad, var, offset, length, scratch);
  Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
  auto mc = m.segment(offset, length);
  auto vc = v.segment(offset, length);
  mc = mc * step.beta1 + step.one_minus_beta1 * g;
  vc = vc * step.beta2 + step.one_minus_beta2 * g * g;
  // Eve's feedback multiplies sqrt(v_hat); for Adam it is 1, which is exact.
  if (max_square_avg) {
    auto w = max_square_avg->segment(offset, length);
    w = w.max(vc);
    p += (-step.step_size) * mc /
         (step.feedback * (w.sqrt() / step.bias_correction2_sqrt) + step.eps);
  } else {
    p += (-step.step_size) * mc /
         (step.feedback * (vc.sqrt() / step.bias_correction2_sqrt) + step.eps);
  }
}

// The same step over [begin, end), fused into one pass: each value is loaded
// once, carried in registers through every statement above, and stored
// once. Run as separate statements, the rule is bound by loads, stores and
// loop overhead rather than by memory.
//
// Each operation is the Eigen packet function that the statements in
// ApplyWithEigen evaluate to, with the same operands in the same order, so
// the results are bit-identical, including Eigen's psqrt (which, with
// EIGEN_FAST_MATH, differs from the scalar std::sqrt).
// REQUIRES: var.data() + begin is kPacketAlignment-aligned and end - begin
// is a multiple of kPacketSize.
void ApplyFused(FlatArray var, FlatArray m, FlatArray v,
                std::optional<FlatArray> max_square_avg, const AdamStep& step,
                const GradientTransform& transform, ConstFlatArray grad,
                Eigen::Index begin, Eigen::Index end) {
  float* const p_data = var.data();
  float* const m_data = m.data();
  float* const v_data = v.data();
  float* const w_data = max_square_avg ? max_square_avg->data() : nullptr;
  const float* const g_data = grad.data();

  const bool decay = step.decay_factor != 1.0f;
  const bool scale = transform.scale != 1.0f;
  const bool l2 = transform.weight_decay != 0.0f;
  const Packet decay_factor = ei::pset1<Packet>(step.decay_factor);
  const Packet clip_scale = ei::pset1<Packet>(transform.scale);
  const Packet weight_decay = ei::pset1<Packet>(transform.weight_decay);
  const Packet beta1 = ei::pset1<Packet>(step.beta1);
  const Packet beta2 = ei::pset1<Packet>(step.beta2);
  const Packet one_minus_beta1 = ei::pset1<Packet>(step.one_minus_beta1);
  const Packet one_minus_beta2 = ei::pset1<Packet>(step.one_minus_beta2);
  const Packet neg_step_size = ei::pset1<Packet>(-step.step_size);
  const Packet bias_correction2_sqrt =
      ei::pset1<Packet>(step.bias_correction2_sqrt);
  const Packet feedback = ei::pset1<Packet>(step.feedback);
  const Packet eps = ei::pset1<Packet>(step.eps);

  for (Eigen::Index i = begin; i < end; i += kPacketSize) {
    // p *= decay_factor
    Packet p = ei::pload<Packet>(p_data + i);
    if (decay) p = ei::pmul(p, decay_factor);
    // TransformGradient: g = grad * scale; g += weight_decay * p
    Packet g = ei::ploadu<Packet>(g_data + i);
    if (scale) g = ei::pmul(g, clip_scale);
    if (l2) g = ei::padd(g, ei::pmul(weight_decay, p));
    // m = m * beta1 + one_minus_beta1 * g
    const Packet mc = ei::padd(ei::pmul(ei::ploadu<Packet>(m_data + i), beta1),
                               ei::pmul(one_minus_beta1, g));
    ei::pstoreu(m_data + i, mc);
    // v = v * beta2 + one_minus_beta2 * g * g
    const Packet vc = ei::padd(ei::pmul(ei::ploadu<Packet>(v_data + i), beta2),
                               ei::pmul(ei::pmul(one_minus_beta2, g), g));
    ei::pstoreu(v_data + i, vc);
    // AMSGrad: w = w.max(v), and w replaces v below.
    Packet s = vc;
    if (w_data != nullptr) {
      s = ei::pmax(ei::ploadu<Packet>(w_data + i), vc);
      ei::pstoreu(w_data + i, s);
    }
    // p += (-step_size) * m / (feedback * (sqrt(s) / bc2_sqrt) + eps)
    const Packet denom = ei::padd(
        ei::pmul(feedback, ei::pdiv(ei::psqrt(s), bias_correction2_sqrt)), eps);
    p = ei::padd(p, ei::pdiv(ei::pmul(neg_step_size, mc), denom));
    ei::pstore(p_data + i, p);
  }
}

}  // namespace

void AdamRule::Apply(FlatArray var, FlatArray m, FlatArray v,
                     std::optional<FlatArray> max_square_avg,
                     const AdamStep& step, const GradientTransform& transform,
                     ConstFlatArray grad) {
  // Within each chunk Eigen's statement `p += ...` computes the values before
  // p's first packet-aligned address, and those after the last whole packet,
  // with scalar code, and the rest with packets. The split is kept per chunk
  // so that every value takes the same path, and rounds the same, as it
  // would through Eigen's statements.
  ForEachChunk(var.size(), [&](Eigen::Index offset, Eigen::Index length) {
    const Eigen::Index head =
        ei::first_aligned<kPacketAlignment>(var.data() + offset, length);
    const Eigen::Index body = ((length - head) / kPacketSize) * kPacketSize;
    if (head > 0) {
      ApplyWithEigen(var, m, v, max_square_avg, step, transform, grad, offset,
                     head);
    }
    ApplyFused(var, m, v, max_square_avg, step, transform, grad, offset + head,
               offset + head + body);
    if (head + body < length) {
      ApplyWithEigen(var, m, v, max_square_avg, step, transform, grad,
                     offset + head + body, length - head - body);
    }
  });
}

}  // namespace ps::optimizer
