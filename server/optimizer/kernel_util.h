// Shared plumbing for the update-rule kernels: flat Eigen maps and chunking.
//
// Every kernel walks its arrays once, in chunks small enough that all of a
// chunk's arrays stay in L1 while the rule's few Eigen statements run over
// them, so a step costs one pass over memory however many statements the
// rule has.
#ifndef PS_SERVER_OPTIMIZER_KERNEL_UTIL_H_
#define PS_SERVER_OPTIMIZER_KERNEL_UTIL_H_

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>

namespace ps::optimizer {

using FlatArray = Eigen::Map<Eigen::ArrayXf>;
using ConstFlatArray = Eigen::Map<const Eigen::ArrayXf>;

// Values per chunk: 1024 floats = 4 KiB per array.
inline constexpr Eigen::Index kChunk = 1024;

// The gradient a rule sees: the raw gradient scaled by the clip factor, plus
// L2 weight decay (g = g * scale + weight_decay * p), as torch applies them.
struct GradientTransform {
  float scale = 1.0f;         // clip factor; 1 = no clipping
  float weight_decay = 0.0f;  // 0 = none (also for decoupled decay)
};

// Calls fn(offset, length) for consecutive chunks covering [0, n).
template <typename Fn>
inline void ForEachChunk(Eigen::Index n, Fn&& fn) {
  for (Eigen::Index offset = 0; offset < n; offset += kChunk) {
    fn(offset, std::min(kChunk, n - offset));
  }
}

// Writes the transformed gradient of one chunk into `out` (length values).
inline void TransformGradient(const GradientTransform& transform,
                              ConstFlatArray grad, FlatArray var,
                              Eigen::Index offset, Eigen::Index length,
                              float* out) {
  Eigen::Map<Eigen::ArrayXf> g(out, length);
  if (transform.scale == 1.0f) {
    g = grad.segment(offset, length);
  } else {
    g = grad.segment(offset, length) * transform.scale;
  }
  if (transform.weight_decay != 0.0f) {
    g += transform.weight_decay * var.segment(offset, length);
  }
}

// Fused loops: a rule's statements run as one pass of Eigen packet functions
// per packet of values, each value loaded and stored once.
namespace simd {

// The SIMD packet Eigen uses for float arrays of dynamic size, its length,
// and the alignment (in bytes) Eigen wants of a destination before it
// switches from scalar to packet code.
using Packet = Eigen::internal::packet_traits<float>::type;
inline constexpr Eigen::Index kPacketSize =
    Eigen::internal::packet_traits<float>::size;
inline constexpr int kPacketAlignment = kPacketSize * sizeof(float);

// Like ForEachChunk over [0, n), but splits each chunk the way Eigen's
// statement `var.segment(offset, length) = ...` does: the values before
// var's first packet-aligned address, and those after the last whole packet,
// go to with_eigen(offset, length), and the packet-aligned middle to
// fused(begin, end). A rule that runs its Eigen statements in with_eigen
// and the same operations as packet functions in fused thus rounds every
// value as its Eigen statements alone would.
// Each fused(begin, end) range starts at a kPacketAlignment-aligned
// var.data() + begin and holds a multiple of kPacketSize values.
template <typename EigenFn, typename FusedFn>
inline void ForEachChunkSplit(const float* var, Eigen::Index n,
                              EigenFn&& with_eigen, FusedFn&& fused) {
  ForEachChunk(n, [&](Eigen::Index offset, Eigen::Index length) {
    const Eigen::Index head =
        Eigen::internal::first_aligned<kPacketAlignment>(var + offset, length);
    const Eigen::Index body = ((length - head) / kPacketSize) * kPacketSize;
    if (head > 0) with_eigen(offset, head);
    if (body > 0) fused(offset + head, offset + head + body);
    if (head + body < length) {
      with_eigen(offset + head + body, length - head - body);
    }
  });
}

}  // namespace simd

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_KERNEL_UTIL_H_
