"""A run that blows up: NaN gradients from step 12, then the script raises at step 15."""

import sys

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 8), torch.randn(32, 1)
for step in range(100):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    if step >= 12:
        loss = loss * float("nan")
    loss.backward()
    optimizer.step()
    if step == 15:
        raise RuntimeError(f"loss is {loss.item()} at step {step}: giving up ({sys.argv[1:]})")
