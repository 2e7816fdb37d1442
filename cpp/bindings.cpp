// The Python boundary: the only file that includes pybind11. Each array of a
// list is checked here (type, dtype, byte order, contiguity, alignment,
// writability) before any kernel runs, so a refused call changes nothing; the
// work then runs on raw pointers with the GIL released. The checks live in C++
// rather than in the Python layer because a Python loop over 4,000 small
// tensors would cost more than the kernels themselves.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "bandwidth_probe.h"
#include "dispatch.h"
#include "multi_tensor.h"
#include "normalization.h"
#include "parallel.h"

namespace py = pybind11;
using namespace gradguard;

namespace {

constexpr int kCContiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kFContiguous = py::detail::npy_api::NPY_ARRAY_F_CONTIGUOUS_;
constexpr int kAligned = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
constexpr int kNpyFloat = py::detail::npy_api::NPY_FLOAT_;
constexpr int kNpyDouble = py::detail::npy_api::NPY_DOUBLE_;
// NumPy's type numbers for float16 and the first user-defined type (ml_dtypes'
// bfloat16 is one), from numpy/ndarraytypes.h: pybind11 does not name them.
constexpr int kNpyHalf = 23;
constexpr int kNpyUserDefined = 256;

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

std::string describe(const char* argument, size_t index, const py::handle& names) {
  if (index == kLoneArray) return argument;
  std::string text = std::string(argument) + "[" + std::to_string(index) + "]";
  if (!names.is_none()) text += " ('" + py::str(py::reinterpret_borrow<py::list>(names)[index]).cast<std::string>() + "')";
  return text;
}

std::string describe(const MemorySpan& span) { return describe(span.argument, span.index, span.names); }

// ml_dtypes registers bfloat16 as a user-defined NumPy type; its number is
// assigned at run time, so it is recognised by name once and then by number.
bool is_bfloat16(const py::dtype& dtype) {
  static int known_number = -1;
  const int number = dtype.num();
  if (number == known_number) return true;
  if (number < kNpyUserDefined || dtype.itemsize() != 2) return false;
  if (py::str(dtype.attr("name")).cast<std::string>() != "bfloat16") return false;
  known_number = number;
  return true;
}

bool native_byte_order(const py::dtype& dtype) {
  const char order = dtype.byteorder();
  if (order == '=' || order == '|') return true;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return order == '>';
#else
  return order == '<';
#endif
}

DType element_type(const py::array& array, const char* argument, size_t index, const py::handle& names) {
  const py::dtype dtype = array.dtype();
  if (native_byte_order(dtype)) {
    switch (dtype.num()) {
      case kNpyFloat: return DType::float32;
      case kNpyDouble: return DType::float64;
      case kNpyHalf: return DType::float16;
      default: if (is_bfloat16(dtype)) return DType::bfloat16;
    }
  }
  throw py::type_error(describe(argument, index, names) + " has dtype " + py::str(dtype).cast<std::string>() +
                       "; gradguard supports float32, float64, float16 and bfloat16 (ml_dtypes), in native byte order");
}

MemorySpan span_of(const py::array& array, const char* argument, size_t index, const py::handle& names, bool written) {
  const auto start = reinterpret_cast<uintptr_t>(array.data());
  return {start, start + static_cast<uintptr_t>(array.nbytes()), argument, index, names, written};
}

// Validates every array of `arrays` (with the GIL held) and appends its view
// to `list`. Reading: an array that is strided or misaligned is read through
// an aligned, contiguous copy. Writing: it must be writable, dense and
// aligned, since the result has to land in the caller's memory.
void add_tensors(TensorList& list, const py::list& arrays, const py::handle& names, const char* argument,
                 Access access, bool track_spans = true) {
  const size_t count = arrays.size();
  list.tensors.reserve(list.tensors.size() + count);
  list.owners.reserve(list.owners.size() + count);
  PyObject* const* items = PySequence_Fast_ITEMS(arrays.ptr());
  for (size_t index = 0; index < count; ++index) {
    // Thousands of small arrays: their objects and shape blocks are scattered
    // and often not in cache; fetch a few ahead (the array object 8 ahead, its
    // shape 4 ahead, once that object has arrived).
    if (index + 8 < count) __builtin_prefetch(items[index + 8]);
    if (index + 4 < count && py::isinstance<py::array>(items[index + 4]))
      __builtin_prefetch(py::detail::array_proxy(items[index + 4])->dimensions);
    py::handle item = items[index];
    if (!py::isinstance<py::array>(item))
      throw py::type_error(describe(argument, index, names) + " must be a NumPy array, got " +
                           py::str(py::type::handle_of(item).attr("__name__")).cast<std::string>());
    py::array array = py::reinterpret_borrow<py::array>(item);  // a new reference, kept below
    const DType dtype = element_type(array, argument, index, names);
    const int flags = array.flags();
    // Element-wise work does not care about order: any array whose elements
    // fill one dense block (C or Fortran order) is read as a flat buffer.
    const bool dense = flags & (kCContiguous | kFContiguous);
    const bool aligned = flags & kAligned;
    if (access == Access::write) {
      if (!(flags & kWriteable))
        throw py::value_error(describe(argument, index, names) + " is read-only; this operation writes in place");
      if (!dense)
        throw py::value_error(describe(argument, index, names) +
                              " is not contiguous; in-place operations need a C- or Fortran-contiguous array "
                              "(clip a contiguous copy and assign it back)");
      if (!aligned)
        throw py::value_error(describe(argument, index, names) + " is not aligned: its data address is not a multiple "
                              "of its itemsize (" + std::to_string(element_size(dtype)) + " bytes), which in-place "
                              "operations need (np.frombuffer with an offset makes such arrays); work on an aligned copy");
    } else if (!dense || !aligned) {
      // np.ascontiguousarray keeps a misaligned contiguous array as it is; a copy is aligned.
      array = py::module_::import("numpy").attr("array")(array, py::arg("copy") = true);
    }
    if (track_spans && array.size() > 0 && (dense && aligned))
      list.spans.push_back(span_of(array, argument, index, names, access == Access::write));
    list.tensors.push_back({const_cast<void*>(array.data()), static_cast<int64_t>(array.size()), dtype});
    list.owners.push_back(std::move(array));
  }
}

// track_spans: record where the arrays lie, for refuse_overlaps (calls that only read need not).
TensorList to_tensors(const py::list& arrays, const py::handle& names, const char* argument, Access access,
                      bool track_spans = true) {
  TensorList list;
  add_tensors(list, arrays, names, argument, access, track_spans);
  return list;
}

// Refuses a call in which an array that is written shares memory with any
// other array of the call: the result would depend on the order (and the
// threads) in which pieces are processed. Address ranges are sorted once
// (O(n log n); lists that come in address order, as a model's parameters
// usually do, skip the sort) and swept.
void refuse_overlaps(const std::vector<MemorySpan>& spans) {
  // Sorted through compact keys (the index breaks ties, so the pair named is
  // always the same): thousands of small arrays cost tens of microseconds.
  struct Key {
    uintptr_t start;
    uintptr_t end;
    uint32_t span;
  };
  std::vector<Key> keys(spans.size());
  for (size_t index = 0; index < spans.size(); ++index)
    keys[index] = {spans[index].start, spans[index].end, static_cast<uint32_t>(index)};
  auto by_start = [](const Key& a, const Key& b) { return a.start < b.start || (a.start == b.start && a.span < b.span); };
  if (!std::is_sorted(keys.begin(), keys.end(), by_start)) std::sort(keys.begin(), keys.end(), by_start);
  const Key* widest = nullptr;          // the span reaching furthest so far
  const Key* widest_written = nullptr;  // the same among written spans
  for (const Key& key : keys) {
    const bool written = spans[key.span].written;
    const Key* clash = nullptr;
    if (widest_written != nullptr && key.start < widest_written->end) clash = widest_written;
    else if (written && widest != nullptr && key.start < widest->end) clash = widest;
    if (clash != nullptr) {
      const MemorySpan& one = spans[clash->span];
      const MemorySpan& other = spans[key.span];
      const bool clash_first = std::string(one.argument) < std::string(other.argument) ||
                               (std::string(one.argument) == other.argument && one.index < other.index);
      const MemorySpan& first = clash_first ? one : other;
      const MemorySpan& second = clash_first ? other : one;
      const bool same = first.start == second.start && first.end == second.end;
      throw py::value_error(describe(first) + " and " + describe(second) +
                            (same ? " are the same memory" : " overlap in memory") +
                            "; an in-place operation needs every array it writes to be separate from all others "
                            "(pass each array once, and no two views of one buffer)");
    }
    if (widest == nullptr || key.end > widest->end) widest = &key;
    if (written && (widest_written == nullptr || key.end > widest_written->end)) widest_written = &key;
  }
}

py::list nonfinite_indices(const GlobalNorm& norm) {
  py::list indices;
  for (size_t index = 0; index < norm.per_tensor.size(); ++index)
    if (norm.per_tensor[index].has_nan || norm.per_tensor[index].has_inf) indices.append(index);
  return indices;
}

// One array argument of the normalisation functions: None, or a C-contiguous
// array of `dtype` with `size` elements (writable when `writable`). The Python
// layer has already checked these with user-facing messages; this guards the
// pointers the kernels will use.
void* buffer_of(const py::object& object, const char* argument, DType dtype, int64_t size, bool writable) {
  if (object.is_none()) return nullptr;
  if (!py::isinstance<py::array>(object)) throw py::type_error(std::string(argument) + " must be a NumPy array");
  py::array array = py::reinterpret_borrow<py::array>(object);
  const DType actual = element_type(array, argument, kLoneArray, py::none());
  const int flags = array.flags();
  if (actual != dtype)
    throw py::type_error(std::string(argument) + " must have dtype " + dtype_name(dtype));
  if (writable && !(flags & kWriteable)) throw py::value_error(std::string(argument) + " is read-only");
  if (!(flags & kCContiguous)) throw py::value_error(std::string(argument) + " must be C-contiguous");
  if (!(flags & kAligned))
    throw py::value_error(std::string(argument) + " is not aligned: its data address is not a multiple of its "
                          "itemsize (" + std::to_string(element_size(dtype)) + " bytes); use an aligned array");
  if (static_cast<int64_t>(array.size()) != size)
    throw py::value_error(std::string(argument) + " has " + std::to_string(array.size()) + " elements, expected " +
                          std::to_string(size));
  return const_cast<void*>(array.data());
}

DType compute_dtype(DType dtype) { return dtype == DType::float64 ? DType::float64 : DType::float32; }

// rows x features, refused when negative or beyond int64 (the core's own
// arguments, but never trusted to be consistent).
int64_t element_count(int64_t rows, int64_t features) {
  int64_t size = 0;
  if (rows < 0 || features < 1 || __builtin_mul_overflow(rows, features, &size))
    throw py::value_error("rows (" + std::to_string(rows) + ") x features (" + std::to_string(features) +
                          ") is not a valid array size");
  return size;
}

bool same_shape(const py::handle& left, const py::handle& right) {
  const py::array a = py::reinterpret_borrow<py::array>(left), b = py::reinterpret_borrow<py::array>(right);
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t axis = 0; axis < a.ndim(); ++axis)
    if (a.shape(axis) != b.shape(axis)) return false;
  return true;
}

std::string shape_text(const py::handle& array) { return py::str(array.attr("shape")).cast<std::string>(); }

// Pairs of lists that must match element by element (optimiser parameters and
// their gradients, AGC weights and gradients): same length, same shapes.
void check_pairs(const TensorList& first, const char* first_argument, const TensorList& second,
                 const char* second_argument, const py::handle& names) {
  if (first.tensors.size() != second.tensors.size())
    throw py::value_error(std::string(second_argument) + " has " + std::to_string(second.tensors.size()) +
                          " arrays for " + std::to_string(first.tensors.size()) + " " + first_argument);
  for (size_t index = 0; index < first.tensors.size(); ++index)
    if (!same_shape(first.owners[index], second.owners[index]))
      throw py::value_error(describe(second_argument, index, names) + " has shape " + shape_text(second.owners[index]) +
                            ", " + describe(first_argument, index, names) + " has " + shape_text(first.owners[index]));
}

// Optimiser buffers pair with parameters element by element in memory order:
// parameters and state must be C-contiguous, and gradients are read in C order.
void require_c_order(TensorList& list, const char* argument, const py::handle& names, bool copy) {
  for (size_t index = 0; index < list.tensors.size(); ++index) {
    py::array array = py::reinterpret_borrow<py::array>(list.owners[index]);
    if (array.flags() & kCContiguous) continue;
    if (!copy)
      throw py::value_error(describe(argument, index, names) + " is not C-contiguous; optimiser parameters and state "
                            "pair with their gradients element by element in C order");
    array = py::module_::import("numpy").attr("ascontiguousarray")(array);
    list.tensors[index].data = const_cast<void*>(array.data());
    list.owners[index] = std::move(array);
  }
}

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// A shard's place within its whole tensor, one per array (empty: all whole).
void set_grid_offsets(TensorList& list, const std::vector<int64_t>& grid_offsets) {
  if (grid_offsets.empty()) return;
  if (grid_offsets.size() != list.tensors.size())
    throw py::value_error("offsets has " + std::to_string(grid_offsets.size()) + " entries for " +
                          std::to_string(list.tensors.size()) + " arrays");
  for (size_t index = 0; index < grid_offsets.size(); ++index) {
    if (grid_offsets[index] < 0) throw py::value_error("offsets[" + std::to_string(index) + "] is negative");
    list.tensors[index].grid_offset = grid_offsets[index];
  }
}

constexpr int kNormFields = 8;
constexpr int kStatsFields = 12;
constexpr int kStatsPieceFields = 3 + 2 * kStatsFields;

void stats_to_row(const StatsPartial& stats, double* row) {
  const double fields[kStatsFields] = {double(stats.count), double(stats.finite), double(stats.nan), double(stats.zero),
                                       stats.shift, stats.sum_of_squares, stats.square_terms, stats.shifted_sum,
                                       stats.shifted_sumsq, stats.abs_sum, stats.min, stats.max};
  std::copy(fields, fields + kStatsFields, row);
}

// A count read back from a float64 row: a whole number in [0, 2^53], checked
// before the conversion (converting NaN or 1e300 to an integer is undefined).
int64_t count_from(double value) {
  if (!(value >= 0.0 && value <= 0x1p53 && value == std::floor(value)))
    throw py::value_error("partials: a piece's count is not a whole number >= 0 (the partials were altered?)");
  return static_cast<int64_t>(value);
}

StatsPartial stats_from_row(const double* row) {
  StatsPartial stats;
  stats.count = count_from(row[0]);
  stats.finite = count_from(row[1]);
  stats.nan = count_from(row[2]);
  stats.zero = count_from(row[3]);
  if (stats.finite + stats.nan > stats.count || stats.zero > stats.finite)
    throw py::value_error("partials: a piece's counts do not add up (the partials were altered?)");
  stats.shift = row[4];
  stats.sum_of_squares = row[5];
  stats.square_terms = row[6];
  stats.shifted_sum = row[7];
  stats.shifted_sumsq = row[8];
  stats.abs_sum = row[9];
  stats.min = row[10];
  stats.max = row[11];
  return stats;
}

// Piece partials as (tensor, offset, values[pieces, fields]).
template <class Piece, class Fill>
py::tuple piece_rows(const std::vector<Piece>& pieces, int fields, const Fill& fill) {
  const auto count = static_cast<py::ssize_t>(pieces.size());
  py::array_t<int64_t> tensor(count), offset(count);
  py::array_t<double> values({count, static_cast<py::ssize_t>(fields)});
  for (py::ssize_t index = 0; index < count; ++index) {
    tensor.mutable_at(index) = pieces[index].tensor;
    offset.mutable_at(index) = pieces[index].offset;
    fill(pieces[index], values.mutable_data(index, 0));
  }
  return py::make_tuple(tensor, offset, values);
}

// The inverse, checking what the combination relies on: pieces sorted by
// tensor (then offset), tensor indices in [0, tensor_count).
template <class Piece, class Read>
std::vector<Piece> pieces_from_rows(const Int64Array& tensor, const Int64Array& offset, const DoubleArray& values,
                                    int fields, int64_t tensor_count, const Read& read) {
  const py::ssize_t count = tensor.size();
  if (offset.size() != count || values.ndim() != 2 || values.shape(0) != count || values.shape(1) != fields)
    throw py::value_error("partials: tensor, offset and values must describe the same pieces");
  if (tensor_count < 0) throw py::value_error("partials: negative tensor count");
  std::vector<Piece> pieces(static_cast<size_t>(count));
  for (py::ssize_t index = 0; index < count; ++index) {
    Piece& piece = pieces[index];
    piece.tensor = tensor.at(index);
    piece.offset = offset.at(index);
    if (piece.tensor < 0 || piece.tensor >= tensor_count)
      throw py::value_error("partials: a piece names tensor " + std::to_string(piece.tensor) + " of " +
                            std::to_string(tensor_count));
    if (index > 0 && (piece.tensor < pieces[index - 1].tensor ||
                      (piece.tensor == pieces[index - 1].tensor && piece.offset <= pieces[index - 1].offset)))
      throw py::value_error("partials: pieces must be sorted by tensor, then offset, without repeats");
    read(values.data(index, 0), piece);
  }
  return pieces;
}

py::dict stats_dict(const py::array& numel, const py::array& mean, const py::array& std_dev, const py::array& abs_mean,
                    const py::array& l2, const py::array& minimum, const py::array& maximum, const py::array& nan,
                    const py::array& inf, const py::array& zero) {
  py::dict result;
  result["numel"] = numel;
  result["mean"] = mean;
  result["std"] = std_dev;
  result["abs_mean"] = abs_mean;
  result["l2"] = l2;
  result["min"] = minimum;
  result["max"] = maximum;
  result["n_nan"] = nan;
  result["n_inf"] = inf;
  result["n_zero"] = zero;
  return result;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  active_kernels();  // a bad GRADGUARD_SIMD fails the import, not a later call
  m.doc() = "gradguard's C++ core. Use the `gradguard` package; these functions assume validated scalars.";

  // for_writing: the arrays are checked as for an in-place call (writable,
  // dense, aligned, separate), so that a caller which changes its own state
  // between this norm and a later clip refuses before changing anything.
  m.def("global_norm", [](const py::list& arrays, double ord, const py::object& names, bool for_writing) {
    TensorList list = to_tensors(arrays, names, "arrays", for_writing ? Access::write : Access::read, for_writing);
    if (for_writing) refuse_overlaps(list.spans);
    GlobalNorm norm;
    {
      py::gil_scoped_release released;
      norm = global_norm(list.tensors, NormOrder::from(ord));
    }
    return py::make_tuple(norm.total, nonfinite_indices(norm));
  }, py::arg("arrays"), py::arg("ord"), py::arg("names"), py::arg("for_writing") = false);

  // Every array checked as an in-place call checks them (writable, dense,
  // aligned, separate), reading none: a distributed clip refuses on every rank
  // before any rank writes.
  m.def("check_writable", [](const py::list& arrays, const py::object& names, const char* argument) {
    TensorList list = to_tensors(arrays, names, argument, Access::write, true);
    refuse_overlaps(list.spans);
  });

  // Mergeable partials (see multi_tensor.h): one row per piece, travelling as
  // (tensor, offset, values) arrays, values one float64 row of fields per piece.
  m.def("norm_partials", [](const py::list& arrays, double ord, const py::object& names, bool rescaled,
                            const std::vector<int64_t>& grid_offsets) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::read);
    set_grid_offsets(list, grid_offsets);
    std::vector<NormPartialOfPiece> pieces;
    {
      py::gil_scoped_release released;
      pieces = norm_partials(list.tensors, NormOrder::from(ord), rescaled);
    }
    return piece_rows(pieces, kNormFields, [](const NormPartialOfPiece& piece, double* row) {
      const double fields[kNormFields] = {double(piece.count), piece.fast.power_sum, piece.fast.max_abs,
                                          double(piece.fast.max_tracked), double(piece.rescaled), piece.max_abs,
                                          piece.scale, piece.scaled_sum};
      std::copy(fields, fields + kNormFields, row);
    });
  });

  m.def("combine_norm_partials", [](const Int64Array& tensor, const Int64Array& offset, const DoubleArray& values,
                                    int64_t tensor_count, double ord) {
    std::vector<NormPartialOfPiece> pieces = pieces_from_rows<NormPartialOfPiece>(
        tensor, offset, values, kNormFields, tensor_count, [](const double* row, NormPartialOfPiece& piece) {
          piece.count = count_from(row[0]);
          piece.fast.power_sum = row[1];
          piece.fast.max_abs = row[2];
          piece.fast.max_tracked = row[3] != 0.0;
          piece.rescaled = row[4] != 0.0;
          piece.max_abs = row[5];
          piece.scale = row[6];
          piece.scaled_sum = row[7];
        });
    bool needs_rescaled = false;
    GlobalNorm norm;
    {
      py::gil_scoped_release released;
      norm = combine_norm_partials(pieces, tensor_count, NormOrder::from(ord), &needs_rescaled);
    }
    std::vector<double> per_tensor(norm.per_tensor.size());
    for (size_t index = 0; index < per_tensor.size(); ++index) per_tensor[index] = norm.per_tensor[index].norm;
    return py::make_tuple(norm.total, needs_rescaled, nonfinite_indices(norm), per_tensor);
  });

  m.def("stats_partials", [](const py::list& arrays, const py::object& names, bool rescaled,
                             const std::vector<int64_t>& grid_offsets) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::read, false);
    set_grid_offsets(list, grid_offsets);
    std::vector<StatsPartialOfPiece> pieces;
    {
      py::gil_scoped_release released;
      pieces = stats_partials(list.tensors, rescaled);
    }
    return piece_rows(pieces, kStatsPieceFields, [](const StatsPartialOfPiece& piece, double* row) {
      row[0] = static_cast<double>(piece.dtype);
      row[1] = double(piece.rescaled);
      row[2] = piece.scale;
      stats_to_row(piece.fast, row + 3);
      stats_to_row(piece.scaled, row + 3 + kStatsFields);
    });
  });

  m.def("combine_stats_partials", [](const Int64Array& tensor, const Int64Array& offset, const DoubleArray& values,
                                     int64_t tensor_count) {
    std::vector<StatsPartialOfPiece> pieces = pieces_from_rows<StatsPartialOfPiece>(
        tensor, offset, values, kStatsPieceFields, tensor_count, [](const double* row, StatsPartialOfPiece& piece) {
          if (!(row[0] >= 0.0 && row[0] < kNumDTypes)) throw py::value_error("combine_stats_partials: unknown dtype code");
          const int dtype = static_cast<int>(row[0]);
          piece.dtype = static_cast<DType>(dtype);
          piece.rescaled = row[1] != 0.0;
          piece.scale = row[2];
          piece.fast = stats_from_row(row + 3);
          piece.scaled = stats_from_row(row + 3 + kStatsFields);
        });
    const auto size = static_cast<py::ssize_t>(tensor_count);
    py::array_t<int64_t> numel(size), nan(size), inf(size), zero(size);
    py::array_t<double> mean(size), std_dev(size), abs_mean(size), l2(size), minimum(size), maximum(size);
    const StatsColumns columns{numel.mutable_data(), mean.mutable_data(), std_dev.mutable_data(),
                               abs_mean.mutable_data(), l2.mutable_data(), minimum.mutable_data(),
                               maximum.mutable_data(), nan.mutable_data(), inf.mutable_data(), zero.mutable_data()};
    bool complete = false;
    {
      py::gil_scoped_release released;
      complete = combine_stats_partials(pieces, tensor_count, columns);
    }
    if (!complete) return py::object(py::none());
    return py::object(stats_dict(numel, mean, std_dev, abs_mean, l2, minimum, maximum, nan, inf, zero));
  });

  // An optimiser's parameters, checked once at construction: writable,
  // aligned, C-contiguous, separate, float32 or float64.
  m.def("check_parameters", [](const py::list& arrays, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "params", Access::write);
    require_c_order(list, "params", names, false);
    refuse_overlaps(list.spans);
    for (size_t index = 0; index < list.tensors.size(); ++index)
      if (list.tensors[index].dtype != DType::float32 && list.tensors[index].dtype != DType::float64)
        throw py::type_error(describe("params", index, names) + " is " + dtype_name(list.tensors[index].dtype) +
                             "; optimiser parameters are float32 or float64");
  });

  // The dtype name of one array argument, or the TypeError every function
  // gives for an unsupported one (the one list of dtypes lives here).
  m.def("float_dtype", [](const py::object& value, const char* argument) {
    if (!py::isinstance<py::array>(value))
      throw py::type_error(std::string(argument) + " must be a NumPy array, got " +
                           py::str(py::type::handle_of(value).attr("__name__")).cast<std::string>());
    return std::string(dtype_name(element_type(py::reinterpret_borrow<py::array>(value), argument, kLoneArray, py::none())));
  });

  m.def("clip_by_global_norm", [](const py::list& arrays, double max_norm, double ord, double eps,
                                  bool error_if_nonfinite, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    GlobalNorm norm;
    double coefficient = 1.0;
    bool clipped = false;
    {
      py::gil_scoped_release released;
      norm = global_norm(list.tensors, NormOrder::from(ord));
      const bool refuse = error_if_nonfinite && !std::isfinite(norm.total);
      coefficient = clip_coefficient(max_norm, norm.total, eps);
      clipped = !refuse && coefficient != 1.0;
      if (clipped) scale_tensors(list.tensors, coefficient);
    }
    return py::make_tuple(norm.total, coefficient, clipped, nonfinite_indices(norm));
  });

  m.def("clip_with_norm", [](const py::list& arrays, double max_norm, double total_norm, double eps,
                             const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    const double coefficient = clip_coefficient(max_norm, total_norm, eps);
    const bool clipped = coefficient != 1.0;
    if (clipped) {
      py::gil_scoped_release released;
      scale_tensors(list.tensors, coefficient);
    }
    return py::make_tuple(coefficient, clipped);
  });

  m.def("clip_by_norm", [](const py::list& arrays, double max_norm, double ord, double eps, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    py::array_t<double> norms(static_cast<py::ssize_t>(list.tensors.size()));
    double* norm_data = norms.mutable_data();
    {
      py::gil_scoped_release released;
      GlobalNorm norm = global_norm(list.tensors, NormOrder::from(ord));
      std::vector<double> coefficients(list.tensors.size());
      for (size_t index = 0; index < list.tensors.size(); ++index) {
        norm_data[index] = norm.per_tensor[index].norm;
        coefficients[index] = clip_coefficient(max_norm, norm_data[index], eps);
      }
      scale_tensors(list.tensors, coefficients);
    }
    return norms;
  });

  m.def("clip_by_value", [](const py::list& arrays, double low, double high, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    py::gil_scoped_release released;
    clamp_tensors(list.tensors, low, high);
  });

  m.def("scale", [](const py::list& arrays, double factor, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    py::gil_scoped_release released;
    scale_tensors(list.tensors, factor);
  });

  m.def("grad_stats", [](const py::list& arrays, const py::object& names, const char* argument) {
    TensorList list = to_tensors(arrays, names, argument, Access::read, false);
    const auto size = static_cast<py::ssize_t>(list.tensors.size());
    py::array_t<int64_t> numel(size), nan(size), inf(size), zero(size);
    py::array_t<double> mean(size), std_dev(size), abs_mean(size), l2(size), minimum(size), maximum(size);
    const StatsColumns columns{numel.mutable_data(), mean.mutable_data(), std_dev.mutable_data(),
                               abs_mean.mutable_data(), l2.mutable_data(), minimum.mutable_data(),
                               maximum.mutable_data(), nan.mutable_data(), inf.mutable_data(), zero.mutable_data()};
    {
      py::gil_scoped_release released;
      tensor_stats(list.tensors, columns);
    }
    return stats_dict(numel, mean, std_dev, abs_mean, l2, minimum, maximum, nan, inf, zero);
  }, py::arg("arrays"), py::arg("names"), py::arg("argument") = "arrays");

  // x is (rows, features) in its dtype; weight, bias, mean, rstd in the compute dtype.
  m.def("normalization_forward", [](const py::array& x, const py::object& residual, const py::object& residual_sum,
                                    const py::object& weight, const py::object& bias, const py::object& y,
                                    const py::object& mean, const py::object& rstd, int64_t rows, int64_t features,
                                    double eps, bool rms) {
    const DType dtype = element_type(x, "x", kLoneArray, py::none());
    const DType compute = compute_dtype(dtype);
    const int64_t size = element_count(rows, features);
    NormalizationForward args{};
    args.x = buffer_of(x, "x", dtype, size, false);
    args.residual = buffer_of(residual, "residual", dtype, size, false);
    args.residual_sum = buffer_of(residual_sum, "residual_sum", dtype, size, true);
    args.weight = buffer_of(weight, "weight", compute, features, false);
    args.bias = buffer_of(bias, "bias", compute, features, false);
    args.y = buffer_of(y, "out", dtype, size, true);
    args.mean = buffer_of(mean, "mean", compute, rows, true);
    args.rstd = buffer_of(rstd, "rstd", compute, rows, true);
    args.rows = rows;
    args.features = features;
    args.eps = eps;
    args.rms = rms;
    if (args.y == nullptr || args.rstd == nullptr || (!rms && args.mean == nullptr) ||
        ((args.residual == nullptr) != (args.residual_sum == nullptr)))
      throw py::value_error("normalization_forward: missing output buffer");
    py::gil_scoped_release released;
    normalization_forward(args, rows, dtype);
  });

  m.def("normalization_backward", [](const py::array& dy, const py::array& x, const py::object& mean,
                                     const py::object& rstd, const py::object& weight, const py::object& dx,
                                     const py::object& dweight, const py::object& dbias, int64_t rows,
                                     int64_t features, bool rms) {
    const DType dtype = element_type(x, "x", kLoneArray, py::none());
    const DType compute = compute_dtype(dtype);
    const int64_t size = element_count(rows, features);
    NormalizationBackward args{};
    args.dy = buffer_of(dy, "dy", dtype, size, false);
    args.x = buffer_of(x, "x", dtype, size, false);
    args.mean = buffer_of(mean, "mean", compute, rows, false);
    args.rstd = buffer_of(rstd, "rstd", compute, rows, false);
    args.weight = buffer_of(weight, "weight", compute, features, false);
    args.dx = buffer_of(dx, "dx", dtype, size, true);
    args.rows = rows;
    args.features = features;
    args.rms = rms;
    auto* weight_gradient = static_cast<double*>(buffer_of(dweight, "dweight", DType::float64, features, true));
    auto* bias_gradient = static_cast<double*>(buffer_of(dbias, "dbias", DType::float64, features, true));
    if (args.dx == nullptr || args.rstd == nullptr || (!rms && args.mean == nullptr))
      throw py::value_error("normalization_backward: missing buffer");
    py::gil_scoped_release released;
    normalization_backward(args, rows, dtype, weight_gradient, bias_gradient);
  });

  m.def("unscale", [](const py::list& arrays, double inverse_scale, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "grads", Access::write);
    refuse_overlaps(list.spans);
    py::gil_scoped_release released;
    return scale_and_check(list.tensors, inverse_scale);
  });

  py::enum_<OptimizerKind>(m, "OptimizerKind")
      .value("sgd", OptimizerKind::sgd)
      .value("adam", OptimizerKind::adam)
      .value("rmsprop", OptimizerKind::rmsprop);

  // The per-step hyperparameters as the kernels read them (a typed struct:
  // the Python layer sets fields by name; unset ones are zero / false).
  py::class_<OptimizerStep>(m, "OptimizerStep")
      .def(py::init([] { return OptimizerStep{}; }))
      .def_readwrite("kind", &OptimizerStep::kind)
      .def_readwrite("lr", &OptimizerStep::lr)
      .def_readwrite("weight_decay", &OptimizerStep::weight_decay)
      .def_readwrite("decoupled_weight_decay", &OptimizerStep::decoupled_weight_decay)
      .def_readwrite("momentum", &OptimizerStep::momentum)
      .def_readwrite("dampening", &OptimizerStep::dampening)
      .def_readwrite("nesterov", &OptimizerStep::nesterov)
      .def_readwrite("first_step", &OptimizerStep::first_step)
      .def_readwrite("beta1", &OptimizerStep::beta1)
      .def_readwrite("beta2", &OptimizerStep::beta2)
      .def_readwrite("eps", &OptimizerStep::eps)
      .def_readwrite("amsgrad", &OptimizerStep::amsgrad)
      .def_readwrite("step_size", &OptimizerStep::step_size)
      .def_readwrite("bias_correction2_sqrt", &OptimizerStep::bias_correction2_sqrt)
      .def_readwrite("alpha", &OptimizerStep::alpha)
      .def_readwrite("centered", &OptimizerStep::centered);

  // One optimiser step in one call: every array validated (parameters and
  // state written, gradients read, nothing overlapping a written array), then
  // the gradients' global norm when clipping or loss scaling asks for it, then
  // the update with grad_scale = clip coefficient x inverse_scale folded in.
  // settings: one OptimizerStep per parameter group (settings_of[i] picks parameter i's; empty: all the first).
  // states: three entries, each None or a list of buffers like params, named
  // by state_names. max_norm NaN: no clipping. With skip_nonfinite, a
  // non-finite norm skips the update. Returns (norm of the unscaled gradients
  // or None, coefficient, skipped, indices of non-finite gradients, and with
  // want_step_norms the per-parameter norms of the update applied and of the
  // new parameters, from the same pass, else None twice). known_norm: the
  // gradients' global L2 norm when the caller has it (NaN: compute it).
  m.def("optimizer_step", [](const py::list& params, const py::list& grads, const py::list& states,
                             const py::list& state_names, std::vector<OptimizerStep> settings,
                             const std::vector<int64_t>& settings_of, double max_norm, double clip_eps,
                             double inverse_scale, bool want_norm, bool skip_nonfinite, bool want_step_norms,
                             double known_norm,
                             const py::object& names) {
    TensorList param_list = to_tensors(params, names, "params", Access::write);
    require_c_order(param_list, "params", names, false);
    TensorList grad_list = to_tensors(grads, names, "grads", Access::read);
    require_c_order(grad_list, "grads", names, true);
    check_pairs(param_list, "params", grad_list, "grads", names);
    if (settings.empty() || (!settings_of.empty() && settings_of.size() != param_list.tensors.size()))
      throw py::value_error("optimizer_step: at least one settings, and none or one settings index per parameter");
    for (int64_t chosen : settings_of)
      if (chosen < 0 || chosen >= static_cast<int64_t>(settings.size()))
        throw py::value_error("optimizer_step: a settings index is out of range");
    if (states.size() != 3 || state_names.size() != 3)
      throw py::value_error("optimizer_step: states and state_names hold three entries (None where unused)");
    std::vector<TensorList> state_lists(3);
    std::vector<std::string> state_labels(3);
    std::vector<MemorySpan> spans = param_list.spans;
    spans.insert(spans.end(), grad_list.spans.begin(), grad_list.spans.end());
    for (int slot = 0; slot < 3; ++slot) {
      if (states[slot].is_none()) continue;
      state_labels[slot] = py::str(state_names[slot]).cast<std::string>();
      const char* label = state_labels[slot].c_str();
      add_tensors(state_lists[slot], states[slot].cast<py::list>(), names, label, Access::write);
      require_c_order(state_lists[slot], label, names, false);
      check_pairs(param_list, "params", state_lists[slot], label, names);
      for (size_t index = 0; index < param_list.tensors.size(); ++index)
        if (state_lists[slot].tensors[index].dtype != param_list.tensors[index].dtype)
          throw py::type_error(describe(label, index, names) + " is " +
                               dtype_name(state_lists[slot].tensors[index].dtype) + ", its parameter " +
                               dtype_name(param_list.tensors[index].dtype));
      spans.insert(spans.end(), state_lists[slot].spans.begin(), state_lists[slot].spans.end());
    }
    std::vector<OptimizerTensor> tensors(param_list.tensors.size());
    for (size_t index = 0; index < tensors.size(); ++index) {
      const TensorRef& param = param_list.tensors[index];
      const TensorRef& grad = grad_list.tensors[index];
      const bool pair_ok = param.dtype == grad.dtype ||
                           (param.dtype == DType::float32 && (grad.dtype == DType::float16 || grad.dtype == DType::bfloat16));
      if (!pair_ok || (param.dtype != DType::float32 && param.dtype != DType::float64))
        throw py::type_error(describe("params", index, names) + " is " + dtype_name(param.dtype) + " with a " +
                             dtype_name(grad.dtype) + " gradient; parameters are float32 (gradients float32, float16 or "
                             "bfloat16) or float64 (gradients float64)");
      OptimizerTensor& tensor = tensors[index];
      tensor.param = param.data;
      tensor.grad = grad.data;
      tensor.param_dtype = param.dtype;
      tensor.grad_dtype = grad.dtype;
      tensor.count = param.count;
      for (int slot = 0; slot < 3; ++slot)
        tensor.state[slot] = state_lists[slot].tensors.empty() ? nullptr : state_lists[slot].tensors[index].data;
      tensor.settings = &settings[settings_of.empty() ? 0 : settings_of[index]];
    }
    refuse_overlaps(spans);
    GlobalNorm norm;
    StepNorms step_norms;
    double coefficient = 1.0;
    bool skipped = false;
    {
      py::gil_scoped_release released;
      if (want_norm) {
        // A norm the caller has just computed (the guard's, the adaptive clipper's) is
        // not recomputed: the step then reads the gradients once.
        if (std::isnan(known_norm)) norm = global_norm(grad_list.tensors, NormOrder::from(2.0));
        else norm.total = known_norm;
        const double unscaled = norm.total * inverse_scale;
        if (skip_nonfinite && !std::isfinite(norm.total)) {
          skipped = true;
          coefficient = 0.0;
        } else if (!std::isnan(max_norm)) {
          coefficient = std::isfinite(unscaled) ? clip_coefficient(max_norm, unscaled, clip_eps)
                                                : std::numeric_limits<double>::quiet_NaN();
        }
      }
      if (!skipped) {
        for (OptimizerStep& group : settings) group.grad_scale = coefficient * inverse_scale;
        optimizer_step(tensors, settings[0], want_step_norms ? &step_norms : nullptr);
      }
    }
    py::object reported = want_norm ? py::object(py::float_(norm.total * inverse_scale)) : py::object(py::none());
    py::object update_norms = py::none(), param_norms = py::none();
    if (want_step_norms && !skipped) {
      update_norms = py::array_t<double>(static_cast<py::ssize_t>(step_norms.update.size()), step_norms.update.data());
      param_norms = py::array_t<double>(static_cast<py::ssize_t>(step_norms.param.size()), step_norms.param.data());
    }
    return py::make_tuple(reported, coefficient, skipped, want_norm ? nonfinite_indices(norm) : py::list(),
                          update_norms, param_norms);
  });

  // Unit-wise adaptive clipping (NFNets), the whole list in one call: every
  // unit norm of weights and gradients is computed before any gradient is
  // written. units[i] units per tensor, along its rows (units_first) or its
  // columns. Returns the fraction of units clipped per tensor.
  m.def("agc", [](const py::list& params, const py::list& grads, const std::vector<int64_t>& units,
                  const std::vector<bool>& units_first, double clipping, double eps, const py::object& names) {
    TensorList param_list = to_tensors(params, names, "params", Access::read);
    require_c_order(param_list, "params", names, true);
    TensorList grad_list = to_tensors(grads, names, "grads", Access::write);
    require_c_order(grad_list, "grads", names, false);
    check_pairs(param_list, "params", grad_list, "grads", names);
    if (units.size() != grad_list.tensors.size() || units_first.size() != grad_list.tensors.size())
      throw py::value_error("agc: one unit count and layout per tensor");
    for (size_t index = 0; index < units.size(); ++index) {
      const int64_t count = grad_list.tensors[index].count;
      if (count > 0 && (units[index] < 1 || count % units[index] != 0))
        throw py::value_error(describe("grads", index, names) + ": " + std::to_string(units[index]) +
                              " units do not divide its " + std::to_string(count) + " elements");
    }
    std::vector<MemorySpan> spans = param_list.spans;
    spans.insert(spans.end(), grad_list.spans.begin(), grad_list.spans.end());
    refuse_overlaps(spans);
    py::array_t<double> fractions(static_cast<py::ssize_t>(units.size()));
    double* fraction = fractions.mutable_data();
    {
      py::gil_scoped_release released;
      std::vector<std::vector<double>> factors(units.size());
      for (size_t index = 0; index < units.size(); ++index) {
        fraction[index] = 0.0;
        if (grad_list.tensors[index].count == 0) continue;
        const int64_t count = units[index];
        std::vector<double> weight_norms(count), grad_norms(count);
        unit_norms(param_list.tensors[index], count, units_first[index], weight_norms.data());
        unit_norms(grad_list.tensors[index], count, units_first[index], grad_norms.data());
        factors[index] = agc_factors(weight_norms, grad_norms, clipping, eps);
      }
      for (size_t index = 0; index < units.size(); ++index) {
        if (factors[index].empty()) continue;
        int64_t clipped = 0;
        for (double factor : factors[index]) clipped += factor != 1.0;
        if (clipped > 0) scale_units(grad_list.tensors[index], units[index], units_first[index], factors[index].data());
        fraction[index] = static_cast<double>(clipped) / static_cast<double>(factors[index].size());
      }
    }
    return fractions;
  });

  // The bandwidth yardstick of the benchmarks (not an operation of the library).
  m.def("read_probe", [](const py::array& array) {
    if (!py::isinstance<py::array_t<float>>(array) || !(array.flags() & kCContiguous) || !(array.flags() & kAligned))
      throw py::type_error("read_probe needs a C-contiguous, aligned float32 array");
    py::array owner = array;
    const float* data = static_cast<const float*>(owner.data());
    const int64_t count = static_cast<int64_t>(owner.size());
    py::gil_scoped_release released;
    return read_probe(data, count);
  });

  m.def("set_num_threads", [](int count) {
    try {
      set_num_threads(count);
    } catch (const std::system_error& error) {
      throw std::runtime_error(std::string("set_num_threads(") + std::to_string(count) + "): " + error.what());
    }
  });
  m.def("get_num_threads", [] { return num_threads(); });
  m.def("usable_cores", [] { return usable_cores(); });
  m.def("simd_target", [] { return std::string(active_kernels().target); });
  m.def("supported_targets", [] { return supported_targets(); });
  m.def("compiled_targets", [] { return compiled_targets(); });
  m.def("use_target", [](const std::string& name) {
    try {
      use_target(name);
    } catch (const std::invalid_argument& error) {
      throw py::value_error(error.what());
    }
  });
  m.attr("compiler") = GRADGUARD_COMPILER;
  m.attr("__version__") = GRADGUARD_VERSION;
}
