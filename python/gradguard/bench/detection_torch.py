"""The detection corpus's torch-built runs (used when torch is installed): an
LSTM on the adding problem, a small CNN, a 2-layer pre-LN transformer, and a
vanilla tanh RNN whose recurrent spectral radius is 3 (exploding from step 0).
torch computes the gradients; gradguard's optimiser updates the parameters in
place through NumPy views, and the monitor reads the gradients by name."""

from __future__ import annotations

import numpy as np
import torch

from ..models import adding_problem
from ..optim import Adam


def quadrant_images(generator, batch, size=12):
    """(images (batch, 1, size, size), labels): a bright square in one of four quadrants, on noise."""
    labels = torch.randint(0, 4, (batch,), generator=generator)
    images = torch.randn(batch, 1, size, size, generator=generator) * 0.3
    half = size // 2
    for index, label in enumerate(labels.tolist()):
        row, column = divmod(label, 2)
        images[index, 0, row * half + 1 : row * half + half - 1, column * half + 1 : column * half + half - 1] += 1.0
    return images, labels


def token_counts(generator, batch, length=16, vocabulary=8):
    """(tokens (batch, length), labels): whether token 0 occurs more often than token 1."""
    tokens = torch.randint(0, vocabulary, (batch, length), generator=generator)
    labels = ((tokens == 0).sum(1) > (tokens == 1).sum(1)).long()
    return tokens, labels


class _Transformer(torch.nn.Module):
    def __init__(self, vocabulary=8, width=32, length=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocabulary, width)
        self.position = torch.nn.Parameter(torch.randn(length, width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, 2)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.position).mean(1))


class _Recurrent(torch.nn.Module):
    def __init__(self, kind, hidden, spectral_radius=None):
        super().__init__()
        cell = torch.nn.LSTM if kind == "lstm" else torch.nn.RNN
        self.recurrent = cell(2, hidden, batch_first=True)
        if spectral_radius is not None:
            with torch.no_grad():
                torch.nn.init.orthogonal_(self.recurrent.weight_hh_l0)
                self.recurrent.weight_hh_l0 *= spectral_radius
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, inputs):
        return self.head(self.recurrent(inputs)[0][:, -1])


def build(spec, seed):
    """(module, batch function step -> (inputs, targets), loss function) for a torch run."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if spec.model == "cnn":
        module = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(64, 4),
        )
        return module, lambda: quadrant_images(generator, 64), torch.nn.functional.cross_entropy
    if spec.model == "transformer":
        return _Transformer(), lambda: token_counts(generator, 64), torch.nn.functional.cross_entropy
    radius = 3.0 if spec.sickness == "rnn_exploding" else None
    module = _Recurrent(spec.model, 32, radius)
    rng = np.random.default_rng(seed)

    def adding_batch():
        inputs, targets = adding_problem(64, spec.width, rng)  # time-major, as the NumPy networks take it
        return torch.from_numpy(inputs.transpose(1, 0, 2).copy()), torch.from_numpy(targets[:, None])

    return module, adding_batch, torch.nn.functional.mse_loss


class TorchTraining:
    """One torch-built run in progress (the same interface as the NumPy runs' _Training)."""

    def __init__(self, spec, make_monitor, record):
        self.spec, self.record = spec, record
        self.module, self.batch, self.loss_of = build(spec, spec.seed)
        named = [(name, p) for name, p in self.module.named_parameters()]
        self.names = [name for name, _ in named]
        self.parameters = [p for _, p in named]
        # gradguard's optimiser on the parameters' memory, through NumPy views
        self.params = {name: p.data.numpy() for name, p in named}
        self.optimiser = Adam(self.params, lr=spec.lr)
        self.monitor = make_monitor(self.names)

    def step(self, step):
        inputs, targets = self.batch()
        for parameter in self.parameters:
            parameter.grad = None
        loss = self.loss_of(self.module(inputs), targets)
        loss.backward()
        grads = {name: p.grad.numpy() for name, p in zip(self.names, self.parameters)}
        self.record.losses.append(float(loss.detach()))
        self.record.norms.append([float(np.linalg.norm(grads[name].astype(np.float64))) for name in self.record.layers])
        report = None
        if all(np.all(np.isfinite(g)) for g in grads.values()):
            report = self.optimiser.step(grads, return_report=True)
        self.record.findings.extend(
            self.monitor.update(grads, step=step, step_report=report, loss=float(loss.detach()))
        )

    def affected(self):
        if self.spec.sickness == "rnn_exploding":
            # every recurrent tensor: the exploding product of Jacobians reaches all of them
            return tuple(i for i, name in enumerate(self.record.layers) if name.startswith("recurrent."))
        return ()
