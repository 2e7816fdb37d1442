"""Mergeable partials: tensors spread over "ranks" (lists), or each tensor
cut into shards, combined in order, give gg.global_norm and gg.grad_stats bit
for bit, on every SIMD target and thread count."""

import dataclasses
import math

import numpy as np
import pytest

import gradguard as gg
from gradguard import _core

ORDERS = [2.0, 1.0, math.inf, 3.0, 0.5, 50.0]


def _arrays(rng, scale=1.0, dtypes=(np.float32, np.float64, np.float16)):
    arrays = []
    for index in range(int(rng.integers(1, 12))):
        size = int(rng.choice([0, 1, 7, 1000, 70_000, 150_001]))
        dtype = dtypes[index % len(dtypes)]
        arrays.append((rng.standard_normal(size) * scale).astype(dtype))
    return arrays


def _split(rng, arrays):
    cuts = sorted(rng.integers(0, len(arrays) + 1, int(rng.integers(0, 4))).tolist())
    edges = [0, *cuts, len(arrays)]
    return [arrays[a:b] for a, b in zip(edges[:-1], edges[1:])]


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("ord", ORDERS)
def test_combined_partials_equal_global_norm_bit_for_bit(ord, simd_target):
    rng = np.random.default_rng(ORDERS.index(ord))
    for _ in range(6):
        arrays = _arrays(rng)
        parts = [gg.norm_partials(chunk, ord) for chunk in _split(rng, arrays)]
        assert _same(gg.combine_norm_partials(parts), gg.global_norm(arrays, ord))


def test_partials_do_not_depend_on_threads_or_neighbours():
    rng = np.random.default_rng(1)
    arrays = _arrays(rng, dtypes=(np.float32,))
    previous = gg.get_num_threads()
    try:
        gg.set_num_threads(1)
        alone = np.concatenate([gg.norm_partials([a]).values for a in arrays])
        gg.set_num_threads(2)
        together = gg.norm_partials(arrays).values
    finally:
        gg.set_num_threads(previous)
    np.testing.assert_array_equal(alone, together)


@pytest.mark.parametrize("ord, scale", [(2.0, 1e200), (2.0, 1e-200), (3.0, 1e150), (3.0, 1e-150), (1.0, 1e-300)])
def test_the_rare_path_needs_rescaled_partials_and_is_then_exact(ord, scale):
    rng = np.random.default_rng(2)
    arrays = _arrays(rng, scale=scale, dtypes=(np.float64,)) + [np.array([3.0, 4.0])]
    expected = gg.global_norm(arrays, ord)
    assert math.isfinite(expected) and expected > 0
    chunks = _split(rng, arrays)
    plain = [gg.norm_partials(chunk, ord) for chunk in chunks]
    with pytest.raises(gg.RescaledPartialsNeeded):
        gg.combine_norm_partials(plain)
    rescaled = [gg.norm_partials(chunk, ord, rescaled=True) for chunk in chunks]
    assert gg.combine_norm_partials(rescaled) == expected


def test_non_finite_values_reach_the_combination():
    parts = [gg.norm_partials([np.ones(3, np.float32)]), gg.norm_partials([np.array([1.0, np.inf])])]
    assert gg.combine_norm_partials(parts) == math.inf
    parts.append(gg.norm_partials({"bad": np.array([np.nan], np.float32)}))
    assert math.isnan(gg.combine_norm_partials(parts))
    assert parts[2].names == ("bad",)


def test_combination_refuses_mixed_orders_and_non_partials():
    a = gg.norm_partials([np.ones(3)], 2.0)
    b = gg.norm_partials([np.ones(3)], 1.0)
    with pytest.raises(ValueError, match="different ord"):
        gg.combine_norm_partials([a, b])
    with pytest.raises(TypeError, match="NormPartials"):
        gg.combine_norm_partials([a, 3.0])
    assert gg.combine_norm_partials([]) == 0.0
    with pytest.raises(ValueError, match="ord"):
        gg.norm_partials([np.ones(3)], -1.0)


def _shards(rng, arrays, ranks, aligned):
    """Each array cut into `ranks` contiguous shards, as dicts name -> shard per rank, with their
    placement (partials' keywords: offsets, numel)."""
    per_rank = [({}, {"offsets": [], "numel": []}) for _ in range(ranks)]
    for index, array in enumerate(arrays):
        if aligned:
            bounds = gg.shard_bounds(array.size, ranks)
        else:
            cuts = sorted(rng.integers(0, array.size + 1, ranks - 1).tolist())
            edges = [0, *cuts, array.size]
            bounds = list(zip(edges[:-1], edges[1:]))
        for rank, (start, stop) in enumerate(bounds):
            per_rank[rank][0][f"t{index}"] = array[start:stop]
            per_rank[rank][1]["offsets"].append(start)
            per_rank[rank][1]["numel"].append(array.size)
    return per_rank


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("ord", [2.0, 1.0, math.inf, 3.0])
def test_shards_on_the_piece_grid_combine_bit_for_bit(ranks, ord, simd_target):
    rng = np.random.default_rng(ranks)
    for _ in range(3):
        arrays = _arrays(rng)
        whole = {f"t{index}": array for index, array in enumerate(arrays)}
        shards = _shards(rng, arrays, ranks, aligned=True)
        parts = [gg.norm_partials(named, ord, **offsets) for named, offsets in shards]
        assert _same(gg.combine_norm_partials(parts, by_name=True), gg.global_norm(arrays, ord))
        stats = gg.combine_stats_partials([gg.stats_partials(named, **o) for named, o in shards], by_name=True)
        _assert_same_stats(stats, gg.grad_stats(whole))


def test_shards_off_the_grid_agree_to_rounding():
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(300_000).astype(np.float32), rng.standard_normal(100_003)]
    shards = _shards(rng, arrays, 3, aligned=False)
    norm = gg.combine_norm_partials([gg.norm_partials(n, **o) for n, o in shards], by_name=True)
    assert norm == pytest.approx(gg.global_norm(arrays), rel=1e-14)
    stats = gg.combine_stats_partials([gg.stats_partials(n, **o) for n, o in shards], by_name=True)
    expected = gg.grad_stats(arrays)
    for field in ("mean", "std", "abs_mean", "l2", "min", "max"):
        np.testing.assert_allclose(getattr(stats, field), getattr(expected, field), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(stats.numel, expected.numel)


def _assert_same_stats(actual, expected):
    for field in ("numel", "mean", "std", "abs_mean", "l2", "min", "max", "n_nan", "n_inf", "n_zero"):
        np.testing.assert_array_equal(getattr(actual, field), getattr(expected, field), err_msg=field)
    assert _same(actual.global_norm, expected.global_norm)
    assert actual.names == expected.names


def test_stats_partials_split_across_lists_equal_grad_stats(simd_target):
    rng = np.random.default_rng(11)
    for _ in range(6):
        arrays = _arrays(rng, dtypes=(np.float32, np.float64, np.float16))
        arrays[0][: min(3, arrays[0].size)] = [np.nan, np.inf, 0.0][: min(3, arrays[0].size)]
        parts = [gg.stats_partials(chunk) for chunk in _split(rng, arrays)]
        combined = gg.combine_stats_partials(parts)
        expected = gg.grad_stats(arrays)
        for field in ("numel", "mean", "std", "abs_mean", "l2", "min", "max", "n_nan", "n_inf", "n_zero"):
            np.testing.assert_array_equal(getattr(combined, field), getattr(expected, field), err_msg=field)


def _first_of_each_piece(array, value):
    """A piece whose first value (the shift) is far above its RMS: sum x^2 from the shifted sums cancels."""
    array[:: gg.PIECE_ELEMENTS] = value
    return array


@pytest.mark.parametrize(
    "values",
    [
        lambda rng: rng.standard_normal(200_000) * 1e300,  # float64 beyond the fast path
        lambda rng: (rng.standard_normal(200_000) * 1e37).astype(np.float32),  # float32 beyond 2^120
        lambda rng: _first_of_each_piece(rng.standard_normal(200_000) * 1e-3, 5.0),  # the squares cancel
    ],
)
def test_statistics_rare_path_needs_rescaled_partials_and_is_then_exact(values):
    rng = np.random.default_rng(3)
    array = values(rng)
    if array.dtype == np.float64:
        array[5] = 1e-3  # a shard whose own scale differs from the tensor's
    expected = gg.grad_stats({"w": array})
    shards = _shards(rng, [array], 3, aligned=True)
    shards = [({"w": named["t0"]}, offsets) for named, offsets in shards]
    plain = [gg.stats_partials(named, **o) for named, o in shards]
    with pytest.raises(gg.RescaledPartialsNeeded):
        gg.combine_stats_partials(plain, by_name=True)
    rescaled = [gg.stats_partials(named, rescaled=True, **o) for named, o in shards]
    _assert_same_stats(gg.combine_stats_partials(rescaled, by_name=True), expected)


def test_shards_that_do_not_tile_their_tensor_are_refused():
    array = np.arange(200_000, dtype=np.float32)
    first = gg.norm_partials({"w": array[:65_536]}, offsets=[0], numel=[array.size])
    again = gg.norm_partials({"w": array[:65_536]}, offsets=[0], numel=[array.size])
    middle = gg.norm_partials({"w": array[65_536:131_072]}, offsets=[65_536], numel=[array.size])
    gap = gg.norm_partials({"w": array[131_072:]}, offsets=[131_072], numel=[array.size])
    with pytest.raises(ValueError, match="'w' (do not tile|hold)"):
        gg.combine_norm_partials([first, again, middle, gap], by_name=True)
    with pytest.raises(ValueError, match="'w' (do not tile|hold)"):
        gg.combine_norm_partials([first, gap], by_name=True)
    # A missing last shard is found too: the partials carry the whole tensor's size.
    with pytest.raises(ValueError, match="'w' hold 131072 of its 200000 elements"):
        gg.combine_norm_partials([first, middle], by_name=True)
    stats = [gg.stats_partials({"w": array[:65_536]}, offsets=[0], numel=[array.size])]
    with pytest.raises(ValueError, match="'w' hold 65536 of its 200000 elements"):
        gg.combine_stats_partials(stats, by_name=True)
    assert gg.combine_norm_partials([first, middle, gap], by_name=True) == gg.global_norm(array)
    with pytest.raises(ValueError, match="disagree on its size"):
        gg.combine_norm_partials(
            [first, gg.norm_partials({"w": array[65_536:]}, offsets=[65_536], numel=[array.size + 1])], by_name=True
        )
    with pytest.raises(ValueError, match="offsets and numel go together"):
        gg.norm_partials({"w": array[:65_536]}, offsets=[0])
    with pytest.raises(ValueError, match="run past numel"):
        gg.norm_partials({"w": array[:65_536]}, offsets=[0], numel=[1000])
    with pytest.raises(ValueError, match="by_name"):
        gg.combine_norm_partials([gg.norm_partials([array])], by_name=True)
    with pytest.raises(ValueError, match="offsets has 2 entries for 1 arrays"):
        gg.stats_partials([array], offsets=[0, 1])
    with pytest.raises(TypeError, match="StatsPartials"):
        gg.combine_stats_partials([first])


def test_empty_and_zero_size():
    assert gg.combine_stats_partials([]).global_norm == 0.0
    stats = gg.combine_stats_partials([gg.stats_partials([np.zeros(0, np.float32), np.ones(2)])])
    _assert_same_stats(stats, gg.grad_stats([np.zeros(0, np.float32), np.ones(2)]))


def test_shard_bounds_cut_on_the_grid():
    assert gg.shard_bounds(10, 3) == [(0, 0), (0, 0), (0, 10)]
    bounds = gg.shard_bounds(5 * gg.PIECE_ELEMENTS + 3, 2)
    assert bounds == [(0, 3 * gg.PIECE_ELEMENTS), (3 * gg.PIECE_ELEMENTS, 5 * gg.PIECE_ELEMENTS + 3)]
    assert gg.shard_bounds(0, 2) == [(0, 0), (0, 0)]


def test_altered_partials_are_refused_not_trusted():
    norm = gg.norm_partials([np.ones(70_000, np.float32)])
    stats = gg.stats_partials([np.ones(70_000, np.float32)])
    for bad in (np.nan, -1.0, 0.5, 1e300):
        norm.values[0, 0] = bad
        with pytest.raises(ValueError, match="count"):
            gg.combine_norm_partials([norm])
        altered = stats.values.copy()
        altered[0, 3] = bad
        with pytest.raises(ValueError, match="count"):
            gg.combine_stats_partials([dataclasses.replace(stats, values=altered)])
    altered = stats.values.copy()
    altered[0, 0] = np.nan  # the dtype code
    with pytest.raises(ValueError, match="dtype"):
        gg.combine_stats_partials([dataclasses.replace(stats, values=altered)])
    altered = stats.values.copy()
    altered[0, 4] = altered[0, 3] + 1  # more finite entries than entries
    with pytest.raises(ValueError, match="add up"):
        gg.combine_stats_partials([dataclasses.replace(stats, values=altered)])


def test_the_fields_read_per_piece():
    rng = np.random.default_rng(5)
    array = rng.standard_normal(150_000)
    array[[3, 70_000, 140_000]] = [np.nan, np.inf, 0.0]
    stats = gg.stats_partials([array])
    pieces = [array[start : start + gg.PIECE_ELEMENTS] for start in range(0, array.size, gg.PIECE_ELEMENTS)]
    finite = [piece[np.isfinite(piece)] for piece in pieces]
    np.testing.assert_array_equal(stats.count, [piece.size for piece in pieces])
    np.testing.assert_array_equal(stats.n_nan, [1, 0, 0])
    np.testing.assert_array_equal(stats.n_inf, [0, 1, 0])
    np.testing.assert_array_equal(stats.n_zero, [0, 0, 1])
    np.testing.assert_array_equal(stats.n_finite, [f.size for f in finite])
    np.testing.assert_allclose(stats.sum, [f.sum() for f in finite], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(stats.m2, [((f - f.mean()) ** 2).sum() for f in finite], rtol=1e-12)
    np.testing.assert_allclose(stats.abs_sum, [np.abs(f).sum() for f in finite], rtol=1e-12)
    np.testing.assert_array_equal(stats.min, [f.min() for f in finite])
    np.testing.assert_array_equal(stats.max, [f.max() for f in finite])
    norm = gg.norm_partials([array[np.isfinite(array)]], rescaled=True)
    assert norm.power_sum.sum() == pytest.approx(np.sum(array[np.isfinite(array)] ** 2), rel=1e-12)
    assert norm.max_abs.max() == np.abs(array[np.isfinite(array)]).max()


def test_the_row_layouts_are_the_cores():
    """The partials' columns are named by the core; each kind's rows have exactly those fields."""
    assert gg.norm_partials([np.ones(3)]).values.shape[1] == len(_core.NORM_PARTIAL_FIELDS)
    assert gg.stats_partials([np.ones(3)]).values.shape[1] == len(_core.STATS_PARTIAL_FIELDS)
    assert gg.PIECE_ELEMENTS == _core.PIECE_ELEMENTS == 1 << 16
    assert tuple(f.name for f in dataclasses.fields(gg.GradStats))[: len(gg.STATS_FIELDS)] == gg.STATS_FIELDS


@pytest.mark.parametrize(
    "offsets, error",
    [
        ([2**63 - 100], ValueError),
        ([2**62], ValueError),
        ([1.5], TypeError),
        (["65536"], TypeError),
        ([True], TypeError),
        ([-1], ValueError),
        ({"a": 0}, TypeError),
        ([0, 0], ValueError),
    ],
)
def test_offsets_are_whole_numbers_that_fit(offsets, error):
    with pytest.raises(error, match="offsets"):
        gg.norm_partials([np.ones(10)], offsets=offsets, numel=[(1 << 62) - 10])
    with pytest.raises(error, match="offsets"):
        gg.stats_partials([np.ones(10)], offsets=offsets, numel=[(1 << 62) - 10])
    with pytest.raises(error, match="numel"):
        gg.norm_partials([np.ones(10)], offsets=[0], numel=offsets)


@pytest.mark.parametrize("numel, world", [(10.5, 2), (True, 2), ("10", 2), (10, 2.5), (-1, 2), (10, 0)])
def test_shard_bounds_takes_whole_numbers(numel, world):
    with pytest.raises((TypeError, ValueError)):
        gg.shard_bounds(numel, world)


def test_altered_partials_tables_are_refused():
    parts = gg.norm_partials([np.ones(10), np.ones(5)])
    for ord in (math.nan, -1.0, 0.0):
        with pytest.raises(ValueError, match="ord"):
            gg.combine_norm_partials([dataclasses.replace(parts, ord=ord)])
    with pytest.raises(ValueError, match="do not hold"):
        gg.combine_norm_partials([dataclasses.replace(parts, tensor=np.array([-1, 1]))])
    with pytest.raises(ValueError, match="fields per piece"):
        gg.combine_norm_partials([dataclasses.replace(parts, values=parts.values[:, :3])])
    with pytest.raises(ValueError, match="fields per piece"):
        gg.combine_norm_partials([dataclasses.replace(parts, values=parts.values.ravel())])


def test_the_core_refuses_a_shard_end_beyond_its_limit_whoever_calls_it():
    """The int64 sum offset + size is guarded in the core too (the sanitizer pass runs this)."""
    from gradguard import _core

    assert _core.MAX_SHARD_END == 1 << 62
    array = np.ones(10, np.float32)
    _core.norm_partials([array], 2.0, None, False, [(1 << 62) - 10])  # ends exactly at the limit
    for offset in ((1 << 62) - 9, (1 << 63) - 100):
        with pytest.raises(ValueError, match="beyond 2\\^62"):
            _core.norm_partials([array], 2.0, None, False, [offset])
        with pytest.raises(ValueError, match="beyond 2\\^62"):
            _core.stats_partials([array], None, False, [offset])
