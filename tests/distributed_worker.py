"""One rank of the multi-process tests of gradguard.distributed.

Run by tests/test_distributed.py, either through torch.multiprocessing with
gloo (worker_main) or under mpiexec with mpi4py (python distributed_worker.py
OUT_DIR). Every rank builds the same model gradients from one seed, takes its
part of them for each layout, runs the scenario, and pickles what it got to
OUT_DIR/rank<r>.pkl; the test compares that with the single-process calls.
"""

import functools
import math
import os
import pickle
import sys
import time

import numpy as np

import gradguard as gg
from gradguard import distributed as ggd

SIZES = [70_000, 7, 0, 200_003, 1000, 150_001, 65_536, 3]
DTYPES = [np.float32, np.float64, np.float16]


class OneRank:
    """An mpi4py-like communicator of one rank, for the checks that need no peers."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def allgather(self, value):
        return [value]

    def Ibarrier(self):
        class Done:
            def Test(self):
                return True

        return Done()


def model_grads(seed=0, scale=1.0, dtypes=DTYPES):
    """The model's gradients, name -> array (every rank builds the same)."""
    rng = np.random.default_rng(seed)
    return {
        f"layer{index}": (rng.standard_normal(size) * scale).astype(dtypes[index % len(dtypes)])
        for index, size in enumerate(SIZES)
    }


def disjoint_part(grads, rank, size):
    """Rank r's whole tensors: a contiguous block of the global order."""
    names = list(grads)
    bounds = np.linspace(0, len(names), size + 1).astype(int)
    return {name: grads[name] for name in names[bounds[rank] : bounds[rank + 1]]}


def sharded_part(grads, rank, size, aligned=True):
    """Rank r's shard of every tensor (copies, as a ZeRO rank owns them), and its offsets."""
    shards, offsets = {}, {}
    for name, array in grads.items():
        if aligned:
            start, stop = gg.shard_bounds(array.size, size)[rank]
        else:
            start, stop = array.size * rank // size, array.size * (rank + 1) // size
        shards[name] = array[start:stop].copy()
        offsets[name] = start
    return shards, offsets


def copies(grads):
    return {name: array.copy() for name, array in grads.items()}


def run_scenarios(rank, size, group):
    where = {"group": group}
    results = {}
    grads = model_grads()
    for layout, part in (
        ("disjoint", disjoint_part(grads, rank, size)),
        ("replicated", copies(grads)),
        ("sharded", sharded_part(grads, rank, size)[0]),
    ):
        for ord in (2.0, 1.0, math.inf, 3.0):
            results[f"norm/{layout}/{ord}"] = ggd.global_norm(part, ord, layout=layout, **where)
        stats = ggd.grad_stats(part, layout=layout, **where)
        results[f"stats/{layout}"] = stats
        clipped = copies(part)
        results[f"clip_total/{layout}"] = ggd.clip_by_global_norm(clipped, 1.0, layout=layout, **where)
        results[f"clipped/{layout}"] = clipped
    # Partials a caller took itself (each rank its own tensors), combined over the ranks.
    mine = disjoint_part(grads, rank, size)
    results["combine/norm"] = ggd.combine_norm_over_ranks([gg.norm_partials(mine)], **where)
    results["combine/stats"] = ggd.combine_stats_over_ranks([gg.stats_partials(mine)], **where)
    shards, offsets = sharded_part(grads, rank, size)
    results["norm/sharded_offsets"] = ggd.global_norm(shards, layout="sharded", offsets=offsets, **where)
    uneven, uneven_offsets = sharded_part(grads, rank, size, aligned=False)
    results["norm/sharded_off_grid"] = ggd.global_norm(uneven, layout="sharded", offsets=uneven_offsets, **where)

    # The rare path: float64 magnitudes whose squares overflow.
    huge = model_grads(scale=1e200, dtypes=[np.float64])
    results["norm/huge"] = ggd.global_norm(sharded_part(huge, rank, size)[0], layout="sharded", **where)
    results["stats/huge"] = ggd.grad_stats(sharded_part(huge, rank, size)[0], layout="sharded", **where)

    # NaN on the last rank only: every rank sees it.
    poisoned = disjoint_part(model_grads(), rank, size)
    if rank == size - 1:
        first = next(name for name, array in poisoned.items() if array.size)
        poisoned[first][0] = np.nan
    results["norm/nan"] = ggd.global_norm(poisoned, **where)
    results["stats_nan/nonfinite"] = ggd.grad_stats(poisoned, **where).nonfinite()

    # A refused argument on rank 1: it raises its own error, the others RankFailed, nobody writes.
    part = copies(disjoint_part(grads, rank, size))
    if rank == 1:
        name = next(iter(part))
        part[name] = part[name].copy()
        part[name].flags.writeable = False
    before = copies(part)
    try:
        ggd.clip_by_global_norm(part, 1e-3, **where)
        results["refused/error"] = None
    except Exception as error:  # noqa: BLE001 - the type is the result
        results["refused/error"] = (type(error).__name__, str(error))
    results["refused/unchanged"] = all(np.array_equal(part[n], before[n]) for n in part)

    # An optimiser over this rank's shards, clipped by the global norm.
    params = {name: np.linspace(-1, 1, array.size, dtype=np.float32) for name, array in grads.items()}
    param_shards = sharded_part(params, rank, size)[0]
    optimizer = gg.optim.AdamW(param_shards, lr=1e-2, max_grad_norm=0.5)
    grad_shards = {name: shard.astype(np.float32) for name, shard in shards.items()}
    for _ in range(3):
        report = ggd.optimizer_step(optimizer, grad_shards, layout="sharded", return_report=True, **where)
    results["optim/params"] = param_shards
    results["optim/grad_norm"] = report.grad_norm
    poisoned_shards = {name: shard.copy() for name, shard in grad_shards.items()}
    if rank == 0:
        poisoned_shards["layer3"][1] = np.inf
    kept = {name: array.copy() for name, array in param_shards.items()}
    report = ggd.optimizer_step(optimizer, poisoned_shards, layout="sharded", return_report=True, **where)
    results["optim/skipped"] = report.skipped
    results["optim/unchanged"] = all(np.array_equal(kept[n], param_shards[n]) for n in kept)

    # The monitor, fed from the shards' statistics.
    monitor = gg.GradientMonitor()
    for step in range(4):
        scaled = {name: shard * np.float32(0.1**step) for name, shard in grad_shards.items()}
        ggd.monitor_update(monitor, scaled, layout="sharded", **where)
    results["monitor/history"] = monitor.history()
    results.update(refusal_scenarios(rank, size, group))
    results.update(random_refusals(rank, size, group))
    results.update(backward_scenario(rank, size, group))
    results.update(device_scenario(rank, size, group))
    return results


def _outcome(call):
    """(the type of the exception call() raised or None, seconds it took)."""
    start = time.monotonic()
    try:
        call()
        failure = None
    except Exception as error:  # noqa: BLE001 - the type is the result
        failure = type(error).__name__
    return failure, time.monotonic() - start


def refusal_scenarios(rank, size, group):
    """Calls that the last rank alone refuses (or that the ranks make
    differently): every rank must raise at once, and nothing be written."""
    where = {"group": group}
    last = rank == size - 1
    results = {}
    part = disjoint_part(model_grads(), rank, size)

    # an optimiser step whose gradients the last rank gives in the wrong dtype
    params = {name: np.ones(array.shape, np.float32) for name, array in part.items()}
    optimizer = gg.optim.AdamW(params, lr=0.1, max_grad_norm=1.0)
    grads = {name: array.astype(np.float64 if last else np.float32) for name, array in part.items()}
    results["refuse/step"] = _outcome(lambda: ggd.optimizer_step(optimizer, grads, **where))
    results["refuse/step_unchanged"] = all((p == 1).all() for p in params.values()) and optimizer.step_count == 0
    scaler = 3 if last else gg.LossScaler()
    good = {name: array.astype(np.float32) for name, array in part.items()}
    results["refuse/scaler"] = _outcome(lambda: ggd.optimizer_step(optimizer, good, loss_scaler=scaler, **where))
    results["refuse/scaler_unchanged"] = all((p == 1).all() for p in params.values()) and optimizer.step_count == 0

    # a scalar refused on the last rank only
    clipped = copies(part)
    results["refuse/max_norm"] = _outcome(lambda: ggd.clip_by_global_norm(clipped, -1.0 if last else 1e-3, **where))
    results["refuse/max_norm_unchanged"] = all(np.array_equal(clipped[n], part[n]) for n in part)
    results["refuse/ord"] = _outcome(lambda: ggd.global_norm(part, 0 if last else 2.0, **where))
    results["refuse/different_max_norm"] = _outcome(
        lambda: ggd.clip_by_global_norm(copies(part), 2.0 if last else 1.0, **where)
    )
    results["refuse/layout"] = _outcome(
        lambda: ggd.global_norm(copies(model_grads()), layout="replicated" if last else "disjoint", **where)
    )
    every = model_grads()
    reordered = dict(reversed(list(every.items()))) if last else every
    results["refuse/replicated_order"] = _outcome(lambda: ggd.global_norm(reordered, layout="replicated", **where))
    if hasattr(group, "allgather"):  # MPI: a timeout refused on one rank
        results["refuse/timeout"] = _outcome(lambda: ggd.global_norm(part, group=group, timeout=-1 if last else 30))
    else:  # torch.distributed: timeout= is for MPI, refused on the rank that gives it
        results["refuse/timeout"] = _outcome(lambda: ggd.global_norm(part, group=group, timeout=1.0 if last else None))

    # sharded: a rank holding no shard of a tensor (its name left out) would leave that part out of the norm
    shards = sharded_part(model_grads(), rank, size)[0]
    if last:
        shards.pop("layer0")
    results["refuse/sharded_missing_name"] = _outcome(lambda: ggd.global_norm(shards, layout="sharded", **where))

    # a generator is read once: the same norm and clip as the list
    arrays = list(copies(part).values())
    results["generator/norm"] = ggd.global_norm((array for array in arrays), **where)
    results["generator/list_norm"] = ggd.global_norm(arrays, **where)
    generated = [array.copy() for array in arrays]
    ggd.clip_by_global_norm((array for array in generated), 1e-3, **where)
    listed = [array.copy() for array in arrays]
    ggd.clip_by_global_norm(listed, 1e-3, **where)
    results["generator/clipped_alike"] = all(np.array_equal(a, b) for a, b in zip(generated, listed))
    results["generator/clipped"] = any(not np.array_equal(a, b) for a, b in zip(generated, arrays) if a.size)
    return results


def _read_only(arrays):
    frozen = copies(arrays)
    for array in frozen.values():
        array.setflags(write=False)
    return frozen


# Per entry point, the refusals one rank can make: (what, the call's keywords
# on the refusing rank, the error it raises there). Every call is made with
# the same keywords on the other ranks, minus the refusal.
REFUSALS = {
    "global_norm": [
        ("ord", {"ord": 0}, "ValueError"),
        ("layout", {"layout": "nope"}, "ValueError"),
        ("not an array", {"grads": ["x"]}, "TypeError"),
    ],
    "clip_by_global_norm": [
        ("max_norm", {"max_norm": -1.0}, "ValueError"),
        ("eps", {"eps": math.nan}, "ValueError"),
        ("read-only", {"read_only": True}, "ValueError"),
        ("error_if_nonfinite", {"error_if_nonfinite": "no"}, "TypeError"),
    ],
    "grad_stats": [("not an array", {"grads": ["x"]}, "TypeError"), ("layout", {"layout": "nope"}, "ValueError")],
    "monitor_update": [("not a monitor", {"monitor": None}, "TypeError"), ("step", {"step": "3"}, "TypeError")],
    "optimizer_step": [
        ("float64", {"float64": True}, "TypeError"),
        ("loss_scaler", {"loss_scaler": 3}, "TypeError"),
        ("lr", {"lr": -1.0}, "ValueError"),
        ("max_grad_norm", {"max_grad_norm": -1.0}, "ValueError"),
    ],
    "combine_norm_over_ranks": [
        ("not partials", {"parts": [3.0]}, "TypeError"),
        ("check", {"check": True}, "RuntimeError"),
    ],
    "combine_stats_over_ranks": [
        ("not partials", {"parts": [3.0]}, "TypeError"),
        ("check", {"check": True}, "RuntimeError"),
    ],
}


def _refused_check():
    raise RuntimeError("this rank's step is refused")


def _refusable_call(entry, mine, grads, optimizer, monitor, where):
    """One entry point called with this rank's refusal (mine) or none."""
    if entry == "global_norm":
        ggd.global_norm(grads, mine.get("ord", 2.0), layout=mine.get("layout", "disjoint"), **where)
    elif entry == "clip_by_global_norm":
        ggd.clip_by_global_norm(
            grads,
            mine.get("max_norm", 1e-3),
            eps=mine.get("eps", 1e-6),
            error_if_nonfinite=mine.get("error_if_nonfinite", False),
            **where,
        )
    elif entry == "grad_stats":
        ggd.grad_stats(grads, layout=mine.get("layout", "disjoint"), **where)
    elif entry == "monitor_update":
        ggd.monitor_update(mine.get("monitor", monitor), grads, mine.get("step"), **where)
    elif entry == "optimizer_step":
        wanted = np.float64 if mine.get("float64") else np.float32  # the parameters are float32
        given = {n: a.astype(wanted) for n, a in grads.items()}
        if "lr" in mine:
            optimizer.param_groups[0]["lr"] = mine["lr"]
        if "max_grad_norm" in mine:
            optimizer.max_grad_norm = mine["max_grad_norm"]
        ggd.optimizer_step(optimizer, given, loss_scaler=mine.get("loss_scaler"), **where)
    else:
        take = gg.norm_partials if entry == "combine_norm_over_ranks" else gg.stats_partials
        parts = mine.get("parts", [take(list(grads.values()))])
        combine = getattr(ggd, entry)
        combine(parts, check=_refused_check if mine.get("check") else None, **where)


def random_refusals(rank, size, group, cases=12):
    """A property test across ranks: each case draws (from one seed, alike on
    every rank) an entry point, a refusal and the rank that makes it. Every
    rank records what it raised, how long that took, and whether anything it
    holds changed (arrays, optimiser and monitor state)."""
    where = {"group": group}
    outcomes = []
    rng = np.random.default_rng(size)
    entries = sorted(REFUSALS)
    for case in range(cases):
        entry = entries[case % len(entries)]
        what, refusal, error = REFUSALS[entry][rng.integers(len(REFUSALS[entry]))]
        chosen = int(rng.integers(size))
        mine = refusal if rank == chosen else {}
        part = disjoint_part(model_grads(seed=case), rank, size)
        grads = _read_only(part) if mine.get("read_only") else copies(part)
        grads = mine.get("grads", grads)
        params = {name: np.ones(array.shape, np.float32) for name, array in part.items()}
        optimizer = gg.optim.AdamW(params, lr=0.1, max_grad_norm=1.0)
        monitor = gg.GradientMonitor()
        ggd.monitor_update(monitor, copies(part), **where)  # a monitor with history, alike on every rank
        before = (copies(part), copies(params), optimizer.state_dict(), repr(monitor.state_dict()))

        failure, seconds = _outcome(functools.partial(_refusable_call, entry, mine, grads, optimizer, monitor, where))
        if isinstance(grads, dict):
            grads_kept = all(np.array_equal(grads[n], before[0][n]) for n in part)
        else:
            grads_kept = True
        optimizer.param_groups[0]["lr"], optimizer.max_grad_norm = 0.1, 1.0  # undo the refusal's own edit
        unchanged = (
            grads_kept
            and all(np.array_equal(params[n], before[1][n]) for n in params)
            and repr(optimizer.state_dict()) == repr(before[2])
            and repr(monitor.state_dict()) == before[3]
        )
        outcomes.append((entry, what, chosen, error, failure, seconds, unchanged))
    return {"random_refusals": outcomes}


def device_scenario(rank, size, group):
    """gradguard.distributed with torch tensors on the device path (CPU tensors
    forced through it here): each layout's norm and statistics, and the clip.
    Without torch there is no such scenario, and its test skips."""
    try:
        import torch
    except ImportError:
        return {}
    from gradguard.torch import device_path

    where = {"group": group}
    grads = model_grads(seed=4, dtypes=[np.float32])
    parts = {
        "disjoint": disjoint_part(grads, rank, size),
        "replicated": grads,
        "sharded": sharded_part(grads, rank, size)[0],
    }
    results = {}
    with device_path(True):
        for layout, part in parts.items():
            tensors = {name: torch.from_numpy(array.copy()) for name, array in part.items()}
            results[f"device/norm/{layout}"] = ggd.global_norm(tensors, layout=layout, **where)
            results[f"device/stats/{layout}"] = ggd.grad_stats(tensors, layout=layout, **where)
        tensors = {name: torch.from_numpy(array.copy()) for name, array in parts["disjoint"].items()}
        report = ggd.clip_by_global_norm(tensors, 1.0, return_report=True, **where)
        results["device/clip"] = (report.total_norm, report.clip_coef)
        results["device/clipped"] = {name: tensor.numpy() for name, tensor in tensors.items()}
    return results


def backward_scenario(rank, size, group):
    """Pipeline parallel in miniature: every rank runs the same model, and
    tracks the gradients of its own block of parameters with a BackwardNorm.
    Without torch (an MPI run with the test extras alone) there is no such
    scenario, and its test skips."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return {}

    from gradguard.torch import BackwardNorm

    if group is None:  # for BackwardNorm, None means this process alone: name the default group
        group = dist.group.WORLD

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(300, 300) for _ in range(4)])
    named = list(model.named_parameters())
    bounds = np.linspace(0, len(named), size + 1).astype(int)
    tracker = BackwardNorm(named[bounds[rank] : bounds[rank + 1]], stats=True)
    model(torch.randn(8, 300, generator=torch.Generator().manual_seed(1))).square().sum().backward()
    every = {name: tensor.grad.numpy() for name, tensor in named}
    return {
        "backward/total": tracker.total_norm(group=group),
        "backward/expected": gg.global_norm(list(every.values())),
        "backward/stats": tracker.grad_stats(group=group),
        "backward/expected_stats": gg.grad_stats(every),
    }


def save(out_dir, rank, results):
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
        pickle.dump(results, handle)


def init_gloo(rank, size, port, seconds):
    """This process as rank `rank` of a gloo group on localhost (the tests' spawned ranks)."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=size,
        timeout=datetime.timedelta(seconds=seconds),
    )
    return dist


def worker_main(rank, size, out_dir, port):
    """torch.multiprocessing entry: gloo on localhost."""
    import datetime

    dist = init_gloo(rank, size, port, seconds=20)
    results = run_scenarios(rank, size, None)
    # A rank that never arrives: the others raise when the group's timeout expires.
    dist.barrier()
    small = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=2))
    if rank == 0:
        start = time.monotonic()
        try:
            ggd.global_norm([np.ones(3)], group=small)
            results["timeout/error"] = None
        except Exception as error:  # noqa: BLE001 - the type is the result
            results["timeout/error"] = type(error).__name__
        results["timeout/seconds"] = time.monotonic() - start
    save(out_dir, rank, results)


def mpi_main(out_dir):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    results = run_scenarios(comm.Get_rank(), comm.Get_size(), comm)
    # The ranks meet again on a duplicate: the timed-out call leaves `comm` unusable.
    spare = comm.Dup()
    if comm.Get_rank() == 0:
        start = time.monotonic()
        try:
            ggd.global_norm([np.ones(3)], group=comm, timeout=1.0)
            results["timeout/error"] = None
        except Exception as error:  # noqa: BLE001 - the type is the result
            results["timeout/error"] = type(error).__name__
        results["timeout/seconds"] = time.monotonic() - start
    save(out_dir, comm.Get_rank(), results)
    spare.Barrier()
    # Every rank has saved; leave without MPI's finalize, which would wait for the abandoned barrier.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    mpi_main(sys.argv[1])
