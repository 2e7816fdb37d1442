"""The norm section of `python -m gradguard bench`: every row is measured against
the copy probes of its own rounds, and only calls that allocate their output are
measured against the copy into a fresh array."""

import time

import pytest

from gradguard.bench.harness import interleaved_medians
from gradguard.bench.norm_cases import format_norm_table, run_norms


@pytest.mark.parametrize(("kind", "busy_settle"), [("layer", False), ("rms", False), ("layer", True)])
def test_rows_carry_both_yardsticks(kind, busy_settle):
    rows = run_norms(repeat=2, shapes=[(64, 32)], kinds=[kind], busy_settle=busy_settle)
    assert {(row["direction"], row["implementation"]) for row in rows} >= {
        ("forward", "gradguard"),
        ("forward", "gradguard out="),
        ("backward", "gradguard"),
        ("backward", "gradguard out="),
    }
    for row in rows:
        assert row["copy_GBps"] > 0 and row["fresh_copy_GBps"] > 0 and row["ms"] > 0
        moved = 64 * 32 * 4 * (2 if row["direction"] == "forward" else 3)
        assert row["GB/s"] == pytest.approx(moved / row["ms"] / 1e6)
        assert row["copy_fraction"] == pytest.approx(row["GB/s"] / row["copy_GBps"])
        if "out=" in row["implementation"]:
            assert row["fresh_copy_fraction"] is None
        else:
            assert row["fresh_copy_fraction"] == pytest.approx(row["GB/s"] / row["fresh_copy_GBps"])
    table = format_norm_table(rows)
    assert "of fresh" in table and len(table.splitlines()) == len(rows) + 6


@pytest.mark.parametrize("busy_settle", [False, True])
def test_each_timed_call_follows_the_settle_time(busy_settle):
    calls = []
    medians = interleaved_medians(
        {"a": lambda: calls.append(time.perf_counter())}, repeat=3, warmup=0, settle=0.01, busy_settle=busy_settle
    )
    assert len(calls) == 6 and medians["a"] >= 0  # an untimed call before each timed one
    gaps = [later - earlier for earlier, later in zip(calls[1::2], calls[2::2])]
    assert min(gaps) >= 0.01
