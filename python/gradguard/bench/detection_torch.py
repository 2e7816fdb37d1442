"""The detection corpus's torch-built runs (used when torch is installed): an
LSTM on the adding problem, a small CNN, a 2-layer pre-LN transformer, and a
vanilla tanh RNN whose recurrent spectral radius is 3 (exploding from step 0);
a mixture of experts whose last expert gets its first token at step 40, a
CNN whose frozen convolutions are unfrozen at step 60, a transformer whose
attention output turns NaN at one step, a CNN whose loss turns NaN at one step,
a Wasserstein GAN with weight clipping (its critic's loss negative by design), and an MLP trained under a GradScaler
whose overflows (routine, skipped) recur as its scale grows back.
torch computes the gradients; gradguard's optimiser updates the parameters in
place through NumPy views (torch's Adam and GradScaler for the scaled run, fed
through GradGuardHook), and the monitor reads the gradients by name; a
parameter without a gradient at a step is left out of it (allow_missing)."""

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


class _Experts(torch.nn.Module):
    """Top-1 mixture of experts; tokens go to expert (argmax of a fixed projection)
    % available, and `available` grows from 3 to 4 at step 40 (a new expert's first token)."""

    def __init__(self, width=16, experts=4):
        super().__init__()
        self.embed = torch.nn.Linear(8, width)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(experts))
        self.head = torch.nn.Linear(width, 2)
        self.register_buffer("route", torch.randn(8, experts))
        self.available = experts - 1

    def forward(self, x):
        hidden = torch.relu(self.embed(x))
        choice = (x @ self.route).argmax(1) % self.available
        mixed = torch.zeros_like(hidden)
        for index in range(self.available):
            chosen = choice == index
            if chosen.any():
                mixed = mixed + chosen[:, None] * torch.relu(self.experts[index](hidden))
        return self.head(hidden + mixed)


class _Poisoned(torch.nn.Module):
    """Passes through, except at one step, when it writes a NaN (a division by zero in a forward)."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        return x / torch.zeros_like(x[..., :1]) * 0.0 if self.armed else x


class _WGAN(torch.nn.Module):
    """A Wasserstein GAN on 2-d points: a generator and a critic whose weights are
    clipped to [-0.01, 0.01] after each of its steps (Arjovsky et al. 2017)."""

    def __init__(self):
        super().__init__()
        self.generator = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        self.critic = torch.nn.Sequential(
            torch.nn.Linear(2, 32),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Linear(32, 32),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Linear(32, 1),
        )


# The data the WGAN learns: points around this centre.
WGAN_CENTRE = (2.0, -1.0)


def _real_points(generator, batch):
    return torch.randn(batch, 2, generator=generator) * 0.3 + torch.tensor(WGAN_CENTRE), None


def linear_teacher(generator, batch):
    """(inputs (batch, 8), labels): the sign of a fixed linear function of Gaussian inputs."""
    inputs = torch.randn(batch, 8, generator=generator)
    return inputs, (inputs @ torch.linspace(-1.0, 1.0, 8) > 0).long()


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
        module = _Transformer()
        if spec.sickness == "nan_forward":
            module.poison = _Poisoned()
            module.encoder.layers[0].register_forward_hook(lambda layer, args, out: module.poison(out))
        return module, lambda: token_counts(generator, 64), torch.nn.functional.cross_entropy
    if spec.model == "moe":
        return _Experts(), lambda: linear_teacher(generator, 64), torch.nn.functional.cross_entropy
    if spec.model in ("frozen_cnn",):
        module = build(_replace_model(spec, "cnn"), seed)[0]
        return module, lambda: quadrant_images(generator, 64), torch.nn.functional.cross_entropy
    if spec.model == "wgan":
        return _WGAN(), lambda: _real_points(generator, 64), None
    if spec.model == "scaled":
        module = torch.nn.Sequential(
            torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
        )
        return module, lambda: linear_teacher(generator, 64), torch.nn.functional.cross_entropy
    radius = 3.0 if spec.sickness == "rnn_exploding" else None
    module = _Recurrent(spec.model, 32, radius)
    rng = np.random.default_rng(seed)

    def adding_batch():
        inputs, targets = adding_problem(64, spec.width, rng)  # time-major, as the NumPy networks take it
        return torch.from_numpy(inputs.transpose(1, 0, 2).copy()), torch.from_numpy(targets[:, None])

    return module, adding_batch, torch.nn.functional.mse_loss


def _replace_model(spec, model):
    import dataclasses

    return dataclasses.replace(spec, model=model)


# The frozen CNN's convolutions get gradients from this step on; the MoE's last expert its first token.
UNFREEZE_STEP = 60
NEW_EXPERT_STEP = 40


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
        if spec.model == "frozen_cnn":
            for name, parameter in named:
                parameter.requires_grad_(not name.startswith(("0.", "2.")))
        self.hook = None
        if spec.model == "wgan":
            # RMSprop as in the paper; the critic steps every step, the generator every 5th
            self.critic_optimiser = torch.optim.RMSprop(self.module.critic.parameters(), lr=spec.lr)
            self.generator_optimiser = torch.optim.RMSprop(self.module.generator.parameters(), lr=spec.lr)
            self.noise = torch.Generator().manual_seed(spec.seed + 7)
        if spec.model == "scaled":  # torch's optimiser and GradScaler, the monitor fed by GradGuardHook
            from ..torch import GradGuardHook

            self.torch_optimiser = torch.optim.Adam(self.parameters, lr=spec.lr)
            # A scale too large for float16 at first, and each growth back (every 25
            # good steps) overflows again: routine, skipped steps.
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=25)
            self.hook = GradGuardHook(self.module, self.monitor, optimizer=self.torch_optimiser, scaler=self.scaler)

    def step(self, step):
        spec = self.spec
        if spec.model == "moe":
            self.module.available = 4 if step >= NEW_EXPERT_STEP else 3
        if spec.model == "frozen_cnn" and step == UNFREEZE_STEP:
            for parameter in self.parameters:
                parameter.requires_grad_(True)
        if spec.sickness == "nan_forward":
            self.module.poison.armed = step == spec.onset
        inputs, targets = self.batch()
        for parameter in self.parameters:
            parameter.grad = None
        if spec.model == "wgan":
            self._wgan_step(step, inputs)
            return
        # The scaled run computes in float16 (CPU autocast), as fp16 training does: its
        # backward overflows whenever the scale has grown too far.
        with torch.autocast("cpu", dtype=torch.float16, enabled=self.hook is not None):
            output = self.module(inputs)
        loss = self.loss_of(output.float(), targets)
        if spec.sickness == "nan_loss" and step == spec.onset:
            loss = loss * torch.log(torch.tensor(-1.0))  # a NaN born in the loss, after every module
        if self.hook is not None:
            self._scaled_step(step, loss)
            return
        loss.backward()
        grads = {name: p.grad.numpy() for name, p in zip(self.names, self.parameters) if p.grad is not None}
        self.record.losses.append(float(loss.detach()))
        self.record.norms.append(
            [
                float(np.linalg.norm(grads[name].astype(np.float64))) if name in grads else np.nan
                for name in self.record.layers
            ]
        )
        report = None
        if all(np.all(np.isfinite(g)) for g in grads.values()):
            # gradguard's optimiser steps every parameter: one without a gradient this step gets zeros
            full = {name: grads.get(name, np.zeros_like(value)) for name, value in self.params.items()}
            report = self.optimiser.step(full, return_report=True)
        self.record.findings.extend(
            self.monitor.update(grads, step=step, step_report=report, loss=float(loss.detach()), allow_missing=True)
        )

    def _wgan_step(self, step, real):
        """A critic step (its weights clipped after), and every 5th step a generator
        step; the monitor gets the step's gradients (the generator's on its steps
        only: allow_missing) and the critic's loss, which is negative by design."""
        module = self.module
        fake = module.generator(torch.randn(64, 4, generator=self.noise))
        critic_loss = module.critic(fake.detach()).mean() - module.critic(real).mean()
        critic_loss.backward()
        if step % 5 == 4:
            (-module.critic(fake).mean()).backward(inputs=list(module.generator.parameters()))
        grads = {name: p.grad.numpy().copy() for name, p in zip(self.names, self.parameters) if p.grad is not None}
        self.critic_optimiser.step()
        with torch.no_grad():
            for parameter in module.critic.parameters():
                parameter.clamp_(-0.01, 0.01)
        if step % 5 == 4:
            self.generator_optimiser.step()
        loss = float(critic_loss.detach())
        self.record.losses.append(loss)
        with torch.no_grad():
            sample = module.generator(torch.randn(256, 4, generator=torch.Generator().manual_seed(0)))
        self.record.progress.append(float((sample.mean(0) - torch.tensor(WGAN_CENTRE)).norm()))
        self.record.norms.append(
            [
                float(np.linalg.norm(grads[name].astype(np.float64))) if name in grads else np.nan
                for name in self.record.layers
            ]
        )
        self.record.findings.extend(self.monitor.update(grads, step=step, loss=loss, allow_missing=True))

    def _scaled_step(self, step, loss):
        count = len(self.monitor.findings)
        self.torch_optimiser.zero_grad(set_to_none=False)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.torch_optimiser)  # unscales in place; skips the step when they overflowed
        self.scaler.update()
        self.record.losses.append(float(loss.detach()))
        norms = [float(np.linalg.norm(p.grad.numpy().astype(np.float64))) for p in self.parameters]
        if not all(np.isfinite(norms)):
            self.record.skipped.append(step)
        self.record.norms.append(norms)
        self.record.findings.extend(self.monitor.findings[count:])

    def affected(self):
        if self.spec.sickness in ("nan_forward", "nan_loss"):
            norms = np.asarray(self.record.norms)
            return tuple(i for i in range(len(self.record.layers)) if not np.isfinite(norms[self.spec.onset, i]))
        if self.spec.sickness == "rnn_exploding":
            # every recurrent tensor: the exploding product of Jacobians reaches all of them
            return tuple(i for i, name in enumerate(self.record.layers) if name.startswith("recurrent."))
        return ()
