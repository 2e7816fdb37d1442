// The per-tensor statistics as NumPy columns: allocated here, filled by the
// core through StatsColumns, handed to Python as a dict keyed by the core's
// own field names (kStatsFieldNames), with the list's global norm.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "multi_tensor/stats.h"

namespace gradguard::bindings {

namespace py = pybind11;

class StatsTable {
 public:
  explicit StatsTable(py::ssize_t tensors)
      : numel_(tensors), mean_(tensors), std_(tensors), abs_mean_(tensors), l2_(tensors), min_(tensors),
        max_(tensors), nan_(tensors), inf_(tensors), zero_(tensors) {}

  StatsColumns columns() {
    return {numel_.mutable_data(), mean_.mutable_data(), std_.mutable_data(), abs_mean_.mutable_data(),
            l2_.mutable_data(),    min_.mutable_data(),  max_.mutable_data(), nan_.mutable_data(),
            inf_.mutable_data(),   zero_.mutable_data()};
  }

  // In StatsColumns' order, which is kStatsFieldNames' order, then
  // "global_norm" (the whole list's, from the columns): the keyword
  // arguments of gg.GradStats but for names and ndim.
  py::dict as_dict() const {
    const py::object columns[kStatsFieldCount] = {numel_, mean_, std_, abs_mean_, l2_, min_, max_, nan_, inf_, zero_};
    py::dict result;
    for (int field = 0; field < kStatsFieldCount; ++field) result[kStatsFieldNames[field]] = columns[field];
    result["global_norm"] = global_norm_of_stats(l2_.data(), nan_.data(), inf_.data(), l2_.size());
    return result;
  }

 private:
  py::array_t<int64_t> numel_;
  py::array_t<double> mean_, std_, abs_mean_, l2_, min_, max_;
  py::array_t<int64_t> nan_, inf_, zero_;
};

}  // namespace gradguard::bindings
