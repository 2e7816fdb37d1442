// The Python boundary's validation: every array of a list is checked here
// (type, dtype, byte order, contiguity, alignment, writability, overlap)
// before any kernel runs, so a refused call changes nothing, and errors name
// the array (`grads[3] ('h.0.attn.c_attn.weight') is read-only`). The checks
// live in C++ rather than in the Python layer because a Python loop over
// 4,000 small tensors would cost more than the kernels themselves.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "multi_tensor/tensor_ref.h"

namespace gradguard::bindings {

namespace py = pybind11;

enum class Access { read, write };

// The bytes one array occupies, for the overlap check of in-place calls.
struct MemorySpan {
  uintptr_t start;
  uintptr_t end;
  const char* argument;
  size_t index;
  py::handle names;
  bool written;
};

// Arrays validated and turned into raw views. `owners` holds a reference to
// every array (or to the copy read in its place) for the whole call: while
// the GIL is released another Python thread may drop the caller's list or
// its arrays, and the kernels must never read or write freed memory.
struct TensorList {
  std::vector<TensorRef> tensors;
  std::vector<py::object> owners;
  std::vector<MemorySpan> spans;  // arrays used in place (not copies), non-empty ones

  TensorList() = default;
  TensorList(TensorList&&) = default;
  TensorList& operator=(TensorList&&) = default;
  // Dropped with the GIL held, after the kernels ran: by then thousands of
  // array objects have left the cache, so they are fetched a few ahead of
  // their reference-count decrement instead of one miss at a time.
  ~TensorList() {
    for (size_t index = 0; index < owners.size(); ++index) {
      if (index + 8 < owners.size()) __builtin_prefetch(owners[index + 8].ptr(), 1);
      owners[index] = py::object();
    }
  }
};

// The index of a lone array argument (x, out, ...): it is named without one.
constexpr size_t kLoneArray = static_cast<size_t>(-1);

// "grads[3] ('layer.weight')", or the argument alone for kLoneArray.
std::string describe(const char* argument, size_t index, const py::handle& names);

// The element type of an array, or the TypeError that lists the supported ones.
DType element_type(const py::array& array, const char* argument, size_t index, const py::handle& names);

// Validates every array of `arrays` (with the GIL held) and appends its view
// to `list`. Reading: an array that is strided or misaligned is read through
// an aligned, contiguous copy. Writing: it must be writable, dense and
// aligned, since the result has to land in the caller's memory.
// track_spans: record where the arrays lie, for refuse_overlaps (calls that only read need not).
void add_tensors(TensorList& list, const py::list& arrays, const py::handle& names, const char* argument,
                 Access access, bool track_spans = true);
TensorList to_tensors(const py::list& arrays, const py::handle& names, const char* argument, Access access,
                      bool track_spans = true);

// Refuses a call in which an array that is written shares memory with any
// other array of the call: the result would depend on the order (and the
// threads) in which pieces are processed.
void refuse_overlaps(const std::vector<MemorySpan>& spans);

// Optimiser buffers pair with parameters element by element in memory order:
// parameters and state must be C-contiguous; gradients (copy) are read in C order.
void require_c_order(TensorList& list, const char* argument, const py::handle& names, bool copy);

// Pairs of lists that must match element by element (optimiser parameters and
// their gradients, AGC weights and gradients): same length, same shapes.
void check_pairs(const TensorList& first, const char* first_argument, const TensorList& second,
                 const char* second_argument, const py::handle& names);

// A shard's place within its whole tensor, one per array (empty: all whole).
void set_grid_offsets(TensorList& list, const std::vector<int64_t>& grid_offsets);

// One array argument of the normalisation functions: None (null), or a
// C-contiguous array of `dtype` with `size` elements (writable when `writable`).
void* buffer_of(const py::object& object, const char* argument, DType dtype, int64_t size, bool writable);

// rows x features, refused when negative or beyond int64.
int64_t element_count(int64_t rows, int64_t features);

// Indices as a Python list.
py::list index_list(const std::vector<int64_t>& indices);

}  // namespace gradguard::bindings
