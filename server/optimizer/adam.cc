#include "server/optimizer/adam.h"

#include <cmath>

#if PS_AVX_AT_RUN_TIME
#include <immintrin.h>
#endif

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

#if PS_AVX_AT_RUN_TIME
// ApplyFused with 256-bit AVX intrinsics, for a build whose target lacks AVX
// (compiled for AVX by the target attribute; called only when the CPU has
// it). The same operations in the same order, eight values at a time: the
// numbers are ApplyFused's bit for bit. Only intrinsics run here: an Eigen
// template instantiated in this function would be compiled for AVX and
// could be picked by the linker for code that runs anywhere.
// REQUIRES: end - begin is a multiple of 8.
__attribute__((target("avx"))) void ApplyFusedAvx(
    float* p_data, float* m_data, float* v_data, float* w_data,
    const float* g_data, const AdamStep& step,
    const GradientTransform& transform, Eigen::Index begin, Eigen::Index end) {
  const bool decay = step.decay_factor != 1.0f;
  const bool scale = transform.scale != 1.0f;
  const bool l2 = transform.weight_decay != 0.0f;
  const __m256 decay_factor = _mm256_set1_ps(step.decay_factor);
  const __m256 clip_scale = _mm256_set1_ps(transform.scale);
  const __m256 weight_decay = _mm256_set1_ps(transform.weight_decay);
  const __m256 beta1 = _mm256_set1_ps(step.beta1);
  const __m256 beta2 = _mm256_set1_ps(step.beta2);
  const __m256 one_minus_beta1 = _mm256_set1_ps(step.one_minus_beta1);
  const __m256 one_minus_beta2 = _mm256_set1_ps(step.one_minus_beta2);
  const __m256 neg_step_size = _mm256_set1_ps(-step.step_size);
  const __m256 bias_correction2_sqrt =
      _mm256_set1_ps(step.bias_correction2_sqrt);
  const __m256 feedback = _mm256_set1_ps(step.feedback);
  const __m256 eps = _mm256_set1_ps(step.eps);

  for (Eigen::Index i = begin; i < end; i += 8) {
    __m256 p = _mm256_loadu_ps(p_data + i);
    if (decay) p = _mm256_mul_ps(p, decay_factor);
    __m256 g = _mm256_loadu_ps(g_data + i);
    if (scale) g = _mm256_mul_ps(g, clip_scale);
    if (l2) g = _mm256_add_ps(g, _mm256_mul_ps(weight_decay, p));
    const __m256 mc =
        _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(m_data + i), beta1),
                      _mm256_mul_ps(one_minus_beta1, g));
    _mm256_storeu_ps(m_data + i, mc);
    const __m256 vc =
        _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v_data + i), beta2),
                      _mm256_mul_ps(_mm256_mul_ps(one_minus_beta2, g), g));
    _mm256_storeu_ps(v_data + i, vc);
    __m256 s = vc;
    if (w_data != nullptr) {
      // Eigen's pmax(w, v), which reverses its operands to behave as
      // std::max.
      s = _mm256_max_ps(vc, _mm256_loadu_ps(w_data + i));
      _mm256_storeu_ps(w_data + i, s);
    }
    const __m256 denom = _mm256_add_ps(
        _mm256_mul_ps(feedback,
                      _mm256_div_ps(_mm256_sqrt_ps(s), bias_correction2_sqrt)),
        eps);
    p = _mm256_add_ps(p,
                      _mm256_div_ps(_mm256_mul_ps(neg_step_size, mc), denom));
    _mm256_storeu_ps(p_data + i, p);
  }
}

#endif  // PS_AVX_AT_RUN_TIME

// ApplyFused over [begin, end) on the instructions of `simd`.
void ApplyFusedWith(Simd simd, FlatArray var, FlatArray m, FlatArray v,
                    std::optional<FlatArray> max_square_avg,
                    const AdamStep& step, const GradientTransform& transform,
                    ConstFlatArray grad, Eigen::Index begin, Eigen::Index end) {
#if PS_AVX_AT_RUN_TIME
  if (simd == Simd::kAvx) {
    const Eigen::Index wide_end = begin + (end - begin) / 8 * 8;
    ApplyFusedAvx(var.data(), m.data(), v.data(),
                  max_square_avg ? max_square_avg->data() : nullptr,
                  grad.data(), step, transform, begin, wide_end);
    begin = wide_end;  // what is left is one packet of four, or nothing
  }
#endif
  if (begin < end) {
    ApplyFused(var, m, v, max_square_avg, step, transform, grad, begin, end);
  }
}

}  // namespace

void AdamRule::Apply(FlatArray var, FlatArray m, FlatArray v,
                     std::optional<FlatArray> max_square_avg,
                     const AdamStep& step, const GradientTransform& transform,
                     ConstFlatArray grad, Simd simd) {
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
    ApplyFusedWith(simd, var, m, v, max_square_avg, step, transform, grad,
                   offset + head, offset + head + body);
    if (head + body < length) {
      ApplyWithEigen(var, m, v, max_square_avg, step, transform, grad,
                     offset + head + body, length - head - body);
    }
  });
}

}  // namespace ps::optimizer
