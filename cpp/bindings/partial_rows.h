// Mergeable partials as they travel between processes: per piece, the index
// of its tensor, its element offset in the whole tensor, and one float64 row
// of fields. The row layouts are defined here, once, and exported by name
// (NORM_PARTIAL_FIELDS, STATS_PARTIAL_FIELDS): the Python layer reads a
// column by its name, never by a number of its own.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <vector>

#include "multi_tensor/norms.h"
#include "multi_tensor/stats.h"

namespace gradguard::bindings {

namespace py = pybind11;

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::tuple norm_partial_fields();
py::tuple stats_partial_fields();

// (tensor, offset, values[pieces, fields]) of the pieces' partials.
py::tuple norm_rows(const std::vector<NormPartialOfPiece>& pieces);
py::tuple stats_rows(const std::vector<StatsPartialOfPiece>& pieces);

// The inverse, checking what the combination relies on before any value is
// converted: counts whole and consistent, dtype codes known, pieces sorted by
// tensor and tiling each tensor from element 0 without gap or overlap (a
// shard missing or counted twice). `keys` name the tensors in messages; their
// count is the number of tensors.
std::vector<NormPartialOfPiece> norm_pieces(const Int64Array& tensor, const Int64Array& offset,
                                            const DoubleArray& values, const py::list& keys);
std::vector<StatsPartialOfPiece> stats_pieces(const Int64Array& tensor, const Int64Array& offset,
                                              const DoubleArray& values, const py::list& keys);

}  // namespace gradguard::bindings
