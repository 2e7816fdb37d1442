"""Steps 3 times, touches argv[1], then blocks in C++ (a TCPStore key that never
comes), where a SIGTERM cannot unwind Python until the wait times out."""

import datetime
import pathlib
import sys

import torch
import torch.distributed as dist

model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(3):
    optimizer.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=120))
pathlib.Path(sys.argv[1]).touch()
store.get("a key nobody sets")
