"""A script that never steps a torch.optim optimiser (it updates weights by hand)."""

import torch

weight = torch.zeros(3, requires_grad=True)
for _ in range(5):
    loss = (weight - 1.0).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        weight -= 0.1 * weight.grad
        weight.grad = None
print("final", weight.tolist())
