#include "bindings/partial_rows.h"

#include <cmath>
#include <string>

namespace gradguard::bindings {
namespace {

// A norm partial's row.
enum NormColumn { kCount, kPowerSum, kFastMaxAbs, kMaxTracked, kRescaled, kMaxAbs, kScale, kScaledSum, kNormColumns };
constexpr const char* kNormColumnNames[kNormColumns] = {"count",    "power_sum", "fast_max_abs", "max_tracked",
                                                        "rescaled", "max_abs",   "scale",        "scaled_sum"};

// One StatsPartial's fields; a statistics row is its dtype code, whether it
// was rescaled and the scale, then the fast partial, then the scaled one.
enum StatsColumn {
  kStatsCount, kFinite, kNan, kZero, kShift, kSumOfSquares, kSquareTerms, kShiftedSum, kShiftedSumsq, kAbsSum,
  kMin, kMax, kStatsColumns
};
constexpr const char* kStatsColumnNames[kStatsColumns] = {
    "count", "finite", "nan", "zero", "shift", "sum_of_squares", "square_terms", "shifted_sum", "shifted_sumsq",
    "abs_sum", "min", "max"};
enum StatsPieceColumn { kDType, kStatsRescaled, kStatsScale, kFast, kScaled = kFast + kStatsColumns,
                        kStatsPieceColumns = kScaled + kStatsColumns };

void stats_to_row(const StatsPartial& stats, double* row) {
  row[kStatsCount] = double(stats.count);
  row[kFinite] = double(stats.finite);
  row[kNan] = double(stats.nan);
  row[kZero] = double(stats.zero);
  row[kShift] = stats.shift;
  row[kSumOfSquares] = stats.sum_of_squares;
  row[kSquareTerms] = stats.square_terms;
  row[kShiftedSum] = stats.shifted_sum;
  row[kShiftedSumsq] = stats.shifted_sumsq;
  row[kAbsSum] = stats.abs_sum;
  row[kMin] = stats.min;
  row[kMax] = stats.max;
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
  stats.count = count_from(row[kStatsCount]);
  stats.finite = count_from(row[kFinite]);
  stats.nan = count_from(row[kNan]);
  stats.zero = count_from(row[kZero]);
  if (stats.finite + stats.nan > stats.count || stats.zero > stats.finite)
    throw py::value_error("partials: a piece's counts do not add up (the partials were altered?)");
  stats.shift = row[kShift];
  stats.sum_of_squares = row[kSumOfSquares];
  stats.square_terms = row[kSquareTerms];
  stats.shifted_sum = row[kShiftedSum];
  stats.shifted_sumsq = row[kShiftedSumsq];
  stats.abs_sum = row[kAbsSum];
  stats.min = row[kMin];
  stats.max = row[kMax];
  return stats;
}

template <size_t N>
py::tuple names_of(const char* const (&names)[N], const char* prefix = "") {
  py::tuple tuple(N);
  for (size_t index = 0; index < N; ++index) tuple[index] = py::str(std::string(prefix) + names[index]);
  return tuple;
}

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

// read(row, piece) fills a piece from its row and returns its element count.
template <class Piece, class Read>
std::vector<Piece> pieces_from_rows(const Int64Array& tensor, const Int64Array& offset, const DoubleArray& values,
                                    int fields, const py::list& keys, const Read& read) {
  const py::ssize_t count = tensor.size();
  const auto tensor_count = static_cast<int64_t>(keys.size());
  if (offset.size() != count || values.ndim() != 2 || values.shape(0) != count || values.shape(1) != fields)
    throw py::value_error("partials: tensor, offset and values must describe the same pieces");
  std::vector<Piece> pieces(static_cast<size_t>(count));
  int64_t expected = 0;  // where the next piece of the same tensor must start
  for (py::ssize_t index = 0; index < count; ++index) {
    Piece& piece = pieces[index];
    piece.tensor = tensor.at(index);
    piece.offset = offset.at(index);
    if (piece.tensor < 0 || piece.tensor >= tensor_count)
      throw py::value_error("partials: a piece names tensor " + std::to_string(piece.tensor) + " of " +
                            std::to_string(tensor_count));
    const bool same_tensor = index > 0 && piece.tensor == pieces[index - 1].tensor;
    if (index > 0 && piece.tensor < pieces[index - 1].tensor)
      throw py::value_error("partials: pieces must be sorted by tensor, then offset, without repeats");
    if (!same_tensor) expected = 0;
    // A tensor's pieces must tile it: a gap is a missing shard, an overlap a
    // replicated shard counted twice.
    if (piece.offset != expected)
      throw py::value_error("the shards of tensor " + std::string(py::str(py::repr(keys[piece.tensor]))) +
                            " do not tile it: a piece starts at element " + std::to_string(piece.offset) + ", where " +
                            std::to_string(expected) + " was expected (a shard missing, counted twice, or given the "
                            "wrong offset)");
    expected = piece.offset + read(values.data(index, 0), piece);
  }
  return pieces;
}

}  // namespace

py::tuple norm_partial_fields() { return names_of(kNormColumnNames); }

py::tuple stats_partial_fields() {
  py::list names;
  names.append("dtype");
  names.append("rescaled");
  names.append("scale");
  for (const py::handle name : names_of(kStatsColumnNames)) names.append(name);
  for (const py::handle name : names_of(kStatsColumnNames, "scaled_")) names.append(name);
  return py::tuple(names);
}

py::tuple norm_rows(const std::vector<NormPartialOfPiece>& pieces) {
  return piece_rows(pieces, kNormColumns, [](const NormPartialOfPiece& piece, double* row) {
    row[kCount] = double(piece.count);
    row[kPowerSum] = piece.fast.power_sum;
    row[kFastMaxAbs] = piece.fast.max_abs;
    row[kMaxTracked] = double(piece.fast.max_tracked);
    row[kRescaled] = double(piece.rescaled);
    row[kMaxAbs] = piece.max_abs;
    row[kScale] = piece.scale;
    row[kScaledSum] = piece.scaled_sum;
  });
}

py::tuple stats_rows(const std::vector<StatsPartialOfPiece>& pieces) {
  return piece_rows(pieces, kStatsPieceColumns, [](const StatsPartialOfPiece& piece, double* row) {
    row[kDType] = static_cast<double>(piece.dtype);
    row[kStatsRescaled] = double(piece.rescaled);
    row[kStatsScale] = piece.scale;
    stats_to_row(piece.fast, row + kFast);
    stats_to_row(piece.scaled, row + kScaled);
  });
}

std::vector<NormPartialOfPiece> norm_pieces(const Int64Array& tensor, const Int64Array& offset,
                                            const DoubleArray& values, const py::list& keys) {
  return pieces_from_rows<NormPartialOfPiece>(
      tensor, offset, values, kNormColumns, keys, [](const double* row, NormPartialOfPiece& piece) {
        piece.count = count_from(row[kCount]);
        piece.fast.power_sum = row[kPowerSum];
        piece.fast.max_abs = row[kFastMaxAbs];
        piece.fast.max_tracked = row[kMaxTracked] != 0.0;
        piece.rescaled = row[kRescaled] != 0.0;
        piece.max_abs = row[kMaxAbs];
        piece.scale = row[kScale];
        piece.scaled_sum = row[kScaledSum];
        return piece.count;
      });
}

std::vector<StatsPartialOfPiece> stats_pieces(const Int64Array& tensor, const Int64Array& offset,
                                              const DoubleArray& values, const py::list& keys) {
  return pieces_from_rows<StatsPartialOfPiece>(
      tensor, offset, values, kStatsPieceColumns, keys, [](const double* row, StatsPartialOfPiece& piece) {
        if (!(row[kDType] >= 0.0 && row[kDType] < kNumDTypes))
          throw py::value_error("combine_stats_partials: unknown dtype code");
        piece.dtype = static_cast<DType>(static_cast<int>(row[kDType]));
        piece.rescaled = row[kStatsRescaled] != 0.0;
        piece.scale = row[kStatsScale];
        piece.fast = stats_from_row(row + kFast);
        piece.scaled = stats_from_row(row + kScaled);
        return piece.fast.count;
      });
}

}  // namespace gradguard::bindings
