// Which push sequence numbers of one worker a block has applied.
//
// Exactly-once for pushes that may arrive out of order: the highest seq seen
// and a 64-bit window of the seqs just below it, as in IPsec's anti-replay
// window. A seq more than 64 below the highest is taken as already applied
// (a client never has that many pushes to one shard in flight).
//
// Thread safety: none; the block's lock guards it.
#ifndef PS_COMMON_SEQ_WINDOW_H_
#define PS_COMMON_SEQ_WINDOW_H_

#include <cstdint>

namespace ps {

class SeqWindow {
 public:
  static constexpr uint64_t kWidth = 64;

  SeqWindow() = default;
  SeqWindow(uint64_t highest, uint64_t window)
      : highest_(highest), window_(window) {}

  // True when `seq` was applied, or is too old to tell.
  bool Seen(uint64_t seq) const {
    if (seq > highest_) return false;
    const uint64_t age = highest_ - seq;
    if (age >= kWidth) return true;
    return (window_ >> age) & 1;
  }

  // Records `seq` as applied.
  void Mark(uint64_t seq) {
    if (seq > highest_) {
      const uint64_t shift = seq - highest_;
      window_ = shift >= kWidth ? 0 : window_ << shift;
      highest_ = seq;
      window_ |= 1;
    } else if (highest_ - seq < kWidth) {
      window_ |= uint64_t{1} << (highest_ - seq);
    }
  }

  uint64_t highest() const { return highest_; }
  // Bit i set: seq highest() - i was applied.
  uint64_t window() const { return window_; }

 private:
  uint64_t highest_ = 0;
  uint64_t window_ = 0;
};

}  // namespace ps

#endif  // PS_COMMON_SEQ_WINDOW_H_
