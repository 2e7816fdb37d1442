"""`gradguard demo`: every classic remedy for vanishing and exploding gradients,
measured over several seeds with gradguard's own pieces, and a verdict on each
claim. Writes results.json, report.md and PNGs to --out."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from .._command_line import whole_number
from ..config import usable_cores
from .experiments import EXPERIMENTS, Settings, plan
from .figures import draw_all
from .report import header_facts, text_summary, write_report, write_results
from .runner import Progress, run_all

# (seeds, spirals steps, adding-problem steps, depths, lengths) of each preset.
PRESETS = {
    "quick": (2, 150, 300, (10, 50), (20, 50)),
    "default": (5, 300, 600, (10, 50, 100), (20, 50, 100)),
    "full": (10, 600, 1000, (10, 50, 100), (20, 50, 100)),
}


def add_arguments(parser):
    """The options of `gradguard demo`."""
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true", help="2 seeds, fewer steps, depths 10/50, lengths 20/50 (about 30 s)"
    )
    preset.add_argument("--full", action="store_true", help="10 seeds and twice the steps (about 10 minutes)")
    parser.add_argument("--seeds", type=whole_number(1), help="seeds per configuration (default 5)")
    parser.add_argument(
        "--first-seed", type=whole_number(0), default=0, help="seeds are first-seed, first-seed + 1, ..."
    )
    parser.add_argument("--steps", type=whole_number(1), help="training steps of each spirals network (default 300)")
    parser.add_argument(
        "--sequence-steps", type=whole_number(1), help="training steps of each recurrent network (default 600)"
    )
    parser.add_argument("--depths", type=whole_number(2), nargs="+", help="hidden layers (default 10 50 100)")
    parser.add_argument("--lengths", type=whole_number(2), nargs="+", help="adding-problem lengths (default 20 50 100)")
    parser.add_argument(
        "--experiments",
        nargs="+",
        choices=list(EXPERIMENTS),
        default=list(EXPERIMENTS),
        help="which experiments to run (default: all): "
        + "; ".join(f"{key}: {title}" for key, (title, _) in EXPERIMENTS.items()),
    )
    parser.add_argument(
        "--jobs", type=whole_number(1), default=usable_cores(), help="worker processes (default: the usable cores)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("gradguard-out"), help="folder for results.json, report.md and the PNGs"
    )


def settings_from(arguments):
    preset = "quick" if arguments.quick else "full" if arguments.full else "default"
    seeds, steps, sequence_steps, depths, lengths = PRESETS[preset]
    seeds = arguments.seeds or seeds
    return Settings(
        seeds=tuple(range(arguments.first_seed, arguments.first_seed + seeds)),
        steps=arguments.steps or steps,
        sequence_steps=arguments.sequence_steps or sequence_steps,
        depths=tuple(arguments.depths or depths),
        lengths=tuple(arguments.lengths or lengths),
    )


def check_writable(folder: Path) -> None:
    """Create the folder and prove a file can be written there, before any training."""
    if folder.exists() and not folder.is_dir():
        raise OSError(f"--out {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gradguard-probe-"):
            pass
    except OSError as error:
        raise OSError(f"--out {folder} is not writable: {error.strerror or error}") from None


def run_from_arguments(arguments, command="gradguard demo"):
    settings = settings_from(arguments)
    check_writable(arguments.out)
    runs = plan(settings, arguments.experiments)
    progress = Progress(runs)
    started = time.perf_counter()
    records = run_all(runs, arguments.jobs, progress)
    elapsed = time.perf_counter() - started
    facts = header_facts(settings, elapsed, min(arguments.jobs, len(runs)))
    write_results(arguments.out / "results.json", settings, records, facts, command)
    figures = draw_all(records, arguments.out)
    write_report(arguments.out / "report.md", settings, records, facts, command, figures)
    print(text_summary(records))
    print()
    for name in ["results.json", "report.md"] + [path.name for path in figures]:
        print(f"wrote {arguments.out / name}")
    if not figures:
        print("matplotlib is not installed: no pictures (pip install 'gradguard[plot]')")
    print(f"{len(records)} runs in {elapsed:.0f} s on {facts['machine']}")
    return 0


def main(argv=None):
    """`gradguard demo` on its own: the same as `python -m gradguard demo ARGS`."""
    from ..__main__ import main as gradguard_main

    return gradguard_main(["demo", *(sys.argv[1:] if argv is None else argv)])
