#include "server/optimizer/adagrad.h"

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

}  // namespace

void AdagradRule::Apply(FlatArray var, FlatArray sum, float clr, float eps,
                        const GradientTransform& transform,
                        ConstFlatArray grad) {
  simd::ForEachChunkSplit(
      var.data(), var.size(),
      [&](Eigen::Index offset, Eigen::Index length) {
        ApplyWithEigen(var, sum, clr, eps, transform, grad, offset, length);
      },
      [&](Eigen::Index begin, Eigen::Index end) {
        ApplyFused(var, sum, clr, eps, transform, grad, begin, end);
      });
}

}  // namespace ps::optimizer
