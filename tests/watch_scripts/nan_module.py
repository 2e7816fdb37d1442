"""A NaN born in one module's forward (an attention-like block dividing by a
sum that reaches zero at step 12): every layer's gradient is NaN from there."""

import torch


class Normalise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.broken = False

    def forward(self, x):
        weights = torch.zeros_like(x) if self.broken else torch.softmax(x, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True)  # 0 / 0 once broken


torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), Normalise(), torch.nn.Linear(16, 1)
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 8), torch.randn(32, 1)
for step in range(16):
    model[3].broken = step >= 12
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
