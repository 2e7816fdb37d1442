#include "bindings/arrays.h"

#include <algorithm>
#include <cmath>

namespace gradguard::bindings {
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

MemorySpan span_of(const py::array& array, const char* argument, size_t index, const py::handle& names, bool written) {
  const auto start = reinterpret_cast<uintptr_t>(array.data());
  return {start, start + static_cast<uintptr_t>(array.nbytes()), argument, index, names, written};
}

std::string describe(const MemorySpan& span) { return bindings::describe(span.argument, span.index, span.names); }

bool same_shape(const py::handle& left, const py::handle& right) {
  const py::array a = py::reinterpret_borrow<py::array>(left), b = py::reinterpret_borrow<py::array>(right);
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t axis = 0; axis < a.ndim(); ++axis)
    if (a.shape(axis) != b.shape(axis)) return false;
  return true;
}

std::string shape_text(const py::handle& array) { return py::str(array.attr("shape")).cast<std::string>(); }

}  // namespace

std::string describe(const char* argument, size_t index, const py::handle& names) {
  if (index == kLoneArray) return argument;
  std::string text = std::string(argument) + "[" + std::to_string(index) + "]";
  if (!names.is_none()) text += " ('" + py::str(py::reinterpret_borrow<py::list>(names)[index]).cast<std::string>() + "')";
  return text;
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

void add_tensors(TensorList& list, const py::list& arrays, const py::handle& names, const char* argument,
                 Access access, bool track_spans) {
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


TensorList to_tensors(const py::list& arrays, const py::handle& names, const char* argument, Access access,
                      bool track_spans) {
  TensorList list;
  add_tensors(list, arrays, names, argument, access, track_spans);
  return list;
}

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

py::list index_list(const std::vector<int64_t>& indices) {
  py::list list;
  for (int64_t index : indices) list.append(index);
  return list;
}

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

int64_t element_count(int64_t rows, int64_t features) {
  int64_t size = 0;
  if (rows < 0 || features < 1 || __builtin_mul_overflow(rows, features, &size))
    throw py::value_error("rows (" + std::to_string(rows) + ") x features (" + std::to_string(features) +
                          ") is not a valid array size");
  return size;
}

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

void set_grid_offsets(TensorList& list, const std::vector<int64_t>& grid_offsets) {
  if (grid_offsets.empty()) return;
  if (grid_offsets.size() != list.tensors.size())
    throw py::value_error("offsets has " + std::to_string(grid_offsets.size()) + " entries for " +
                          std::to_string(list.tensors.size()) + " arrays");
  for (size_t index = 0; index < grid_offsets.size(); ++index) {
    if (grid_offsets[index] < 0) throw py::value_error("offsets[" + std::to_string(index) + "] is negative");
    // Checked here as well as in Python: the sum below must not overflow whoever calls the core.
    if (grid_offsets[index] > kMaxShardEnd - list.tensors[index].count)
      throw py::value_error("offsets[" + std::to_string(index) + "] = " + std::to_string(grid_offsets[index]) +
                            " puts the shard's end beyond 2^62 elements");
    list.tensors[index].grid_offset = grid_offsets[index];
  }
}

}  // namespace gradguard::bindings
