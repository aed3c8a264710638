#include "server/optimizer/adagrad.h"

#if PS_AVX_AT_RUN_TIME
#include <immintrin.h>
#endif

namespace ps::optimizer {
namespace {

namespace ei = Eigen::internal;
using simd::kPacketSize;
using simd::Packet;

// One Adagrad step over [offset, offset + length) as Eigen array statements.
// Used for the values that Eigen itself would compute with scalar code.
void ApplyWithEigen(FlatArray var, FlatArray sum, float clr, float eps,
                    const GradientTransform& transform, ConstFlatArray grad,
                    Eigen::Index offset, Eigen::Index length) {
  alignas(64) float scratch[kChunk];
  TransformGradient(transform, grad, var, offset, length, scratch);
  Eigen::Map<const Eigen::ArrayXf> g(scratch, length);
  auto p = var.segment(offset, length);
  auto s = sum.segment(offset, length);
  s += g * g;
  p += (-clr) * g / (s.sqrt() + eps);
}

// The same step over [begin, end), fused into one pass. Each operation is
// the Eigen packet function that the statements in ApplyWithEigen evaluate
// to, with the same operands in the same order, so the results are
// bit-identical.
// REQUIRES: var.data() + begin is simd::kPacketAlignment-aligned and
// end - begin is a multiple of kPacketSize.
void ApplyFused(FlatArray var, FlatArray sum, float clr, float eps_in,
                const GradientTransform& transform, ConstFlatArray grad,
                Eigen::Index begin, Eigen::Index end) {
  float* const p_data = var.data();
  float* const s_data = sum.data();
  const float* const g_data = grad.data();

  const bool scale = transform.scale != 1.0f;
  const bool l2 = transform.weight_decay != 0.0f;
  const Packet clip_scale = ei::pset1<Packet>(transform.scale);
  const Packet weight_decay = ei::pset1<Packet>(transform.weight_decay);
  const Packet neg_clr = ei::pset1<Packet>(-clr);
  const Packet eps = ei::pset1<Packet>(eps_in);

  for (Eigen::Index i = begin; i < end; i += kPacketSize) {
    Packet p = ei::pload<Packet>(p_data + i);
    // TransformGradient: g = grad * scale; g += weight_decay * p
    Packet g = ei::ploadu<Packet>(g_data + i);
    if (scale) g = ei::pmul(g, clip_scale);
    if (l2) g = ei::padd(g, ei::pmul(weight_decay, p));
    // s += g * g
    const Packet s = ei::padd(ei::ploadu<Packet>(s_data + i), ei::pmul(g, g));
    ei::pstoreu(s_data + i, s);
    // p += (-clr) * g / (s.sqrt() + eps)
    p = ei::padd(p,
                 ei::pdiv(ei::pmul(neg_clr, g), ei::padd(ei::psqrt(s), eps)));
    ei::pstore(p_data + i, p);
  }
}

#if PS_AVX_AT_RUN_TIME
// ApplyFused with 256-bit AVX intrinsics (compiled for AVX by the target
// attribute; called only when the CPU has it): the same operations in the
// same order, eight values at a time, so the numbers are ApplyFused's bit
// for bit. Only intrinsics run here, as in adam.cc's ApplyFusedAvx.
// REQUIRES: end - begin is a multiple of 8.
__attribute__((target("avx"))) void ApplyFusedAvx(
    float* p_data, float* s_data, const float* g_data, float clr, float eps_in,
    const GradientTransform& transform, Eigen::Index begin, Eigen::Index end) {
  const bool scale = transform.scale != 1.0f;
  const bool l2 = transform.weight_decay != 0.0f;
  const __m256 clip_scale = _mm256_set1_ps(transform.scale);
  const __m256 weight_decay = _mm256_set1_ps(transform.weight_decay);
  const __m256 neg_clr = _mm256_set1_ps(-clr);
  const __m256 eps = _mm256_set1_ps(eps_in);
  for (Eigen::Index i = begin; i < end; i += 8) {
    __m256 p = _mm256_loadu_ps(p_data + i);
    __m256 g = _mm256_loadu_ps(g_data + i);
    if (scale) g = _mm256_mul_ps(g, clip_scale);
    if (l2) g = _mm256_add_ps(g, _mm256_mul_ps(weight_decay, p));
    const __m256 s =
        _mm256_add_ps(_mm256_loadu_ps(s_data + i), _mm256_mul_ps(g, g));
    _mm256_storeu_ps(s_data + i, s);
    p = _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(neg_clr, g),
                                       _mm256_add_ps(_mm256_sqrt_ps(s), eps)));
    _mm256_storeu_ps(p_data + i, p);
  }
}
#endif  // PS_AVX_AT_RUN_TIME

}  // namespace

void AdagradRule::Apply(FlatArray var, FlatArray sum, float clr, float eps,
                        const GradientTransform& transform, ConstFlatArray grad,
                        Simd simd) {
  simd::ForEachChunkSplit(
      var.data(), var.size(),
      [&](Eigen::Index offset, Eigen::Index length) {
        ApplyWithEigen(var, sum, clr, eps, transform, grad, offset, length);
      },
      [&](Eigen::Index begin, Eigen::Index end) {
#if PS_AVX_AT_RUN_TIME
        if (simd == Simd::kAvx) {
          const Eigen::Index wide_end = begin + (end - begin) / 8 * 8;
          ApplyFusedAvx(var.data(), sum.data(), grad.data(), clr, eps,
                        transform, begin, wide_end);
          begin = wide_end;  // what is left is one packet of four, or none
        }
#else
        (void)simd;
#endif
        if (begin < end) {
          ApplyFused(var, sum, clr, eps, transform, grad, begin, end);
        }
      });
}

}  // namespace ps::optimizer
