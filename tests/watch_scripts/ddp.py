"""Data parallel over gloo (torchrun): each rank its own batch; argv[1] names a
rank that raises at step 10 (its peers then block in the next all-reduce)."""

import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
torch.manual_seed(1 + rank)
crash_rank = int(sys.argv[1]) if len(sys.argv) > 1 else -1
for step in range(20):
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if step == 10 and rank == crash_rank:
        raise RuntimeError(f"rank {rank} fails at step {step}")
dist.destroy_process_group()
