"""Layer norm and RMS norm, forward and backward: gradguard against NumPy and torch."""

from __future__ import annotations

import numpy as np

from ..norm import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from .harness import copy_probes, fresh_copy_probes, interleaved_medians, torch

NORM_SHAPES = [(8192, 768), (2048, 4096), (65536, 128)]
NORM_KINDS = ["layer", "rms"]


def numpy_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return (x - mean) * rstd * weight + bias, mean, rstd


def numpy_layer_norm_backward(dy, x, mean, rstd, weight):
    xhat = (x - mean) * rstd
    g = dy * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def numpy_rms_norm(x, weight, eps=1e-6):
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return x * rstd * weight, rstd


def numpy_rms_norm_backward(dy, x, rstd, weight):
    xhat = x * rstd
    g = dy * weight
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0)


def make_norm_cases(shape, seed=0, kind="layer"):
    """{"forward": {impl: fn}, "backward": {impl: fn}} for one (rows, features) float32
    shape; kind "layer" (layer norm with weight and bias) or "rms" (RMS norm with weight)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    out = np.empty_like(x)
    if kind == "layer":
        _, mean, rstd = layer_norm(x, weight, bias, return_stats=True)
        _, numpy_mean, numpy_rstd = numpy_layer_norm(x, weight, bias)
        forward = {
            "gradguard": lambda: layer_norm(x, weight, bias),
            "gradguard out=": lambda: layer_norm(x, weight, bias, out=out),
            "numpy": lambda: numpy_layer_norm(x, weight, bias),
        }
        backward = {
            "gradguard": lambda: layer_norm_backward(dy, x, mean, rstd, weight),
            "gradguard out=": lambda: layer_norm_backward(dy, x, mean, rstd, weight, out=out),
            "numpy": lambda: numpy_layer_norm_backward(dy, x, numpy_mean, numpy_rstd, weight),
        }
    else:
        _, rstd = rms_norm(x, weight, return_stats=True)
        _, numpy_rstd = numpy_rms_norm(x, weight)
        forward = {
            "gradguard": lambda: rms_norm(x, weight),
            "gradguard out=": lambda: rms_norm(x, weight, out=out),
            "numpy": lambda: numpy_rms_norm(x, weight),
        }
        backward = {
            "gradguard": lambda: rms_norm_backward(dy, x, rstd, weight),
            "gradguard out=": lambda: rms_norm_backward(dy, x, rstd, weight, out=out),
            "numpy": lambda: numpy_rms_norm_backward(dy, x, numpy_rstd, weight),
        }
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(weight).requires_grad_()
        tb = torch.from_numpy(bias).requires_grad_()
        features = (shape[1],)
        if kind == "layer":
            inputs = (tx, tw, tb)

            def torch_norm():
                return torch.nn.functional.layer_norm(tx, features, tw, tb)
        else:
            inputs = (tx, tw)

            def torch_norm():
                return torch.nn.functional.rms_norm(tx, features, tw, eps=1e-6)

        ty = torch_norm()
        tdy = torch.from_numpy(dy)

        def torch_forward():
            with torch.no_grad():
                return torch_norm()

        forward["torch"] = torch_forward
        backward["torch"] = lambda: torch.autograd.grad(ty, inputs, tdy, retain_graph=True)
    return {
        "forward": forward,
        "backward": backward,
        "copy": copy_probes(x, np.empty_like(x)),
        "fresh copy": fresh_copy_probes(x),
        "nbytes": x.nbytes,
    }


def run_norms(repeat, shapes=NORM_SHAPES, kinds=NORM_KINDS, busy_settle=False):
    """Rows for the normalisation section, each case timed round-robin with the copy probes.
    copy_fraction = bytes moved per second / the best copy's (read + write) bytes per
    second into a kept buffer; fresh_copy_fraction, for the calls that allocate
    their output (no out=), the same against the best copy into a new buffer.
    busy_settle: as interleaved_medians takes it."""
    rows = []
    for kind in kinds:
        for shape in shapes:
            cases = make_norm_cases(shape, kind=kind)
            nbytes = cases["nbytes"]
            copies = {f"copy: {name}": probe for name, probe in cases["copy"].items()}
            copies.update({f"fresh copy: {name}": probe for name, probe in cases["fresh copy"].items()})
            for direction, moved in (("forward", 2 * nbytes), ("backward", 3 * nbytes)):
                functions = dict(cases[direction])
                functions.update(copies)
                medians = interleaved_medians(functions, repeat, first=tuple(copies), busy_settle=busy_settle)
                copy_bandwidth = max(2 * nbytes / medians[f"copy: {name}"] for name in cases["copy"])
                fresh_bandwidth = max(2 * nbytes / medians[f"fresh copy: {name}"] for name in cases["fresh copy"])
                for name in cases[direction]:
                    seconds = medians[name]
                    rows.append(
                        {
                            "norm": kind,
                            "shape": f"{shape[0]}x{shape[1]}",
                            "direction": direction,
                            "implementation": name,
                            "ms": seconds * 1e3,
                            "GB/s": moved / seconds / 1e9,
                            "copy_fraction": moved / seconds / copy_bandwidth,
                            "gg_speedup": seconds / medians["gradguard"],
                            "copy_GBps": copy_bandwidth / 1e9,
                            # Only the calls that allocate their output pay the faults.
                            "fresh_copy_fraction": None if "out=" in name else moved / seconds / fresh_bandwidth,
                            "fresh_copy_GBps": fresh_bandwidth / 1e9,
                        }
                    )
            del cases
    return rows


def format_norm_table(rows):
    lines = [
        "layer norm (weight, bias) and RMS norm (weight), float32: forward reads x and writes y (2N bytes),",
        "backward reads x and dy and writes dx (3N); copy bw = best x -> y copy (torch copy_, numpy copyto)",
        "in the same rounds; 'out=' reuses the output buffer; fresh copy bw = best copy into a new array",
        "(numpy copy, torch clone), the yardstick of calls that allocate their output and pay its page faults",
        "",
        f"{'norm':<6}{'shape':<11}{'direction':<10}{'impl':<16}{'ms':>8}{'GB/s':>7}{'of copy bw':>12}"
        f"{'of fresh':>10}{'gg faster':>10}{'copy bw':>9}{'fresh bw':>9}",
    ]
    for row in rows:
        fresh = row["fresh_copy_fraction"]
        lines.append(
            f"{row['norm']:<6}{row['shape']:<11}{row['direction']:<10}{row['implementation']:<16}{row['ms']:>8.2f}"
            f"{row['GB/s']:>7.1f}{row['copy_fraction'] * 100:>11.0f}%"
            + (f"{fresh * 100:>9.0f}%" if fresh is not None else f"{'-':>10}")
            + f"{row['gg_speedup']:>9.1f}x{row['copy_GBps']:>7.0f}{row['fresh_copy_GBps']:>9.0f}"
        )
    return "\n".join(lines)


# ---- fused optimiser steps ---------------------------------------------------------

# Bytes per parameter of one step, float32: the gradient norm reads the
# gradient (4); the update reads the gradient, the parameter and its states
# and writes the parameter and states.
