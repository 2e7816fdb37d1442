"""`gradguard bench --sections device`: gradguard.torch's device path (torch's
multi-tensor kernels, one transfer of statistics a step) against torch's own
clip_grad_norm_(foreach=True), on the standard workloads' gradients as torch
tensors. On this machine the tensors are CPU tensors forced through the
device path; on a GPU machine (tools/gpu_tests.sh) they are CUDA tensors.

Per workload, interleaved medians of:
- torch: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True);
- clip: gradguard.torch.clip_grad_norm_ on the device path (no transfer);
- monitored step: GradGuardHook(max_norm=...) called once: the monitor's
  statistics on the device, one transfer, the monitor's record, the clip.
Every timed call clips (the bound is half the norm); the gradients are
restored from a copy, untimed, before each.
"""

from __future__ import annotations

from .harness import interleaved_medians, torch
from .workloads import make_gradients

__all__ = ["measure_device", "format_device"]

WORKLOADS = ("gpt2-small", "resnet50", "many-small")
# The bound: half the gradients' norm, so that every timed call clips (reads,
# then scales in place), as a clipped step does; the gradients are restored
# from a copy, untimed, before each timed call.
BOUND_FRACTION = 0.5


def _parameters(workload, on):
    parameters = []
    for name, array in make_gradients(workload).items():
        parameter = torch.nn.Parameter(torch.zeros(array.shape, device=on))
        parameter.grad = torch.from_numpy(array).to(on)
        parameters.append((name, parameter))
    return parameters


def _timed(workload, on, repeat):
    """One workload's medians: torch's clip, gradguard's clip and a monitored step, interleaved."""
    from ..torch import GradGuardHook, clip_grad_norm_, device_path

    def synchronised(function):
        if on.type != "cuda":
            return function
        return lambda: (function(), torch.cuda.synchronize())

    named = _parameters(workload, on)
    parameters = [p for _, p in named]
    bound = BOUND_FRACTION * float(torch.nn.utils.get_total_norm([p.grad for p in parameters]))
    hook = GradGuardHook(named, max_norm=bound)
    cases = {
        "torch clip_grad_norm_(foreach)": synchronised(
            lambda: torch.nn.utils.clip_grad_norm_(parameters, bound, foreach=True)
        ),
        "gradguard clip (device path)": synchronised(lambda: clip_grad_norm_(parameters, bound)),
        "gradguard monitored step (device path)": synchronised(hook),
    }
    gradients = [p.grad for p in parameters]
    originals = [g.clone() for g in gradients]

    def restore():
        torch._foreach_copy_(gradients, originals)
        if on.type == "cuda":
            torch.cuda.synchronize()

    with device_path(True):
        return interleaved_medians(cases, repeat, before=restore)


def measure_device(repeat=7, workloads=WORKLOADS, device=None):
    """({workload: {case: median seconds}}, the device used: CUDA when torch sees one)."""
    on = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return {workload: _timed(workload, on, repeat) for workload in workloads}, on


def format_device(measured) -> str:
    results, on = measured
    lines = [
        f"device path on {on} (torch's kernels; the monitored step brings its statistics to the host in one transfer)",
        "",
        f"{'workload':<12} {'torch clip (ms)':>16} {'gg clip (ms)':>13} {'ratio':>6} {'monitored (ms)':>15} {'ratio':>6}",
    ]
    for workload, times in results.items():
        reference = times["torch clip_grad_norm_(foreach)"]
        clip = times["gradguard clip (device path)"]
        monitored = times["gradguard monitored step (device path)"]
        lines.append(
            f"{workload:<12} {reference * 1e3:>16.2f} {clip * 1e3:>13.2f} {clip / reference:>6.2f} "
            f"{monitored * 1e3:>15.2f} {monitored / reference:>6.2f}"
        )
    return "\n".join(lines)
