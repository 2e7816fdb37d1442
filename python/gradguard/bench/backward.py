"""Backward + clip + AdamW on a real torch model with gpt2-small's parameters:
torch (clip_grad_norm_ then AdamW(fused=True)) against gradguard (the norm
taken during backward by BackwardNorm, the clip folded into gg.optim's fused
AdamW step, which then reads each gradient once)."""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as functional

import gradguard as gg
from gradguard.torch import BackwardNorm

from .workloads import workload_shapes


class GPT2Shaped(torch.nn.Module):
    """GPT-2 small's architecture with its exact parameters (names and shapes as
    in the gpt2-small workload: Conv1D weights stored in x out, the output
    projection tied to wte). Weights as GPT-2 initialises them (normal, 0.02)."""

    def __init__(self, layers=12, width=768, heads=12, vocabulary=50257, positions=1024, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.heads = heads

        def parameter(*shape, fill=None):
            values = torch.full(shape, fill) if fill is not None else torch.randn(*shape, generator=generator) * 0.02
            return torch.nn.Parameter(values)

        self.wte = parameter(vocabulary, width)
        self.wpe = parameter(positions, width)
        self.h = torch.nn.ModuleList()
        for _ in range(layers):
            block = torch.nn.Module()
            block.ln_1 = torch.nn.LayerNorm(width)
            block.attn = torch.nn.Module()
            block.attn.c_attn_weight = parameter(width, 3 * width)
            block.attn.c_attn_bias = parameter(3 * width, fill=0.0)
            block.attn.c_proj_weight = parameter(width, width)
            block.attn.c_proj_bias = parameter(width, fill=0.0)
            block.ln_2 = torch.nn.LayerNorm(width)
            block.mlp = torch.nn.Module()
            block.mlp.c_fc_weight = parameter(width, 4 * width)
            block.mlp.c_fc_bias = parameter(4 * width, fill=0.0)
            block.mlp.c_proj_weight = parameter(4 * width, width)
            block.mlp.c_proj_bias = parameter(width, fill=0.0)
            self.h.append(block)
        self.ln_f = torch.nn.LayerNorm(width)

    def named_gpt2_parameters(self):
        """(name, tensor) in the workload's order and naming (c_attn.weight, not c_attn_weight)."""
        for name, tensor in self.named_parameters():
            yield name.replace("_weight", ".weight").replace("_bias", ".bias"), tensor

    def forward(self, tokens):
        batch, length = tokens.shape
        x = self.wte[tokens] + self.wpe[:length]
        for block in self.h:
            attn = block.attn
            q, k, v = torch.addmm(attn.c_attn_bias, block.ln_1(x).flatten(0, 1), attn.c_attn_weight).chunk(3, dim=-1)
            q, k, v = (t.reshape(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            y = (
                functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                .transpose(1, 2)
                .reshape(batch * length, -1)
            )
            x = x + torch.addmm(attn.c_proj_bias, y, attn.c_proj_weight).view_as(x)
            mlp = block.mlp
            hidden = functional.gelu(
                torch.addmm(mlp.c_fc_bias, block.ln_2(x).flatten(0, 1), mlp.c_fc_weight), approximate="tanh"
            )
            x = x + torch.addmm(mlp.c_proj_bias, hidden, mlp.c_proj_weight).view_as(x)
        return self.ln_f(x) @ self.wte.T

    def loss(self, tokens):
        logits = self(tokens[:, :-1])
        return functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def check_shapes(model):
    """The model's parameters are gpt2-small's, name for name and shape for shape."""
    expected = [(name, tuple(shape)) for name, shape in workload_shapes("gpt2-small")]
    actual = [(name, tuple(tensor.shape)) for name, tensor in model.named_gpt2_parameters()]
    if actual != expected:
        raise AssertionError("the model's parameters differ from the gpt2-small workload's")


def measure(batch=4, length=64, rounds=5, max_norm=1.0, lr=1e-4, seed=0):
    """Median seconds of backward, and of clip + step, for torch and for
    gradguard, alternating the two every round (same data, same start)."""
    torch_model = GPT2Shaped(seed=seed)
    check_shapes(torch_model)
    ours = copy.deepcopy(torch_model)
    torch_optimizer = torch.optim.AdamW(torch_model.parameters(), lr=lr, fused=True)
    tracker = BackwardNorm(list(ours.named_gpt2_parameters()))
    our_optimizer = gg.optim.AdamW(
        {name: tensor.detach().numpy() for name, tensor in tracker.named}, lr=lr, max_grad_norm=max_norm
    )
    generator = torch.Generator().manual_seed(seed + 1)
    times = {key: [] for key in ("torch backward", "torch clip+step", "gradguard backward", "gradguard clip+step")}
    norms = []
    for _ in range(rounds + 1):  # the first round warms up (allocations, optimiser state)
        tokens = torch.randint(0, 50257, (batch, length + 1), generator=generator)
        torch_model.zero_grad(set_to_none=True)
        loss = torch_model.loss(tokens)
        start = time.perf_counter()
        loss.backward()
        middle = time.perf_counter()
        torch_norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), max_norm)
        torch_optimizer.step()
        end = time.perf_counter()
        times["torch backward"].append(middle - start)
        times["torch clip+step"].append(end - middle)

        ours.zero_grad(set_to_none=True)
        loss = ours.loss(tokens)
        start = time.perf_counter()
        loss.backward()
        middle = time.perf_counter()
        report = tracker.step(our_optimizer, return_report=True)
        end = time.perf_counter()
        times["gradguard backward"].append(middle - start)
        times["gradguard clip+step"].append(end - middle)
        norms.append((float(torch_norm), report.grad_norm))
    tracker.remove()
    medians = {key: statistics.median(values[1:]) for key, values in times.items()}
    first_round = abs(norms[0][0] - norms[0][1]) / norms[0][0]
    weights = max(
        float((a.detach() - b.detach()).abs().max()) for a, b in zip(torch_model.parameters(), ours.parameters())
    )
    return medians, {"first_norm_relative_difference": first_round, "max_weight_difference": weights, "norms": norms}


def format_measurement(medians, agreement, batch, length):
    grads = sum(int(np.prod(shape)) for _, shape in workload_shapes("gpt2-small"))
    lines = [
        f"gpt2-small-shaped transformer (124.4M parameters, float32), batch {batch} x {length} tokens, "
        f"{torch.get_num_threads()} torch threads, {gg.get_num_threads()} gradguard threads; median of rounds",
        "",
        "| | backward | clip + AdamW step |",
        "|---|---:|---:|",
        f"| torch: clip_grad_norm_ + AdamW(fused=True) | {medians['torch backward'] * 1e3:.0f} ms "
        f"| {medians['torch clip+step'] * 1e3:.1f} ms |",
        f"| gradguard: BackwardNorm + gg.optim.AdamW(max_grad_norm) | {medians['gradguard backward'] * 1e3:.0f} ms "
        f"| {medians['gradguard clip+step'] * 1e3:.1f} ms |",
        f"| gradguard / torch | {medians['gradguard backward'] / medians['torch backward']:.3f}x "
        f"| {medians['torch clip+step'] / medians['gradguard clip+step']:.2f}x faster |",
        "",
        f"clip + step moves {grads * 4 * 7 / 1e9:.2f} GB at the least (gradient read once; parameter, m, v read "
        "and written): "
        f"{grads * 28 / medians['gradguard clip+step'] / 1e9:.1f} GB/s for gradguard, "
        f"{grads * 28 / medians['torch clip+step'] / 1e9:.1f} GB/s-equivalent for torch.",
        f"Agreement: the first round's global norms within {agreement['first_norm_relative_difference']:.1e} "
        f"relative (float32 sums in torch, float64 in gradguard); weights after the rounds within "
        f"{agreement['max_weight_difference']:.1e}.",
    ]
    return "\n".join(lines)
