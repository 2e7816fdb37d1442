"""`gradguard watch [options] -- script.py [args ...]`: the watcher's command line."""

from __future__ import annotations

import argparse
import shlex

from .._command_line import whole_number

__all__ = ["add_arguments", "run_from_arguments"]


def _norm_bound(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser):
    parser.add_argument(
        "--out",
        default="gradguard-watch",
        help="folder for report.md, history.jsonl, findings.jsonl and the PNGs (default: %(default)s)",
    )
    parser.add_argument(
        "--max-norm",
        type=_norm_bound,
        default=None,
        help="also clip every optimiser's gradients at this global L2 norm (after the script's own clip)",
    )
    parser.add_argument(
        "--skip-nonfinite", action="store_true", help="skip a step whose gradients hold inf/NaN (the guard)"
    )
    parser.add_argument(
        "--every", type=whole_number(1), default=1, help="record one step in N (for very large models; default 1)"
    )
    parser.add_argument(
        "--no-origin",
        dest="find_origin",
        action="store_false",
        help="do not hook every module's forward to find where a NaN was born (6-9%% of a transformer step on CPU)",
    )
    parser.add_argument("-m", dest="module", action="store_true", help="run the target as a module (python -m target)")
    parser.add_argument("target", help="the script (or, with -m, the module) to run")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the script's own arguments")


def run_from_arguments(arguments) -> int:
    from .run import run_watched

    script_arguments = list(arguments.arguments)
    command = " ".join(
        shlex.quote(a)
        for a in (["python"] + (["-m"] if arguments.module else []) + [arguments.target] + script_arguments)
    )
    return run_watched(
        arguments.target,
        script_arguments,
        module=arguments.module,
        command=command,
        out=arguments.out,
        max_norm=arguments.max_norm,
        skip_nonfinite=arguments.skip_nonfinite,
        every=arguments.every,
        find_origin=arguments.find_origin,
    )
