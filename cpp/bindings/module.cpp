// The Python module: each function converts and validates its arguments
// (bindings/arrays.h), releases the GIL around the core's work and converts
// the result back. No policy lives here: what to clip, skip or count is the
// core's (multi_tensor/). Calls with more than a few arguments take them by
// keyword.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "bandwidth_probe.h"
#include "bindings/arrays.h"
#include "bindings/partial_rows.h"
#include "bindings/stats_table.h"
#include "dispatch.h"
#include "multi_tensor/agc.h"
#include "multi_tensor/elementwise.h"
#include "multi_tensor/norms.h"
#include "multi_tensor/optimizer.h"
#include "multi_tensor/stats.h"
#include "normalization.h"
#include "parallel.h"

namespace py = pybind11;
using namespace gradguard;
using namespace gradguard::bindings;

namespace {

DType compute_dtype(DType dtype) { return dtype == DType::float64 ? DType::float64 : DType::float32; }

// The optimiser step's tensors: parameters and state written, gradients read,
// every pair matched, dtypes paired as the kernels allow, nothing overlapping
// a written array. `states`: (name, list of buffers or None) per state slot.
struct OptimizerArguments {
  TensorList params, grads;
  std::vector<TensorList> states;
  std::vector<std::string> state_labels;
  std::vector<OptimizerTensor> tensors;
};

OptimizerArguments optimizer_arguments(const py::list& params, const py::list& grads, const py::list& states,
                                       std::vector<OptimizerStep>& settings, const std::vector<int64_t>& settings_of,
                                       const py::object& names) {
  OptimizerArguments arguments;
  arguments.params = to_tensors(params, names, "params", Access::write);
  require_c_order(arguments.params, "params", names, false);
  arguments.grads = to_tensors(grads, names, "grads", Access::read);
  require_c_order(arguments.grads, "grads", names, true);
  check_pairs(arguments.params, "params", arguments.grads, "grads", names);
  const size_t count = arguments.params.tensors.size();
  if (settings.empty() || (!settings_of.empty() && settings_of.size() != count))
    throw py::value_error("optimizer_step: at least one settings, and none or one settings index per parameter");
  for (int64_t chosen : settings_of)
    if (chosen < 0 || chosen >= static_cast<int64_t>(settings.size()))
      throw py::value_error("optimizer_step: a settings index is out of range");
  if (states.size() > static_cast<size_t>(kStateSlots))
    throw py::value_error("optimizer_step: at most " + std::to_string(kStateSlots) + " state slots");
  arguments.states.resize(kStateSlots);
  arguments.state_labels.resize(kStateSlots);
  std::vector<MemorySpan> spans = arguments.params.spans;
  spans.insert(spans.end(), arguments.grads.spans.begin(), arguments.grads.spans.end());
  for (size_t slot = 0; slot < states.size(); ++slot) {
    const py::tuple entry = states[slot].cast<py::tuple>();
    if (entry.size() != 2) throw py::value_error("optimizer_step: each state slot is a (name, buffers) pair");
    if (entry[1].is_none()) continue;
    arguments.state_labels[slot] = py::str(entry[0]).cast<std::string>();
    const char* label = arguments.state_labels[slot].c_str();
    TensorList& list = arguments.states[slot];
    add_tensors(list, entry[1].cast<py::list>(), names, label, Access::write);
    require_c_order(list, label, names, false);
    check_pairs(arguments.params, "params", list, label, names);
    for (size_t index = 0; index < count; ++index)
      if (list.tensors[index].dtype != arguments.params.tensors[index].dtype)
        throw py::type_error(describe(label, index, names) + " is " + dtype_name(list.tensors[index].dtype) +
                             ", its parameter " + dtype_name(arguments.params.tensors[index].dtype));
    spans.insert(spans.end(), list.spans.begin(), list.spans.end());
  }
  arguments.tensors.resize(count);
  for (size_t index = 0; index < count; ++index) {
    const TensorRef& param = arguments.params.tensors[index];
    const TensorRef& grad = arguments.grads.tensors[index];
    const bool pair_ok = param.dtype == grad.dtype || (param.dtype == DType::float32 &&
                                                       (grad.dtype == DType::float16 || grad.dtype == DType::bfloat16));
    if (!pair_ok || (param.dtype != DType::float32 && param.dtype != DType::float64))
      throw py::type_error(describe("params", index, names) + " is " + dtype_name(param.dtype) + " with a " +
                           dtype_name(grad.dtype) + " gradient; parameters are float32 (gradients float32, float16 or "
                           "bfloat16) or float64 (gradients float64)");
    OptimizerTensor& tensor = arguments.tensors[index];
    tensor.param = param.data;
    tensor.grad = grad.data;
    tensor.param_dtype = param.dtype;
    tensor.grad_dtype = grad.dtype;
    tensor.count = param.count;
    for (int slot = 0; slot < kStateSlots; ++slot)
      tensor.state[slot] = arguments.states[slot].tensors.empty() ? nullptr : arguments.states[slot].tensors[index].data;
    tensor.settings = &settings[settings_of.empty() ? 0 : settings_of[index]];
  }
  refuse_overlaps(spans);
  return arguments;
}

py::array_t<double> to_array(const std::vector<double>& values) {
  return py::array_t<double>(static_cast<py::ssize_t>(values.size()), values.data());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  active_kernels();  // a bad GRADGUARD_SIMD fails the import, not a later call
  m.doc() = "gradguard's C++ core. Use the `gradguard` package; these functions assume validated scalars.";

  // The numbers that describe the core's layouts and rules, defined once here
  // and read by the Python layer.
  m.attr("PIECE_ELEMENTS") = kPieceElements;
  m.attr("MAX_SHARD_END") = kMaxShardEnd;
  m.attr("CLIP_EPS") = kClipEps;
  m.attr("STATE_SLOTS") = kStateSlots;
  {
    py::list fields;
    for (const char* name : kStatsFieldNames) fields.append(name);
    m.attr("STATS_FIELDS") = py::tuple(fields);
  }
  m.attr("NORM_PARTIAL_FIELDS") = norm_partial_fields();
  m.attr("STATS_PARTIAL_FIELDS") = stats_partial_fields();

  m.def("clip_coefficient", &clip_coefficient, py::arg("max_norm"), py::arg("total"), py::arg("eps") = kClipEps,
        "torch's clip rule: min(1, max_norm / (total + eps)); 1 when total is 0, NaN when it is NaN.");

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
    return py::make_tuple(norm.total, index_list(norm.nonfinite()));
  }, py::arg("arrays"), py::arg("ord"), py::arg("names"), py::arg("for_writing") = false);

  // Every array checked as an in-place call checks them (writable, dense,
  // aligned, separate), reading none: a distributed clip refuses on every rank
  // before any rank writes.
  m.def("check_writable", [](const py::list& arrays, const py::object& names, const char* argument) {
    TensorList list = to_tensors(arrays, names, argument, Access::write, true);
    refuse_overlaps(list.spans);
  });

  // Mergeable partials (multi_tensor/norms.h), travelling as (tensor, offset, values) rows (bindings/partial_rows.h).
  m.def("norm_partials", [](const py::list& arrays, double ord, const py::object& names, bool rescaled,
                            const std::vector<int64_t>& grid_offsets) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::read);
    set_grid_offsets(list, grid_offsets);
    std::vector<NormPartialOfPiece> pieces;
    {
      py::gil_scoped_release released;
      pieces = norm_partials(list.tensors, NormOrder::from(ord), rescaled);
    }
    return norm_rows(pieces);
  });

  // keys: the tensors (names or indices), for messages; their count is the number of tensors.
  m.def("combine_norm_partials", [](const Int64Array& tensor, const Int64Array& offset, const DoubleArray& values,
                                    const py::list& keys, double ord) {
    const std::vector<NormPartialOfPiece> pieces = norm_pieces(tensor, offset, values, keys);
    bool needs_rescaled = false;
    GlobalNorm norm;
    {
      py::gil_scoped_release released;
      norm = combine_norm_partials(pieces, static_cast<int64_t>(keys.size()), NormOrder::from(ord), &needs_rescaled);
    }
    std::vector<double> per_tensor(norm.per_tensor.size());
    for (size_t index = 0; index < per_tensor.size(); ++index) per_tensor[index] = norm.per_tensor[index].norm;
    return py::make_tuple(norm.total, needs_rescaled, index_list(norm.nonfinite()), to_array(per_tensor));
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
    return stats_rows(pieces);
  });

  m.def("combine_stats_partials", [](const Int64Array& tensor, const Int64Array& offset, const DoubleArray& values,
                                     const py::list& keys) {
    const std::vector<StatsPartialOfPiece> pieces = stats_pieces(tensor, offset, values, keys);
    StatsTable table(static_cast<py::ssize_t>(keys.size()));
    bool complete = false;
    {
      py::gil_scoped_release released;
      complete = combine_stats_partials(pieces, static_cast<int64_t>(keys.size()), table.columns());
    }
    if (!complete) return py::object(py::none());
    return py::object(table.as_dict());
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
  // gives for an unsupported one (the one list of dtypes lives in arrays.cpp).
  m.def("float_dtype", [](const py::object& value, const char* argument) {
    if (!py::isinstance<py::array>(value))
      throw py::type_error(std::string(argument) + " must be a NumPy array, got " +
                           py::str(py::type::handle_of(value).attr("__name__")).cast<std::string>());
    return std::string(dtype_name(element_type(py::reinterpret_borrow<py::array>(value), argument, kLoneArray, py::none())));
  });

  // Returns (total, coefficient, clipped, indices of non-finite arrays).
  m.def("clip_by_global_norm", [](const py::list& arrays, double max_norm, double ord, double eps,
                                  bool error_if_nonfinite, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    GlobalClip clip;
    {
      py::gil_scoped_release released;
      clip = clip_by_global_norm(list.tensors, max_norm, NormOrder::from(ord), eps, error_if_nonfinite);
    }
    return py::make_tuple(clip.norm.total, clip.coefficient, clip.clipped, index_list(clip.norm.nonfinite()));
  }, py::arg("arrays"), py::arg("max_norm"), py::kw_only(), py::arg("ord"), py::arg("eps"),
     py::arg("error_if_nonfinite"), py::arg("names"));

  m.def("clip_with_norm", [](const py::list& arrays, double max_norm, double total_norm, double eps,
                             const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    py::gil_scoped_release released;
    return clip_with_norm(list.tensors, max_norm, total_norm, eps);
  }, py::arg("arrays"), py::arg("max_norm"), py::arg("total_norm"), py::kw_only(), py::arg("eps"), py::arg("names"));

  m.def("clip_by_norm", [](const py::list& arrays, double max_norm, double ord, double eps, const py::object& names) {
    TensorList list = to_tensors(arrays, names, "arrays", Access::write);
    refuse_overlaps(list.spans);
    std::vector<double> norms;
    {
      py::gil_scoped_release released;
      norms = clip_by_norm(list.tensors, max_norm, NormOrder::from(ord), eps);
    }
    return to_array(norms);
  }, py::arg("arrays"), py::arg("max_norm"), py::kw_only(), py::arg("ord"), py::arg("eps"), py::arg("names"));

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
    StatsTable table(static_cast<py::ssize_t>(list.tensors.size()));
    // Each array's number of dimensions, from the array read (the caller's,
    // or a copy of the same shape): here in C++ rather than a Python loop.
    py::array_t<int64_t> ndim(static_cast<py::ssize_t>(list.tensors.size()));
    for (size_t index = 0; index < list.tensors.size(); ++index)
      ndim.mutable_data()[index] = py::detail::array_proxy(list.owners[index].ptr())->nd;
    {
      py::gil_scoped_release released;
      tensor_stats(list.tensors, table.columns());
    }
    py::dict result = table.as_dict();
    result["ndim"] = ndim;
    return result;
  }, py::arg("arrays"), py::arg("names"), py::arg("argument") = "arrays");

  // GradStats.global_norm from columns computed elsewhere (a device, JAX, ranks).
  m.def("stats_global_norm", [](const DoubleArray& l2, const Int64Array& nan, const Int64Array& inf) {
    if (l2.ndim() != 1 || nan.ndim() != 1 || inf.ndim() != 1 || nan.size() != l2.size() || inf.size() != l2.size())
      throw py::value_error("stats_global_norm needs three 1-D columns of one length");
    return global_norm_of_stats(l2.data(), nan.data(), inf.data(), l2.size());
  }, py::arg("l2"), py::arg("n_nan"), py::arg("n_inf"));

  // x is (rows, features) in its dtype; weight, bias, mean, rstd in the compute dtype.
  m.def("normalization_forward", [](const py::array& x, const py::object& residual, const py::object& residual_sum,
                                    const py::object& weight, const py::object& bias, const py::object& out,
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
    args.y = buffer_of(out, "out", dtype, size, true);
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
  }, py::arg("x"), py::kw_only(), py::arg("residual"), py::arg("residual_sum"), py::arg("weight"), py::arg("bias"),
     py::arg("out"), py::arg("mean"), py::arg("rstd"), py::arg("rows"), py::arg("features"), py::arg("eps"),
     py::arg("rms"));

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
  }, py::arg("dy"), py::arg("x"), py::kw_only(), py::arg("mean"), py::arg("rstd"), py::arg("weight"), py::arg("dx"),
     py::arg("dweight"), py::arg("dbias"), py::arg("rows"), py::arg("features"), py::arg("rms"));

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

  py::class_<StepPolicy>(m, "StepPolicy")
      .def(py::init([] { return StepPolicy{}; }))
      .def_readwrite("want_norm", &StepPolicy::want_norm)
      .def_readwrite("known_norm", &StepPolicy::known_norm)
      .def_readwrite("max_norm", &StepPolicy::max_norm)
      .def_readwrite("clip_eps", &StepPolicy::clip_eps)
      .def_readwrite("inverse_scale", &StepPolicy::inverse_scale)
      .def_readwrite("skip_nonfinite", &StepPolicy::skip_nonfinite)
      .def_readwrite("want_step_norms", &StepPolicy::want_step_norms);

  // One optimiser step in one call (multi_tensor/optimizer.h): every array
  // validated, then guarded_optimizer_step. states: one (name, buffers or None)
  // per state slot. settings: one OptimizerStep per parameter group
  // (settings_of[i] picks parameter i's; empty: all the first). Returns (norm
  // of the unscaled gradients or None, coefficient, skipped, indices of
  // non-finite gradients, and with want_step_norms the per-parameter norms of
  // the update applied and of the new parameters, else None twice). check_only:
  // validate every argument and return None (gradguard.distributed checks every
  // rank's step before any rank steps).
  m.def("optimizer_step", [](const py::list& params, const py::list& grads, const py::list& states,
                             std::vector<OptimizerStep> settings, const std::vector<int64_t>& settings_of,
                             const StepPolicy& policy, const py::object& names, bool check_only) {
    OptimizerArguments arguments = optimizer_arguments(params, grads, states, settings, settings_of, names);
    if (check_only) return py::object(py::none());  // every array validated, nothing read or written
    StepOutcome outcome;
    {
      py::gil_scoped_release released;
      outcome = guarded_optimizer_step(arguments.tensors, settings, policy);
    }
    const py::object reported = policy.want_norm ? py::object(py::float_(outcome.unscaled_norm)) : py::none();
    py::object update_norms = py::none(), param_norms = py::none();
    if (policy.want_step_norms && !outcome.skipped) {
      update_norms = to_array(outcome.step_norms.update);
      param_norms = to_array(outcome.step_norms.param);
    }
    return py::object(py::make_tuple(reported, outcome.coefficient, outcome.skipped,
                                     index_list(outcome.norm.nonfinite()), update_norms, param_norms));
  }, py::arg("params"), py::arg("grads"), py::kw_only(), py::arg("states"), py::arg("settings"),
     py::arg("settings_of"), py::arg("policy"), py::arg("names"), py::arg("check_only") = false);

  // Unit-wise adaptive clipping (multi_tensor/agc.h), the whole list in one
  // call: units[i] units per tensor, along its rows (units_first) or its
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
    std::vector<AgcUnits> layouts(units.size());
    for (size_t index = 0; index < units.size(); ++index) {
      const int64_t count = grad_list.tensors[index].count;
      if (count > 0 && (units[index] < 1 || count % units[index] != 0))
        throw py::value_error(describe("grads", index, names) + ": " + std::to_string(units[index]) +
                              " units do not divide its " + std::to_string(count) + " elements");
      layouts[index] = {units[index], units_first[index]};
    }
    std::vector<MemorySpan> spans = param_list.spans;
    spans.insert(spans.end(), grad_list.spans.begin(), grad_list.spans.end());
    refuse_overlaps(spans);
    std::vector<double> fractions;
    {
      py::gil_scoped_release released;
      fractions = agc(param_list.tensors, grad_list.tensors, layouts, clipping, eps);
    }
    return to_array(fractions);
  }, py::arg("params"), py::arg("grads"), py::kw_only(), py::arg("units"), py::arg("units_first"),
     py::arg("clipping"), py::arg("eps"), py::arg("names"));

  // The bandwidth yardstick of the benchmarks (not an operation of the library):
  // one array, or a list of them read as the kernels would read that list.
  m.def("read_probe", [](const py::object& arrays) {
    const bool one = py::isinstance<py::array>(arrays);
    py::list items = one ? py::list() : py::list(arrays);
    if (one) items.append(arrays);
    std::vector<py::array> owners;
    std::vector<TensorRef> tensors;
    for (const py::handle& item : items) {
      constexpr int kDense = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
      const int flags = py::isinstance<py::array_t<float>>(item) ? py::reinterpret_borrow<py::array>(item).flags() : 0;
      if ((flags & kDense) != kDense) throw py::type_error("read_probe needs C-contiguous, aligned float32 arrays");
      const py::array& array = owners.emplace_back(py::reinterpret_borrow<py::array>(item));
      tensors.push_back({const_cast<void*>(array.data()), static_cast<int64_t>(array.size()), DType::float32});
    }
    py::gil_scoped_release released;
    return read_probe(tensors);
  }, py::arg("arrays"));

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
