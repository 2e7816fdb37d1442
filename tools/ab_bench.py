"""A/B timing of this checkout against another build of gradguard, on one
machine whose bandwidth drifts: the two builds run in alternating processes,
each process times every case best-of-N next to the bandwidth probes, and the
best of all rounds is kept per build.

    python tools/ab_bench.py --base-rev 113d060 --rounds 6 stats norm

The base revision is built once into --cache (a git worktree and a wheel
unpacked beside it); the current checkout is whatever `import gradguard`
finds. Cases: `stats` (grad_stats and global_norm on the standard workloads,
and the plain read of the same arrays: "new x own" is the time over that
read's), `norm` (layer and RMS norm, forward and backward, with and without
out=, on the norm bench's shapes); --match keeps the cases whose name contains
a given text (e.g. --match "bwd 65536x128"). With --cold each timed call follows a
512 MiB read, so that a workload smaller than the L3 is timed from memory too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_OWN_READ = "plain read of "


def _use_base(path):
    """Imports gradguard from `path` instead of the editable checkout."""
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if "gradguard" not in repr(finder).lower() and "skbuild" not in type(finder).__module__.lower()
    ]
    sys.path.insert(0, path)


def _best(function, calls, before=None):
    function()
    best = float("inf")
    for _ in range(calls):
        if before is not None:
            before()
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _reads_lists(core):
    """Whether this build's read probe takes a list (builds before it took one array)."""
    import numpy as np

    try:
        core.read_probe([np.zeros(1, np.float32)])
    except TypeError:
        return False
    return True


def _stats_cases():
    import gradguard as gg
    from gradguard import _core
    from gradguard.bench.workloads import make_gradients, workload_names

    own_pages = _reads_lists(_core)
    for name in workload_names():
        arrays = list(make_gradients(name).values())
        nbytes = sum(a.nbytes for a in arrays)
        yield f"grad_stats {name}", (lambda arrays=arrays: gg.grad_stats(arrays)), nbytes, "read"
        # The one-pass reduction with the least work per element, for scale.
        yield f"global_norm {name}", (lambda arrays=arrays: gg.global_norm(arrays)), nbytes, "read"
        # The plainest read of these very arrays: their pages (4 KiB, or the
        # 2 MiB NumPy asks for from 4 MiB up) set what any loop can reach.
        if own_pages:
            yield f"{_OWN_READ}{name}", (lambda arrays=arrays: _core.read_probe(arrays)), nbytes, "read"


def _norm_shape_cases(rows, features):
    import numpy as np

    import gradguard as gg

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    dy = rng.standard_normal((rows, features), dtype=np.float32)
    weight = rng.standard_normal(features).astype(np.float32)
    bias = rng.standard_normal(features).astype(np.float32)
    out = np.empty_like(x)
    _, mean, rstd = gg.layer_norm(x, weight, bias, return_stats=True)
    _, rms_rstd = gg.rms_norm(x, weight, return_stats=True)
    functions = {
        "layer fwd": (lambda **k: gg.layer_norm(x, weight, bias, **k), 2),
        "layer bwd": (lambda **k: gg.layer_norm_backward(dy, x, mean, rstd, weight, **k), 3),
        "rms fwd": (lambda **k: gg.rms_norm(x, weight, **k), 2),
        "rms bwd": (lambda **k: gg.rms_norm_backward(dy, x, rms_rstd, weight, **k), 3),
    }
    cases = []
    for suffix, kwargs in (("", {}), (" out=", {"out": out})):
        for name, (function, arrays_moved) in functions.items():
            call = functools.partial(function, **kwargs)
            cases.append((f"{name} {rows}x{features}{suffix}", call, arrays_moved * x.nbytes, "copy"))
    return cases


def _norm_cases():
    from gradguard.bench.norm_cases import NORM_SHAPES

    for rows, features in NORM_SHAPES:
        yield from _norm_shape_cases(rows, features)


def _child(sections, calls, threads, cold=False, match=()):
    import numpy as np

    from gradguard import _core

    _core.set_num_threads(threads)
    probe = np.ones(128 << 20, np.float32)  # 512 MiB
    target = np.empty_like(probe)
    probes = {
        "read": lambda: (_core.read_probe(probe), probe.nbytes),
        "copy": lambda: (np.copyto(target, probe), 2 * probe.nbytes),
    }
    results = {}
    makers = {"stats": _stats_cases, "norm": _norm_cases}
    for section in sections:
        for name, function, nbytes, kind in makers[section]():
            if match and not any(text in name for text in match):
                continue
            # --cold: each timed call follows a 512 MiB read, so it starts from
            # memory (a workload smaller than the L3 otherwise stays partly cached
            # between back-to-back calls, and beats the probe).
            seconds = _best(function, calls, probes["read"] if cold else None)
            moved = probes[kind]()[1]
            probe_seconds = _best(lambda kind=kind: probes[kind](), 3)
            results[name] = {
                "seconds": seconds,
                "nbytes": nbytes,
                "kind": kind,
                "probe_GBps": moved / probe_seconds / 1e9,
            }
    print(json.dumps(results))


def _build_base(revision, cache):
    target = cache / revision
    if (target / "gradguard").is_dir():
        return target
    source = cache / f"{revision}-src"
    if not source.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", str(source), revision], check=True)
    wheels = cache / f"{revision}-wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(wheel), str(target)], check=True)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="+", choices=["stats", "norm"])
    parser.add_argument("--base-rev", help="git revision to compare against (built once into --cache)")
    parser.add_argument("--base-path", help="an unpacked build of gradguard to compare against")
    parser.add_argument("--cache", default="/tmp/gradguard-ab", help="where base builds are kept")
    parser.add_argument("--rounds", type=int, default=4, help="alternating process pairs")
    parser.add_argument("--calls", type=int, default=15, help="timed calls per case in each process (best kept)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cold", action="store_true", help="time each call after a 512 MiB read (from memory)")
    parser.add_argument(
        "--match", action="append", default=[], help="time only cases whose name contains this (repeatable)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.base_path:
            _use_base(args.base_path)
        return _child(args.sections, args.calls, args.threads, args.cold, args.match)
    base = args.base_path or str(_build_base(args.base_rev, Path(args.cache)))
    common = [*args.sections, "--calls", str(args.calls), "--threads", str(args.threads), "--child"]
    if args.cold:
        common.append("--cold")
    for text in args.match:
        common += ["--match", text]
    best = {"base": {}, "new": {}}
    for round_index in range(args.rounds):
        order = ("base", "new") if round_index % 2 == 0 else ("new", "base")
        for build in order:
            extra = ["--base-path", base] if build == "base" else []
            done = subprocess.run(
                [sys.executable, __file__, *common, *extra], capture_output=True, text=True, check=True, cwd="/"
            )
            for name, row in json.loads(done.stdout.splitlines()[-1]).items():
                kept = best[build].get(name)
                if kept is None:
                    best[build][name] = row
                else:
                    kept["seconds"] = min(kept["seconds"], row["seconds"])
                    kept["probe_GBps"] = max(kept["probe_GBps"], row["probe_GBps"])
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    start = "from memory (--cold), " if args.cold else ""
    print(f"{start}best of {args.rounds} alternating processes x {args.calls} calls, {args.threads} threads")
    print(
        f"{'case':<30}{'base ms':>9}{'new ms':>9}{'new/base':>9}{'probe GB/s':>11}{'new x roof':>11}"
        f"{'new % bw':>9}{'new x own':>10}"
    )
    for name, new in best["new"].items():
        old = best["base"].get(name)
        probe = max(new["probe_GBps"], old["probe_GBps"] if old else 0.0)
        roofline = new["nbytes"] / probe / 1e9
        # Against the plain read of the same arrays, where there is one (stats rows).
        own = best["new"].get(_OWN_READ + name.partition(" ")[2]) if not name.startswith(_OWN_READ) else None
        print(
            (
                f"{name:<30}{old['seconds'] * 1e3:>9.2f}{new['seconds'] * 1e3:>9.2f}{new['seconds'] / old['seconds']:>9.2f}"
                if old
                else f"{name:<30}{'-':>9}{new['seconds'] * 1e3:>9.2f}{'-':>9}"
            )
            + f"{probe:>11.1f}{new['seconds'] / roofline:>11.2f}{roofline / new['seconds'] * 100:>8.0f}%"
            + (f"{new['seconds'] / own['seconds']:>10.2f}" if own else "")
        )


if __name__ == "__main__":
    main()
