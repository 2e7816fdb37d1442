"""A plain torch loop whose last layer is frozen until step 10 (progressive
unfreezing); the optimizer holds every parameter from the start."""

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
for parameter in model[2].parameters():
    parameter.requires_grad_(False)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(64, 8), torch.randn(64, 1)
for step in range(20):
    if step == 10:
        for parameter in model[2].parameters():
            parameter.requires_grad_(True)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
