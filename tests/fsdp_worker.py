"""One rank of the FSDP2 tests (tests/test_fsdp.py): a small model sharded with
fully_shard over a gloo mesh on the CPU, whose gradients are DTensors. Each
rank runs gradguard.torch's entry points and torch's own on a twin model and
pickles what it saw to OUT_DIR/rank<r>.pkl."""

import copy
import os
import pickle

import numpy as np
import torch
import torch.distributed as dist
from distributed_worker import init_gloo

import gradguard as gg
from gradguard.torch import GradGuardHook, Guard, clip_grad_norm_, clip_grad_value_, device, monitor_module


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5))


def _sharded(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _backward(model, rank, scale=1.0):
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(10 + rank))
    (model(x).pow(2).sum() * scale).backward()


def _full_grads(model):
    return {name: p.grad.full_tensor().numpy().copy() for name, p in model.named_parameters()}


def worker_main(rank, size, out_dir, port):
    init_gloo(rank, size, port, seconds=60)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (size,))
    results = {}
    base = _model()
    ours, theirs = _sharded(copy.deepcopy(base), mesh), _sharded(copy.deepcopy(base), mesh)
    for model in (ours, theirs):
        _backward(model, rank, scale=50.0)
    results["dtensor"] = type(next(ours.parameters()).grad).__name__
    expected_grads = _full_grads(ours)
    results["grads_before"] = expected_grads

    # the drop-ins: torch's algorithm on the DTensors, equal to torch's DTensor clip
    names = [name for name, _ in ours.named_parameters()]
    before = device.transfer_count()
    total = clip_grad_norm_(ours.parameters(), 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    results["clip_transfers"] = device.transfer_count() - before
    results["total"] = (float(total.full_tensor()), float(expected.full_tensor()))
    results["clipped"] = (_full_grads(ours), _full_grads(theirs))
    clip_grad_value_(ours.parameters(), 1e-3)
    torch.nn.utils.clip_grad_value_(theirs.parameters(), 1e-3)
    results["clamped"] = (_full_grads(ours), _full_grads(theirs))

    # the statistics: per whole tensor, from one all-gather of each rank's small table
    for model in (ours, theirs):
        model.zero_grad()
        _backward(model, rank)
    grads = [p.grad for p in ours.parameters()]
    before = device.transfer_count()
    results["stats"] = device.device_grad_stats(grads, names)
    results["stats_transfers"] = device.transfer_count() - before
    results["stats_expected_grads"] = _full_grads(ours)
    monitor = gg.GradientMonitor(names=names)
    monitor_module(monitor, ours)
    results["monitor_norm"] = monitor.history()["norm"][-1]

    # the hook, on every optimiser step, clipping at 0.5
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1)
    hook = GradGuardHook(ours, optimizer=optimizer, max_norm=0.5)
    for step in range(3):
        for model, opt in ((ours, optimizer), (theirs, reference_optimizer)):
            opt.zero_grad()
            _backward(model, rank, scale=1.0 + step)
        optimizer.step()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        reference_optimizer.step()
    results["hook_norms"] = hook.monitor.history()["norm"]
    results["after_hook"] = (
        {n: p.full_tensor().detach().numpy().copy() for n, p in ours.named_parameters()},
        {n: p.full_tensor().detach().numpy().copy() for n, p in theirs.named_parameters()},
    )

    # the guard: clipped steps, then a NaN loss restores the last snapshot
    guard = Guard(optimizer, clip=0.5, monitor=gg.GradientMonitor(names=names), names=names, snapshot_every=1)
    hook.remove()
    for _ in range(2):
        optimizer.zero_grad()
        _backward(ours, rank)
        report = guard.step()
    kept = {n: p.full_tensor().detach().numpy().copy() for n, p in ours.named_parameters()}
    optimizer.zero_grad()
    _backward(ours, rank)
    restored = guard.step(loss=float("nan"))
    results["guard"] = (report.grad_norm, restored, guard.actions[-1].action)
    results["guard_restored"] = all(
        np.array_equal(kept[n], p.full_tensor().detach().numpy()) for n, p in ours.named_parameters()
    )
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
        pickle.dump(results, handle)
    dist.destroy_process_group()
