"""Fused optimiser steps: gradguard's one-pass clip + update against torch.optim."""

from __future__ import annotations

import numpy as np

from .. import optim
from ..clip import clip_by_global_norm
from .harness import ShrinkingBound, bandwidth_from, interleaved_medians, read_probes, torch, write_probes
from .workloads import make_gradients

OPTIMIZER_BYTES = {
    "adamw": {"read": 4, "read_write": 4 + 2 * 4 * 3},  # g; p, exp_avg, exp_avg_sq read and written
    "sgd": {"read": 4, "read_write": 4 + 2 * 4 * 2},  # g; p, momentum buffer
    "rmsprop": {"read": 4, "read_write": 4 + 2 * 4 * 2},  # g; p, square_avg
}


def make_optimizer_cases(workload="gpt2-small", seed=0):
    """{kind: {impl: step function}} on one workload; every implementation owns its
    parameters and states, and all see the same float32 gradients."""
    gradients = list(make_gradients(workload, seed=seed).values())
    rng = np.random.default_rng(seed + 1)
    initial = [rng.standard_normal(g.shape, dtype=np.float32) * 0.02 for g in gradients]
    max_norm = 1.0  # the gradients' norm is ~1.1e4: every step clips
    cases = {}

    def own_params():
        return [p.copy() for p in initial]

    def gg_pair(make):
        fused_params, unfused_params = own_params(), own_params()
        fused = make(fused_params, max_grad_norm=max_norm)
        unfused = make(unfused_params)
        unfused_grads = [g.copy() for g in gradients]  # the unfused clip scales these in place
        bound = ShrinkingBound()  # so that the clip really scales on every call

        def unfused_step():
            bound.update(clip_by_global_norm(unfused_grads, min(max_norm, bound.next())))
            unfused.step(unfused_grads)

        return {"gradguard fused": lambda: fused.step(gradients), "gradguard clip+step": unfused_step}

    makers = {
        "adamw": lambda params, **kw: optim.AdamW(params, lr=1e-4, **kw),
        "sgd": lambda params, **kw: optim.SGD(params, lr=1e-3, momentum=0.9, **kw),
        "rmsprop": lambda params, **kw: optim.RMSprop(params, lr=1e-4, **kw),
    }
    for kind, make in makers.items():
        cases[kind] = gg_pair(make)
    if torch is not None:

        def torch_step(factory):
            parameters = [torch.nn.Parameter(torch.from_numpy(p)) for p in own_params()]
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = torch.from_numpy(gradient.copy())
            optimizer = factory(parameters)

            def step():
                torch.nn.utils.clip_grad_norm_(parameters, max_norm)
                optimizer.step()

            return step

        cases["adamw"]["torch fused"] = torch_step(lambda p: torch.optim.AdamW(p, lr=1e-4, fused=True))
        cases["adamw"]["torch foreach"] = torch_step(lambda p: torch.optim.AdamW(p, lr=1e-4, foreach=True))
        cases["sgd"]["torch foreach"] = torch_step(lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True))
        cases["rmsprop"]["torch foreach"] = torch_step(lambda p: torch.optim.RMSprop(p, lr=1e-4, foreach=True))
    return cases, sum(g.size for g in gradients)


def run_optimizers(repeat, workload="gpt2-small"):
    cases, parameters = make_optimizer_cases(workload)
    probe_buffer = np.ones(512 * 2**20 // 4, dtype=np.float32)
    probes = {f"read: {name}": probe for name, probe in read_probes(probe_buffer).items()}
    probes.update({f"read+write: {name}": probe for name, probe in write_probes(probe_buffer).items()})
    rows = []
    for kind, implementations in cases.items():
        functions = dict(implementations)
        functions.update(probes)
        medians = interleaved_medians(functions, repeat, first=tuple(probes))
        bandwidth = bandwidth_from(medians, probe_buffer.nbytes)
        bytes_per = OPTIMIZER_BYTES[kind]
        roofline = parameters * (bytes_per["read"] / bandwidth.read + bytes_per["read_write"] / bandwidth.read_write)
        moved = parameters * (bytes_per["read"] + bytes_per["read_write"])
        for name in implementations:
            seconds = medians[name]
            rows.append(
                {
                    "optimizer": kind,
                    "implementation": name,
                    "ms": seconds * 1e3,
                    "roofline_ms": roofline * 1e3,
                    "x_roofline": seconds / roofline,
                    "gg_speedup": seconds / medians["gradguard fused"],
                    "MB_moved_fused": moved / 1e6,
                }
            )
    return rows


def format_optimizer_table(rows, workload="gpt2-small"):
    lines = [
        f"fused optimiser steps on {workload}, float32, every step clipping by global norm (max_norm 1.0);",
        "roofline: one gradient read for the norm plus the update's reads and writes (AdamW 28 B/param, SGD-momentum",
        "and RMSprop 20 B/param) at the read and read+write bandwidth of the same rounds",
        "",
        f"{'optimizer':<10}{'impl':<22}{'ms':>9}{'roofline':>10}{'x roof':>8}{'gg faster':>10}",
    ]
    for row in rows:
        lines.append(
            f"{row['optimizer']:<10}{row['implementation']:<22}{row['ms']:>9.2f}{row['roofline_ms']:>10.2f}"
            f"{row['x_roofline']:>8.2f}{row['gg_speedup']:>9.2f}x"
        )
    return "\n".join(lines)


# ---- the table -----------------------------------------------------------------------
