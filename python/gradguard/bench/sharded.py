"""The global-norm clip of gpt2-small's gradients sharded over 2 processes
(gloo through torch.multiprocessing, every tensor cut by gg.shard_bounds),
against one process clipping them all, with the time each rank spends
gathering the partials shown apart from the reading and writing."""

from __future__ import annotations

import os
import pickle
import socket
import statistics
import tempfile
import time

import gradguard as gg
from gradguard import distributed as ggd
from gradguard._environment import environment
from gradguard.partials import combine_norm_partials

from .workloads import make_gradients


def _shards(rank, size):
    gradients = make_gradients("gpt2-small")
    shards, offsets, numel = {}, {}, {}
    for name, array in gradients.items():
        start, stop = gg.shard_bounds(array.size, size)[rank]
        shards[name] = array.reshape(-1)[start:stop].copy()
        offsets[name], numel[name] = start, array.size
    return shards, offsets, numel


def _rank_main(rank, size, port, repeat, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    shards, offsets, numel = _shards(rank, size)
    # A bound far above the norm: the clip then reads the gradients and writes
    # nothing, as most steps of a healthy run do; a bound halved every round
    # scales them every time (read + write).
    times = {"clip (no scaling)": [], "clip (scaling)": [], "partials": [], "gather": [], "scale": []}
    bound = 1.0
    for _ in range(repeat + 1):
        dist.barrier()
        start = time.perf_counter()
        ggd.clip_by_global_norm(shards, 1e30, layout="sharded", offsets=offsets)
        times["clip (no scaling)"].append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        ggd.clip_by_global_norm(shards, bound, layout="sharded", offsets=offsets)
        times["clip (scaling)"].append(time.perf_counter() - start)
        bound /= 2
        # The same steps one by one; the barrier keeps waiting for the other rank out of the gather's time.
        dist.barrier()
        start = time.perf_counter()
        mine = gg.norm_partials(
            shards, offsets=[offsets[name] for name in shards], numel=[numel[name] for name in shards]
        )
        middle_start = time.perf_counter()
        dist.barrier()
        middle = time.perf_counter()
        everyone = [None] * size
        dist.all_gather_object(everyone, mine)
        total = combine_norm_partials(everyone, by_name=True)
        gathered = time.perf_counter()
        gg.clip_with_norm_(shards, bound, total)
        bound /= 2
        end = time.perf_counter()
        times["partials"].append(middle_start - start)
        times["gather"].append(gathered - middle)
        times["scale"].append(end - gathered)
    if rank == 0:
        with open(out_path, "wb") as handle:
            pickle.dump({key: statistics.median(values[1:]) for key, values in times.items()}, handle)
    dist.destroy_process_group()


def measure_sharded(repeat=7, size=2):
    """Median seconds: one process (all threads) and `size` ranks (threads shared out)."""
    import torch.multiprocessing as torch_multiprocessing

    gradients = make_gradients("gpt2-small")
    arrays = list(gradients.values())
    single = {"clip (no scaling)": [], "clip (scaling)": []}
    bound = 1.0
    for _ in range(repeat + 1):
        start = time.perf_counter()
        gg.clip_by_global_norm(arrays, 1e30)
        single["clip (no scaling)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        gg.clip_by_global_norm(arrays, bound)
        single["clip (scaling)"].append(time.perf_counter() - start)
        bound /= 2
    single = {key: statistics.median(values[1:]) for key, values in single.items()}
    threads = gg.get_num_threads()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder, environment(GRADGUARD_NUM_THREADS=str(max(1, threads // size))):
        out_path = os.path.join(folder, "rank0.pkl")
        torch_multiprocessing.spawn(_rank_main, args=(size, port, repeat, out_path), nprocs=size, join=True)
        with open(out_path, "rb") as handle:
            ranks = pickle.load(handle)
    elements = sum(array.size for array in arrays)
    return {"single": single, "ranks": ranks, "size": size, "threads": threads, "elements": elements}


def format_sharded(result):
    single, ranks, size = result["single"], result["ranks"], result["size"]
    gigabytes = result["elements"] * 4 / 1e9
    lines = [
        f"gpt2-small gradients (float32, {gigabytes:.2f} GB): global-norm clip in one process "
        f"({result['threads']} threads) and sharded over {size} gloo ranks on the same cores "
        f"({max(1, result['threads'] // size)} thread each; rank 0's medians)",
        "",
        "| | one process | sharded, per rank | of which: gathering the partials |",
        "|---|---:|---:|---:|",
        f"| clip, bound not reached (read only) | {single['clip (no scaling)'] * 1e3:.1f} ms "
        f"| {ranks['clip (no scaling)'] * 1e3:.1f} ms | {ranks['gather'] * 1e3:.2f} ms |",
        f"| clip, scaling (read + write) | {single['clip (scaling)'] * 1e3:.1f} ms "
        f"| {ranks['clip (scaling)'] * 1e3:.1f} ms | {ranks['gather'] * 1e3:.2f} ms |",
        "",
        f"Sharded, step by step: partials of the shard {ranks['partials'] * 1e3:.1f} ms, all-gather + combine "
        f"{ranks['gather'] * 1e3:.2f} ms, scaling the shard {ranks['scale'] * 1e3:.1f} ms. One process reads "
        f"{gigabytes / single['clip (no scaling)']:.1f} GB/s.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_sharded(measure_sharded()))
