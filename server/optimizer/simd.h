// Which vector instructions the fused loops of the update rules run on.
//
// Every choice gives the same numbers bit for bit: each runs the same IEEE
// operations (no fused multiply-add) in the same order on each value, only
// more values at once. Square roots and divisions bound Adam, Eve, Adagrad
// and RMSProp while their arrays are in cache, and AVX does twice as many
// per instruction as the SSE2 packets of Debian's baseline x86-64 target.
#ifndef PS_SERVER_OPTIMIZER_SIMD_H_
#define PS_SERVER_OPTIMIZER_SIMD_H_

// 1 where a rule's AVX loop is compiled (by a target attribute, for a build
// whose target lacks AVX, as Debian's does) and chosen at run time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX__)
#define PS_AVX_AT_RUN_TIME 1
#else
#define PS_AVX_AT_RUN_TIME 0
#endif

namespace ps::optimizer {

enum class Simd {
  kBaseline,  // Eigen's packets for the build's target (SSE2 on x86-64)
  kAvx,       // 256-bit AVX, on a CPU that has it
};

// Whether this build and CPU can run `simd`.
bool SimdSupported(Simd simd);
// The widest supported Simd: what the rules use by default.
Simd BestSimd();

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_SIMD_H_
