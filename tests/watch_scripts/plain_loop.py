"""A plain torch loop that clips with torch, saves torch's own pre-clip norms
(clip_grad_norm_'s return) to argv[1], and ends with sys.exit(3).
A loss spike (x1e6) at step 30."""

import json
import sys

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(64, 8), torch.randn(64, 1)
norms = []
for step in range(40):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    if step == 30:
        loss = loss * 1e6
    loss.backward()
    norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
    optimizer.step()
with open(sys.argv[1], "w") as handle:
    json.dump(norms, handle)
sys.exit(3)
