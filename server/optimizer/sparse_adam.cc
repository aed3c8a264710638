#include "server/optimizer/sparse_adam.h"

#include <cmath>
#include <variant>

#if PS_AVX_AT_RUN_TIME
#include <immintrin.h>
#endif

namespace ps::optimizer {
namespace {

struct Scalars {
  float neg_step;
  float one_minus_beta1;
  float one_minus_beta2;
  float eps;
};

// [begin, n) of a row, one value at a time (and the baseline: the compiler
// may vectorize it for the build's target, with the same operations).
bool RowScalar(float* __restrict values, float* __restrict m,
               float* __restrict v, const float* __restrict grad, size_t begin,
               size_t n, const Scalars& k) {
  bool finite = true;
  for (size_t i = begin; i < n; ++i) {
    const float g = grad[i];
    const float m_old = m[i];
    const float v_old = v[i];
    const float m_update = (g - m_old) * k.one_minus_beta1;
    m[i] = m_old + m_update;
    const float v_update = (g * g - v_old) * k.one_minus_beta2;
    v[i] = v_old + v_update;
    const float numer = m_update + m_old;
    const float denom = std::sqrt(v_update + v_old) + k.eps;
    values[i] = values[i] + k.neg_step * (numer / denom);
    finite &= std::isfinite(values[i]);
  }
  return finite;
}

#if PS_AVX_AT_RUN_TIME
// RowScalar's operations on eight values at a time, for [0, n / 8 * 8);
// compiled for AVX by the target attribute and called only on a CPU that
// has it (no fused multiply-add: the bits are RowScalar's). A value is
// finite when value - value is 0 (inf - inf and NaN - NaN are NaN).
__attribute__((target("avx"))) bool RowAvx(float* __restrict values,
                                           float* __restrict m,
                                           float* __restrict v,
                                           const float* __restrict grad,
                                           size_t n, const Scalars& k) {
  const __m256 neg_step = _mm256_set1_ps(k.neg_step);
  const __m256 one_minus_beta1 = _mm256_set1_ps(k.one_minus_beta1);
  const __m256 one_minus_beta2 = _mm256_set1_ps(k.one_minus_beta2);
  const __m256 eps = _mm256_set1_ps(k.eps);
  const __m256 zero = _mm256_setzero_ps();
  __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (size_t i = 0; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(grad + i);
    const __m256 m_old = _mm256_loadu_ps(m + i);
    const __m256 v_old = _mm256_loadu_ps(v + i);
    const __m256 m_update =
        _mm256_mul_ps(_mm256_sub_ps(g, m_old), one_minus_beta1);
    _mm256_storeu_ps(m + i, _mm256_add_ps(m_old, m_update));
    const __m256 v_update = _mm256_mul_ps(
        _mm256_sub_ps(_mm256_mul_ps(g, g), v_old), one_minus_beta2);
    _mm256_storeu_ps(v + i, _mm256_add_ps(v_old, v_update));
    const __m256 numer = _mm256_add_ps(m_update, m_old);
    const __m256 denom =
        _mm256_add_ps(_mm256_sqrt_ps(_mm256_add_ps(v_update, v_old)), eps);
    const __m256 value =
        _mm256_add_ps(_mm256_loadu_ps(values + i),
                      _mm256_mul_ps(neg_step, _mm256_div_ps(numer, denom)));
    _mm256_storeu_ps(values + i, value);
    finite = _mm256_and_ps(
        finite, _mm256_cmp_ps(_mm256_sub_ps(value, value), zero, _CMP_EQ_OQ));
  }
  return _mm256_movemask_ps(finite) == 0xff;
}
#endif  // PS_AVX_AT_RUN_TIME

}  // namespace

bool SparseAdamStep::Applies(const OptimizerSettings& settings) {
  const auto* adam = std::get_if<AdamParams>(&settings.rule);
  return adam != nullptr && !adam->amsgrad && !adam->decoupled_weight_decay &&
         settings.weight_decay == 0 && !settings.clip_norm.has_value();
}

SparseAdamStep::SparseAdamStep(const OptimizerSettings& settings,
                               uint64_t state_step, Simd simd)
    : simd_(simd) {
  const auto& adam = std::get<AdamParams>(settings.rule);
  const uint64_t t = state_step + 1;
  const double lr =
      ScheduledLearningRate(settings.learning_rate, settings.schedule, t);
  const double bc1 = 1.0 - std::pow(adam.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(adam.beta2, static_cast<double>(t));
  neg_step_ = static_cast<float>(-(lr * std::sqrt(bc2) / bc1));
  one_minus_beta1_ = static_cast<float>(1.0 - adam.beta1);
  one_minus_beta2_ = static_cast<float>(1.0 - adam.beta2);
  eps_ = static_cast<float>(adam.eps);
}

bool SparseAdamStep::Row(float* values, float* m, float* v, const float* grad,
                         size_t n) const {
  const Scalars k{neg_step_, one_minus_beta1_, one_minus_beta2_, eps_};
  size_t begin = 0;
  bool finite = true;
#if PS_AVX_AT_RUN_TIME
  if (simd_ == Simd::kAvx) {
    finite = RowAvx(values, m, v, grad, n, k);
    begin = n / 8 * 8;
  }
#endif
  return RowScalar(values, m, v, grad, begin, n, k) && finite;
}

}  // namespace ps::optimizer
