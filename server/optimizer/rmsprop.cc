#include "server/optimizer/rmsprop.h"

#if PS_AVX_AT_RUN_TIME
#include <immintrin.h>
#endif

namespace ps::optimizer {
namespace {

namespace ei = Eigen::internal;
using simd::kPacketSize;
using simd::Packet;

// The per-call scalars and the arrays of one RMSProp step.
struct RmsPropStep {
  FlatArray var;
  FlatArray square_avg;
  std::optional<FlatArray> grad_avg;
  std::optional<FlatArray> momentum_buffer;
  float lr;
  float alpha;
  float one_minus_alpha;
  float eps;
  float momentum;
  GradientTransform transform;
  ConstFlatArray grad;
};

// One RMSProp step over [offset, offset + length) as Eigen array statements.
// Used for the values that Eigen itself would compute with scalar code.
void ApplyWithEigen(RmsPropStep& step, Eigen::Index offset,
                    Eigen::Index length) {
  alignas(64) float scratch[kChunk];
  alignas(64) float denom_scratch[kChunk];
  TransformGradient(step.transform, step.grad, step.var, offset, length,
                    scratch);
  Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
  Eigen::Map<Eigen::ArrayXf> d(denom_scratch, length);
  auto p = step.var.segment(offset, length);
  auto v = step.square_avg.segment(offset, length);
  v = v * step.alpha + step.one_minus_alpha * g * g;
  if (step.grad_avg) {
    auto a = step.grad_avg->segment(offset, length);
    a = a * step.alpha + step.one_minus_alpha * g;
    d = (v - a * a).max(0.0f).sqrt() + step.eps;
  } else {
    d = v.sqrt() + step.eps;
  }
  if (step.momentum_buffer) {
    auto b = step.momentum_buffer->segment(offset, length);
    b = b * step.momentum + g / d;
    p += (-step.lr) * b;
  } else {
    p += (-step.lr) * g / d;
  }
}

// The same step over [begin, end), fused into one pass. Each operation is
// the Eigen packet function that the statements in ApplyWithEigen evaluate
// to, with the same operands in the same order, so the results are
// bit-identical.
// REQUIRES: var.data() + begin is simd::kPacketAlignment-aligned and
// end - begin is a multiple of kPacketSize.
void ApplyFused(RmsPropStep& step, Eigen::Index begin, Eigen::Index end) {
  float* const p_data = step.var.data();
  float* const v_data = step.square_avg.data();
  float* const a_data = step.grad_avg ? step.grad_avg->data() : nullptr;
  float* const b_data =
      step.momentum_buffer ? step.momentum_buffer->data() : nullptr;
  const float* const g_data = step.grad.data();

  const bool scale = step.transform.scale != 1.0f;
  const bool l2 = step.transform.weight_decay != 0.0f;
  const Packet clip_scale = ei::pset1<Packet>(step.transform.scale);
  const Packet weight_decay = ei::pset1<Packet>(step.transform.weight_decay);
  const Packet alpha = ei::pset1<Packet>(step.alpha);
  const Packet one_minus_alpha = ei::pset1<Packet>(step.one_minus_alpha);
  const Packet eps = ei::pset1<Packet>(step.eps);
  const Packet momentum = ei::pset1<Packet>(step.momentum);
  const Packet neg_lr = ei::pset1<Packet>(-step.lr);
  const Packet zero = ei::pset1<Packet>(0.0f);

  for (Eigen::Index i = begin; i < end; i += kPacketSize) {
    Packet p = ei::pload<Packet>(p_data + i);
    // TransformGradient: g = grad * scale; g += weight_decay * p
    Packet g = ei::ploadu<Packet>(g_data + i);
    if (scale) g = ei::pmul(g, clip_scale);
    if (l2) g = ei::padd(g, ei::pmul(weight_decay, p));
    // v = v * alpha + one_minus_alpha * g * g
    const Packet v = ei::padd(ei::pmul(ei::ploadu<Packet>(v_data + i), alpha),
                              ei::pmul(ei::pmul(one_minus_alpha, g), g));
    ei::pstoreu(v_data + i, v);
    Packet d;
    if (a_data != nullptr) {
      // a = a * alpha + one_minus_alpha * g
      const Packet a = ei::padd(ei::pmul(ei::ploadu<Packet>(a_data + i), alpha),
                                ei::pmul(one_minus_alpha, g));
      ei::pstoreu(a_data + i, a);
      // d = (v - a * a).max(0).sqrt() + eps
      d = ei::padd(ei::psqrt(ei::pmax(ei::psub(v, ei::pmul(a, a)), zero)), eps);
    } else {
      // d = v.sqrt() + eps
      d = ei::padd(ei::psqrt(v), eps);
    }
    if (b_data != nullptr) {
      // b = b * momentum + g / d; p += (-lr) * b
      const Packet b = ei::padd(
          ei::pmul(ei::ploadu<Packet>(b_data + i), momentum), ei::pdiv(g, d));
      ei::pstoreu(b_data + i, b);
      p = ei::padd(p, ei::pmul(neg_lr, b));
    } else {
      // p += (-lr) * g / d
      p = ei::padd(p, ei::pdiv(ei::pmul(neg_lr, g), d));
    }
    ei::pstore(p_data + i, p);
  }
}

#if PS_AVX_AT_RUN_TIME
// ApplyFused with 256-bit AVX intrinsics (compiled for AVX by the target
// attribute; called only when the CPU has it): the same operations in the
// same order, eight values at a time, so the numbers are ApplyFused's bit
// for bit. Only intrinsics run here, as in adam.cc's ApplyFusedAvx.
// REQUIRES: end - begin is a multiple of 8.
__attribute__((target("avx"))) void ApplyFusedAvx(RmsPropStep& step,
                                                  Eigen::Index begin,
                                                  Eigen::Index end) {
  float* const p_data = step.var.data();
  float* const v_data = step.square_avg.data();
  float* const a_data = step.grad_avg ? step.grad_avg->data() : nullptr;
  float* const b_data =
      step.momentum_buffer ? step.momentum_buffer->data() : nullptr;
  const float* const g_data = step.grad.data();

  const bool scale = step.transform.scale != 1.0f;
  const bool l2 = step.transform.weight_decay != 0.0f;
  const __m256 clip_scale = _mm256_set1_ps(step.transform.scale);
  const __m256 weight_decay = _mm256_set1_ps(step.transform.weight_decay);
  const __m256 alpha = _mm256_set1_ps(step.alpha);
  const __m256 one_minus_alpha = _mm256_set1_ps(step.one_minus_alpha);
  const __m256 eps = _mm256_set1_ps(step.eps);
  const __m256 momentum = _mm256_set1_ps(step.momentum);
  const __m256 neg_lr = _mm256_set1_ps(-step.lr);
  const __m256 zero = _mm256_setzero_ps();

  for (Eigen::Index i = begin; i < end; i += 8) {
    __m256 p = _mm256_loadu_ps(p_data + i);
    __m256 g = _mm256_loadu_ps(g_data + i);
    if (scale) g = _mm256_mul_ps(g, clip_scale);
    if (l2) g = _mm256_add_ps(g, _mm256_mul_ps(weight_decay, p));
    const __m256 v =
        _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v_data + i), alpha),
                      _mm256_mul_ps(_mm256_mul_ps(one_minus_alpha, g), g));
    _mm256_storeu_ps(v_data + i, v);
    __m256 d;
    if (a_data != nullptr) {
      const __m256 a =
          _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(a_data + i), alpha),
                        _mm256_mul_ps(one_minus_alpha, g));
      _mm256_storeu_ps(a_data + i, a);
      // Eigen's pmax(x, 0), which reverses its operands to behave as
      // std::max.
      d = _mm256_add_ps(_mm256_sqrt_ps(_mm256_max_ps(
                            zero, _mm256_sub_ps(v, _mm256_mul_ps(a, a)))),
                        eps);
    } else {
      d = _mm256_add_ps(_mm256_sqrt_ps(v), eps);
    }
    if (b_data != nullptr) {
      const __m256 b =
          _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(b_data + i), momentum),
                        _mm256_div_ps(g, d));
      _mm256_storeu_ps(b_data + i, b);
      p = _mm256_add_ps(p, _mm256_mul_ps(neg_lr, b));
    } else {
      p = _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(neg_lr, g), d));
    }
    _mm256_storeu_ps(p_data + i, p);
  }
}
#endif  // PS_AVX_AT_RUN_TIME

}  // namespace

void RmsPropRule::Apply(FlatArray var, FlatArray square_avg,
                        std::optional<FlatArray> grad_avg,
                        std::optional<FlatArray> momentum_buffer, float lr,
                        double alpha_in, float eps, float momentum,
                        const GradientTransform& transform, ConstFlatArray grad,
                        Simd simd) {
  // 1 - alpha is rounded once from double, as torch does; 1.0f - 0.99f is
  // 1e-6 (relative) away from float(0.01).
  RmsPropStep step{
      .var = var,
      .square_avg = square_avg,
      .grad_avg = grad_avg,
      .momentum_buffer = momentum_buffer,
      .lr = lr,
      .alpha = static_cast<float>(alpha_in),
      .one_minus_alpha = static_cast<float>(1.0 - alpha_in),
      .eps = eps,
      .momentum = momentum,
      .transform = transform,
      .grad = grad,
  };
  simd::ForEachChunkSplit(
      var.data(), var.size(),
      [&](Eigen::Index offset, Eigen::Index length) {
        ApplyWithEigen(step, offset, length);
      },
      [&](Eigen::Index begin, Eigen::Index end) {
#if PS_AVX_AT_RUN_TIME
        if (simd == Simd::kAvx) {
          const Eigen::Index wide_end = begin + (end - begin) / 8 * 8;
          ApplyFusedAvx(step, begin, wide_end);
          begin = wide_end;  // what is left is one packet of four, or none
        }
#else
        (void)simd;
#endif
        if (begin < end) ApplyFused(step, begin, end);
      });
}

}  // namespace ps::optimizer
