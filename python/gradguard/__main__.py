"""`gradguard COMMAND` (also `python -m gradguard COMMAND`): demo, bench, watch, config."""

from __future__ import annotations

import argparse
import shlex
import sys


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (exit status 2), never a traceback."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    from . import __version__
    from .bench.cli import add_arguments as bench_arguments
    from .demo.cli import add_arguments as demo_arguments

    parser = _Parser(prog="gradguard", description="gradguard: numerically healthy training, at memory speed.")
    parser.add_argument("--version", action="version", version=f"gradguard {__version__}")
    from .watch.cli import add_arguments as watch_arguments

    commands = parser.add_subparsers(dest="command", metavar="{demo,bench,watch,config}", parser_class=_Parser)
    demo = commands.add_parser(
        "demo",
        help="train deep and recurrent networks with and without each remedy, over several seeds",
        description=(
            "Every classic remedy for vanishing and exploding gradients, measured over several seeds with "
            "gradguard's own pieces, with a verdict on each claim. Writes results.json, report.md and PNGs."
        ),
    )
    demo_arguments(demo)
    bench = commands.add_parser(
        "bench",
        help="time gradguard against NumPy and torch on the standard workloads",
        description="Time gradguard against NumPy and torch on the standard workloads.",
    )
    bench_arguments(bench)
    watch = commands.add_parser(
        "watch",
        help="run an unmodified PyTorch training script under the monitor",
        description=(
            "Run a PyTorch training script unmodified (as `python script.py args` would) with every optimiser's "
            "steps monitored: gradients read before the script's own clip, each finding printed as it happens, "
            "report.md, history.jsonl, findings.jsonl and gradient-flow PNGs written at exit."
        ),
        usage="gradguard watch [options] [--] script.py [args ...]",
    )
    watch_arguments(watch)
    commands.add_parser("config", help="print the SIMD target, threads and build", description="Print the build.")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    if arguments.command == "demo":
        from .demo.cli import run_from_arguments

        try:
            return run_from_arguments(arguments, "gradguard " + " ".join(shlex.quote(a) for a in argv))
        except OSError as error:
            print(f"gradguard demo: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ngradguard demo: interrupted", file=sys.stderr)
            return 130
    if arguments.command == "watch":
        from .watch.cli import run_from_arguments

        return run_from_arguments(arguments)
    if arguments.command == "bench":
        from .bench.cli import run_from_arguments

        return run_from_arguments(arguments)
    from .config import show_config

    show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
