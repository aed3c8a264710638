#include "server/optimizer/simd.h"

namespace ps::optimizer {

bool SimdSupported(Simd simd) {
  switch (simd) {
    case Simd::kBaseline:
      return true;
    case Simd::kAvx:
#if PS_AVX_AT_RUN_TIME
    {
      static const bool has_avx = __builtin_cpu_supports("avx");
      return has_avx;
    }
#else
      return false;
#endif
  }
  return false;
}

Simd BestSimd() {
  return SimdSupported(Simd::kAvx) ? Simd::kAvx : Simd::kBaseline;
}

}  // namespace ps::optimizer
