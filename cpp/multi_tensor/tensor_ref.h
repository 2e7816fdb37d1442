// What every multi-tensor operation takes: raw views of the tensors of a list,
// and the size of the pieces they are cut into.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace gradguard {

// 64 Ki elements: 256 KiB of float32, a few hundred microseconds of work: big
// enough that scheduling costs nothing, small enough to balance two threads
// and to fit the L2 cache. The one definition of the piece grid: the Python
// layer reads it as gg.PIECE_ELEMENTS.
constexpr int64_t kPieceElements = int64_t(1) << 16;

// The end of a shard (grid_offset + count) stays at or below 2^62: pieces'
// offsets are sums of the two in int64, and this leaves room for any sum the
// core forms. The one statement of the limit: Python reads it as
// gradguard._core.MAX_SHARD_END.
constexpr int64_t kMaxShardEnd = int64_t(1) << 62;

struct TensorRef {
  void* data;
  int64_t count;
  DType dtype;
  // Where this tensor starts within a larger one it is a shard of (0 when
  // whole): pieces are cut at multiples of kPieceElements of the whole
  // tensor, so a shard whose boundaries fall on them is cut into the very
  // pieces the whole tensor would be.
  int64_t grid_offset = 0;
};

}  // namespace gradguard
