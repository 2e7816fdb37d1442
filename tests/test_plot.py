"""Plots: PNG files written, non-empty, of the expected size; skipped without matplotlib."""

import struct

import numpy as np
import pytest

import gradguard as gg

pytest.importorskip("matplotlib")
from gradguard import plot  # noqa: E402


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.fixture
def monitor():
    rng = np.random.default_rng(0)
    monitor = gg.GradientMonitor(names=[f"layer{i}" for i in range(6)], window=64)
    for step in range(80):
        grads = [rng.standard_normal(32).astype(np.float32) * 0.5**i for i in range(6)]
        if step >= 60:
            grads[3][:] = np.nan
        monitor.update(grads)
    return monitor


def test_gradient_flow_heatmap(monitor, tmp_path):
    path = plot.gradient_flow(monitor, tmp_path / "flow.png")
    assert path.stat().st_size > 5000 and png_size(path) == (1000, 600)
    assert any(f.kind == "exploding" for f in monitor.findings)


def test_norm_lines_and_histogram(monitor, tmp_path):
    lines = plot.norm_lines(monitor.history(), tmp_path / "lines.png", layers=["layer0", "layer5"])
    assert lines.stat().st_size > 5000 and png_size(lines) == (1000, 600)
    grads = [np.random.default_rng(1).standard_normal(1000), np.zeros(10), np.array([np.inf])]
    histogram = plot.gradient_histogram(grads, tmp_path / "hist.png")
    assert histogram.stat().st_size > 5000 and png_size(histogram) == (800, 500)


def test_clear_error_without_matplotlib(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot.gradient_histogram([np.ones(3)], tmp_path / "x.png")
