// Apex's multi_tensor_apply on the CPU, written once for every kernel family.
// Every tensor is cut into pieces at fixed offsets (multiples of
// kPieceElements), consecutive pieces are grouped into tasks of about
// kPieceElements elements (so thousands of small tensors make few tasks), each
// piece's partial result goes into its own slot, and slots are reduced in piece
// order. The pieces depend only on each tensor's size (and grid offset), so
// results do not depend on the thread count, nor on which other tensors share
// the list. Internal to the core: the families' .cpp files include it.
#pragma once
#include <cstdint>
#include <tuple>
#include <vector>

#include "multi_tensor/tensor_ref.h"
#include "parallel.h"

namespace gradguard {

struct Piece {
  int64_t tensor;
  int64_t offset;  // within the TensorRef (not the whole tensor: add grid_offset for that)
  int64_t count;
};

struct Plan {
  std::vector<Piece> pieces;
  std::vector<int64_t> task_starts;         // task t covers pieces [task_starts[t], task_starts[t+1])
  std::vector<int64_t> tensor_first_piece;  // tensor i's pieces start here (size tensors + 1)
  int64_t tasks() const { return static_cast<int64_t>(task_starts.size()) - 1; }
  int64_t first_piece(size_t tensor) const { return tensor_first_piece[tensor]; }
  int64_t end_piece(size_t tensor) const { return tensor_first_piece[tensor + 1]; }
};

// Fills `plan` (the caller's reusable buffer) for `tensors` and returns it.
const Plan& make_plan(const std::vector<TensorRef>& tensors, Plan& plan);

// Plans and per-piece buffers are thread_local and reused: a call over
// thousands of small tensors must not pay page faults on freshly mapped
// buffers (hundreds of KiB each) every time. Scratch kept between calls is
// bounded, though: a call over more pieces than this (a million tiny arrays)
// releases its buffers when it ends, instead of leaving hundreds of MiB
// resident in every thread that made such a call.
constexpr size_t kKeptPieces = size_t(1) << 16;

void release_if_large(Plan& plan);

template <class T> void release_if_large(std::vector<T>& buffer) {
  if (buffer.capacity() > kKeptPieces) std::vector<T>().swap(buffer);
}

// Releases the given thread_local buffers (if large) when the call returns or throws.
template <class... Buffers>
class ReleaseIfLarge {
 public:
  explicit ReleaseIfLarge(Buffers&... buffers) : buffers_(buffers...) {}
  ~ReleaseIfLarge() { std::apply([](auto&... buffer) { (release_if_large(buffer), ...); }, buffers_); }

 private:
  std::tuple<Buffers&...> buffers_;
};

inline char* address_of(const TensorRef& tensor, int64_t offset) {
  return static_cast<char*>(tensor.data) + offset * element_size(tensor.dtype);
}

// Small tensors are separate allocations, each too short for the hardware
// prefetcher to lock on: fetch the next piece while this one is processed
// (up to 4 KiB of it; longer pieces stream fine on their own).
inline void prefetch_piece(const std::vector<TensorRef>& tensors, const Plan& plan, int64_t index) {
  if (index >= static_cast<int64_t>(plan.pieces.size())) return;
  const Piece& piece = plan.pieces[index];
  const TensorRef& tensor = tensors[piece.tensor];
  const int64_t bytes = piece.count * element_size(tensor.dtype);
  if (bytes > 4096) return;
  const char* start = address_of(tensor, piece.offset);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(start + offset);
}

// One piece as a body sees it: its slot, where it lies, and the first piece
// of the task running it (a tensor all of whose pieces lie in this task can
// be finished by the task itself).
struct PieceWork {
  int64_t index;
  const Piece& piece;
  const TensorRef& tensor;
  char* address;
  int64_t task_first;
};

// Which end the tasks are taken from. Backwards: a write pass that follows a
// read pass then starts on the data the read pass left in the cache.
enum class Direction { forwards, backwards };

// Runs body(PieceWork) for every piece of `plan`, tasks spread over the pool.
template <class Body>
void multi_tensor_apply(const std::vector<TensorRef>& tensors, const Plan& plan, Direction direction,
                        const Body& body) {
  const int64_t tasks = plan.tasks();
  parallel_for(tasks, [&](int64_t task) {
    const int64_t chosen = direction == Direction::backwards ? tasks - 1 - task : task;
    const int64_t first = plan.task_starts[chosen], end = plan.task_starts[chosen + 1];
    for (int64_t index = first; index < end; ++index) {
      prefetch_piece(tensors, plan, index + 1);
      const Piece& piece = plan.pieces[index];
      const TensorRef& tensor = tensors[piece.tensor];
      body(PieceWork{index, piece, tensor, address_of(tensor, piece.offset), first});
    }
  });
}

// The end of the run of `pieces` (sorted by tensor) that starts at `first` and
// belongs to `tensor`: the combine functions' way through gathered partials.
template <class Pieces>
size_t end_of_tensor(const Pieces& pieces, size_t first, int64_t tensor) {
  while (first < pieces.size() && pieces[first].tensor == tensor) ++first;
  return first;
}

}  // namespace gradguard
