"""A GAN: two optimisers over two networks, the discriminator's gradient clipped by value."""

import torch

torch.manual_seed(0)
generator = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
discriminator = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.LeakyReLU(0.2), torch.nn.Linear(16, 1))
g_optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
bce = torch.nn.BCEWithLogitsLoss()
for _ in range(25):
    real = torch.randn(32, 2) * 0.5 + 2.0
    fake = generator(torch.randn(32, 4))
    d_optimizer.zero_grad()
    d_loss = bce(discriminator(real), torch.ones(32, 1)) + bce(discriminator(fake.detach()), torch.zeros(32, 1))
    d_loss.backward()
    torch.nn.utils.clip_grad_value_(discriminator.parameters(), 0.1)
    d_optimizer.step()
    g_optimizer.zero_grad()
    g_loss = bce(discriminator(fake), torch.ones(32, 1))
    g_loss.backward()
    g_optimizer.step()
