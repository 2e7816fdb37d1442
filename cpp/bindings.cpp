// The Python boundary: the only file that includes pybind11. Each array of a
// list is checked here (type, dtype, byte order, contiguity, alignment,
// writability) before any kernel runs, so a refused call changes nothing; the
// work then runs on raw pointers with the GIL released. The checks live in C++
// rather than in the Python layer because a Python loop over 4,000 small
// tensors would cost more than the kernels themselves.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

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
constexpr int kNpyFloat = 11, kNpyDouble = 12, kNpyHalf = 23, kNpyUserDefined = 256;

enum class Access { read, write };

// Arrays validated and turned into raw views. `keep_alive` holds the
// contiguous copies made for strided inputs of read-only operations.
struct TensorList {
  std::vector<TensorRef> tensors;
  std::vector<py::object> keep_alive;
};

std::string describe(const char* argument, size_t index, const py::handle& names) {
  std::string text = std::string(argument) + "[" + std::to_string(index) + "]";
  if (!names.is_none()) text += " ('" + py::str(py::reinterpret_borrow<py::list>(names)[index]).cast<std::string>() + "')";
  return text;
}

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

TensorList to_tensors(const py::list& arrays, const py::handle& names, const char* argument, Access access) {
  TensorList list;
  list.tensors.reserve(arrays.size());
  PyObject* const* items = PySequence_Fast_ITEMS(arrays.ptr());
  const size_t count = arrays.size();
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
    py::array array = py::reinterpret_borrow<py::array>(item);
    const DType dtype = element_type(array, argument, index, names);
    const int flags = array.flags();
    // Element-wise work does not care about order: any array whose elements
    // fill one dense block (C or Fortran order) is read as a flat buffer.
    const bool dense = (flags & (kCContiguous | kFContiguous)) && (flags & kAligned);
    if (access == Access::write) {
      if (!(flags & kWriteable))
        throw py::value_error(describe(argument, index, names) + " is read-only; this operation writes in place");
      if (!dense)
        throw py::value_error(describe(argument, index, names) +
                              " is not contiguous; in-place operations need a C- or Fortran-contiguous, aligned array "
                              "(clip a contiguous copy and assign it back)");
    } else if (!dense) {
      array = py::module_::import("numpy").attr("ascontiguousarray")(array);
      list.keep_alive.push_back(array);
    }
    list.tensors.push_back({const_cast<void*>(array.data()), static_cast<int64_t>(array.size()), dtype});
  }
  return list;
}

py::list nonfinite_indices(const GlobalNorm& norm) {
  py::list indices;
  for (size_t index = 0; index < norm.per_tensor.size(); ++index)
    if (norm.per_tensor[index].has_nan || norm.per_tensor[index].has_inf) indices.append(index);
  return indices;
}

// torch's rule: coef = max_norm / (total + eps), clamped to at most 1. A NaN
// total gives a NaN coefficient, which is applied (every gradient turns NaN).
double clip_coefficient(double max_norm, double total, double eps) {
  if (total == 0.0) return 1.0;  // nothing to clip; avoids 0/0 when max_norm = eps = 0
  const double coefficient = max_norm / (total + eps);
  return coefficient < 1.0 || std::isnan(coefficient) ? coefficient : 1.0;
}

// One array argument of the normalisation functions: None, or a C-contiguous
// array of `dtype` with `size` elements (writable when `writable`). The Python
// layer has already checked these with user-facing messages; this guards the
// pointers the kernels will use.
void* buffer_of(const py::object& object, const char* argument, DType dtype, int64_t size, bool writable) {
  if (object.is_none()) return nullptr;
  if (!py::isinstance<py::array>(object)) throw py::type_error(std::string(argument) + " must be a NumPy array");
  py::array array = py::reinterpret_borrow<py::array>(object);
  const DType actual = element_type(array, argument, 0, py::none());
  const int flags = array.flags();
  if (actual != dtype)
    throw py::type_error(std::string(argument) + " must have dtype " + dtype_name(dtype));
  if (!(flags & kCContiguous) || !(flags & kAligned))
    throw py::value_error(std::string(argument) + " must be C-contiguous and aligned");
  if (static_cast<int64_t>(array.size()) != size)
    throw py::value_error(std::string(argument) + " has " + std::to_string(array.size()) + " elements, expected " +
                          std::to_string(size));
  if (writable && !(flags & kWriteable)) throw py::value_error(std::string(argument) + " is read-only");
  return const_cast<void*>(array.data());
}

DType compute_dtype(DType dtype) { return dtype == DType::float64 ? DType::float64 : DType::float32; }

}  // namespace

PYBIND11_MODULE(_core, m) {
  active_kernels();  // a bad GRADGUARD_SIMD fails the import, not a later call
  m.doc() = "gradguard's C++ core. Use the `gradguard` package; these functions assume validated arguments.";

  m.def("global_norm", [](const py::list& arrays, double ord, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::read);
    GlobalNorm norm;
    {
      py::gil_scoped_release released;
      norm = global_norm(list.tensors, NormOrder::from(ord));
    }
    return py::make_tuple(norm.total, nonfinite_indices(norm));
  });

  m.def("clip_by_global_norm", [](const py::list& arrays, double max_norm, double ord, double eps,
                                  bool error_if_nonfinite, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
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

  m.def("clip_by_norm", [](const py::list& arrays, double max_norm, double ord, double eps, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
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
    py::gil_scoped_release released;
    clamp_tensors(list.tensors, low, high);
  });

  m.def("scale", [](const py::list& arrays, double factor, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    py::gil_scoped_release released;
    scale_tensors(list.tensors, factor);
  });

  m.def("grad_stats", [](const py::list& arrays, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::read);
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
  });

  // x is (rows, features) in its dtype; weight, bias, mean, rstd in the compute dtype.
  m.def("normalization_forward", [](const py::array& x, const py::object& residual, const py::object& sum,
                                    const py::object& weight, const py::object& bias, const py::object& y,
                                    const py::object& mean, const py::object& rstd, int64_t rows, int64_t features,
                                    double eps, bool rms) {
    const DType dtype = element_type(x, "x", 0, py::none());
    const DType compute = compute_dtype(dtype);
    const int64_t size = rows * features;
    NormalizationForward args{};
    args.x = buffer_of(x, "x", dtype, size, false);
    args.residual = buffer_of(residual, "residual", dtype, size, false);
    args.sum = buffer_of(sum, "sum", dtype, size, true);
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
        ((args.residual == nullptr) != (args.sum == nullptr)))
      throw py::value_error("normalization_forward: missing output buffer");
    py::gil_scoped_release released;
    normalization_forward(args, rows, dtype);
  });

  m.def("normalization_backward", [](const py::array& dy, const py::array& x, const py::object& mean,
                                     const py::object& rstd, const py::object& weight, const py::object& dx,
                                     const py::object& dweight, const py::object& dbias, int64_t rows,
                                     int64_t features, bool rms) {
    const DType dtype = element_type(x, "x", 0, py::none());
    const DType compute = compute_dtype(dtype);
    const int64_t size = rows * features;
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
    py::gil_scoped_release released;
    return scale_and_check(list.tensors, inverse_scale);
  });

  // params, grads: validated lists; states: list of 3 lists (or None entries) of arrays like params.
  m.def("optimizer_step", [](const py::list& params, const py::list& grads, const py::list& states,
                             const py::dict& hyper, const py::object& names) {
    TensorList param_list = to_tensors(params, names, "params", Access::write);
    TensorList grad_list = to_tensors(grads, names, "grads", Access::read);
    if (param_list.tensors.size() != grad_list.tensors.size())
      throw py::value_error("params and grads have different lengths");
    std::vector<OptimizerTensor> tensors(param_list.tensors.size());
    for (size_t index = 0; index < tensors.size(); ++index) {
      const TensorRef& param = param_list.tensors[index];
      const TensorRef& grad = grad_list.tensors[index];
      if (param.count != grad.count)
        throw py::value_error(describe("grads", index, names) + " has a different size from its parameter");
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
      for (int slot = 0; slot < 3; ++slot) {
        py::object state_list = states[slot];
        tensor.state[slot] = nullptr;
        if (state_list.is_none()) continue;
        py::object state = py::reinterpret_borrow<py::list>(state_list)[index];
        tensor.state[slot] = buffer_of(state, "optimizer state", param.dtype, param.count, true);
      }
    }
    OptimizerStep step{};
    step.kind = static_cast<OptimizerKind>(hyper["kind"].cast<int>());
    step.grad_scale = hyper["grad_scale"].cast<double>();
    step.lr = hyper["lr"].cast<double>();
    step.weight_decay = hyper["weight_decay"].cast<double>();
    step.decoupled_weight_decay = hyper["decoupled_weight_decay"].cast<bool>();
    step.momentum = hyper["momentum"].cast<double>();
    step.dampening = hyper["dampening"].cast<double>();
    step.nesterov = hyper["nesterov"].cast<bool>();
    step.first_step = hyper["first_step"].cast<bool>();
    step.beta1 = hyper["beta1"].cast<double>();
    step.beta2 = hyper["beta2"].cast<double>();
    step.eps = hyper["eps"].cast<double>();
    step.amsgrad = hyper["amsgrad"].cast<bool>();
    step.step_size = hyper["step_size"].cast<double>();
    step.bias_correction2_sqrt = hyper["bias_correction2_sqrt"].cast<double>();
    step.alpha = hyper["alpha"].cast<double>();
    step.centered = hyper["centered"].cast<bool>();
    py::gil_scoped_release released;
    optimizer_step(tensors, step);
  });

  // AGC helpers: one tensor at a time; units along axis 0 (units_first) or the last axis.
  m.def("unit_norms", [](const py::array& array, int64_t units, bool units_first) {
    py::list wrapped;
    wrapped.append(array);
    TensorList list = to_tensors(wrapped, py::none(), "array", Access::read);
    if (units < 1 || list.tensors[0].count % units != 0) throw py::value_error("units must divide the array size");
    py::array_t<double> norms(static_cast<py::ssize_t>(units));
    double* out = norms.mutable_data();
    {
      py::gil_scoped_release released;
      unit_norms(list.tensors[0], units, units_first, out);
    }
    return norms;
  });

  m.def("scale_units", [](const py::array& array, const py::array_t<double, py::array::c_style>& factors,
                          bool units_first) {
    py::list wrapped;
    wrapped.append(array);
    TensorList list = to_tensors(wrapped, py::none(), "grads", Access::write);
    const int64_t units = static_cast<int64_t>(factors.size());
    if (units < 1 || list.tensors[0].count % units != 0) throw py::value_error("factors must divide the array size");
    const double* data = factors.data();
    py::gil_scoped_release released;
    scale_units(list.tensors[0], units, units_first, data);
  });

  m.def("read_probe", [](const py::array& array) {
    if (!py::isinstance<py::array_t<float>>(array) || !(array.flags() & kCContiguous))
      throw py::type_error("read_probe needs a C-contiguous float32 array");
    const float* data = static_cast<const float*>(array.data());
    const int64_t count = static_cast<int64_t>(array.size());
    py::gil_scoped_release released;
    return read_probe(data, count);
  });

  m.def("set_num_threads", [](int count) { set_num_threads(count); });
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
  m.attr("piece_elements") = kPieceElements;
}
