"""Trains until interrupted; touches argv[1] once 8 steps are done, then sleeps between steps."""

import pathlib
import sys
import time

import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
while True:
    optimizer.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    step += 1
    if step == 8:
        pathlib.Path(sys.argv[1]).touch()
    if step >= 8:
        time.sleep(0.05)
