"""`gradguard bench`: the options and the sections they run."""

from __future__ import annotations

from .._command_line import whole_number
from ..config import get_num_threads, set_num_threads
from .workloads import workload_names

# The sections' modules (and torch, which they import when it is installed)
# are imported by run_from_arguments: parsing the options, or refusing them,
# is immediate.


def add_arguments(parser):
    """The options of `gradguard bench`."""
    parser.add_argument("--workloads", nargs="+", default=workload_names(), choices=workload_names())
    parser.add_argument(
        "--repeat", type=whole_number(1), default=7, help="timed calls per measurement (median reported)"
    )
    parser.add_argument(
        "--threads", type=whole_number(1), default=get_num_threads(), help="threads for gradguard and torch"
    )
    parser.add_argument(
        "--busy-settle",
        action="store_true",
        help="norm section: before each timed call, spin for the settle time instead of sleeping "
        "(on a VM, calls after idle can run slower; compare both)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["clip", "norm", "optim"],
        choices=["clip", "norm", "optim", "backward", "sharded", "device", "origin", "detection"],
        help="clip: norms, clipping and statistics of the workloads; norm: layer norm; "
        "optim: fused optimiser steps on gpt2-small; backward: a gpt2-small-shaped transformer's backward "
        "+ clip + AdamW, the norm taken during backward (needs torch); sharded: the global-norm clip of "
        "gpt2-small's gradients sharded over 2 processes (needs torch); device: gradguard.torch's device path "
        "(torch's kernels, one transfer a step) against torch's clip_grad_norm_ on gpt2-small, resnet50 and "
        "many-small (needs torch; CPU tensors here, CUDA ones on a GPU); "
        "origin: the cost of the hooks that find where a NaN was born, on a transformer step (needs torch); "
        "detection: the monitor on labelled training runs",
    )


def run_from_arguments(arguments):
    from .clip_cases import format_table, run
    from .norm_cases import format_norm_table, run_norms
    from .optim_cases import format_optimizer_table, run_optimizers

    if "clip" in arguments.sections:
        rows = run(arguments.workloads, arguments.repeat, arguments.threads)
        print(format_table(rows, arguments.threads))
    if "norm" in arguments.sections:
        _use_threads(arguments.threads)
        print()
        print(format_norm_table(run_norms(arguments.repeat, busy_settle=arguments.busy_settle)))
    if "optim" in arguments.sections:
        _use_threads(arguments.threads)
        print()
        print(format_optimizer_table(run_optimizers(max(3, arguments.repeat // 2))))
    if "backward" in arguments.sections:
        _torch_section("backward", arguments.threads, lambda: _backward(arguments.repeat))
    if "sharded" in arguments.sections:
        _torch_section("sharded", None, lambda: _sharded(arguments.repeat))
    if "device" in arguments.sections:
        _torch_section("device", arguments.threads, lambda: _device(arguments.repeat))
    if "origin" in arguments.sections:
        _torch_section("origin", arguments.threads, lambda: _origin(arguments.repeat))
    if "detection" in arguments.sections:
        from .detection import main_section

        print()
        main_section()
    return 0


def _torch_section(name, threads, table):
    """A section that needs torch: skipped with the reason without it; threads set
    for gradguard and torch alike (None: the section sets its own)."""
    from .harness import torch

    print()
    if torch is None:
        print(f"{name}: skipped, torch is not installed")
        return
    if threads is not None:
        _use_threads(threads)
    print(table())


def _use_threads(threads):
    """The same thread count for gradguard and, when installed, torch."""
    from .harness import torch

    set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)


def _backward(repeat):
    from .backward import format_measurement, measure

    medians, agreement = measure(rounds=max(3, repeat // 2))
    return format_measurement(medians, agreement, 4, 64)


def _sharded(repeat):
    from .sharded import format_sharded, measure_sharded

    return format_sharded(measure_sharded(repeat=repeat))


def _origin(repeat):
    from .origin import format_origin, measure_origin

    return format_origin(measure_origin(repeat=max(repeat, 15)))


def _device(repeat):
    from .device import format_device, measure_device

    return format_device(measure_device(repeat=repeat))
