"""A deep fully connected network in NumPy, for the demo: forward and backward
by hand, optionally with residual connections and layer norm (gg.layer_norm).

Layer l: z = h W_l^T + b_l; z <- layer_norm(z) (optional); a = act(z);
h <- h + a (residual, optional, when widths match) or a. A final linear layer
gives the logits; the loss is softmax cross-entropy."""

from __future__ import annotations

import numpy as np

from .. import init
from ..norm import layer_norm, layer_norm_backward

ACTIVATIONS = {
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z, a: a * (1.0 - a)),
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(z.dtype)),
}


class MLP:
    def __init__(self, widths, activation="relu", residual=False, use_layer_norm=False, dtype=np.float32):
        self.widths = list(widths)  # input, hidden..., classes
        self.activation = activation
        self.residual = residual
        self.use_layer_norm = use_layer_norm
        self.weights = [np.zeros((self.widths[i + 1], self.widths[i]), dtype) for i in range(len(self.widths) - 1)]
        self.biases = [np.zeros(self.widths[i + 1], dtype) for i in range(len(self.widths) - 1)]

    def initialise(self, scheme, rng, depth=None):
        """Fill the weights (biases stay 0) by a named scheme, the last layer linear:
        "normal0.01" N(0, 0.01); "xavier" Xavier normal with the activation's gain;
        "he" Kaiming normal; "he_scaled" He with the hidden layers after the first
        divided by sqrt(depth) (residual branches: the sum of L branches keeps unit
        variance); "orthogonal" orthogonal with the activation's gain."""
        depth = len(self.weights) - 1 if depth is None else depth
        for index, weight in enumerate(self.weights):
            last = index == len(self.weights) - 1
            gain = init.calculate_gain(self.activation) if not last else 1.0
            if scheme == "normal0.01":
                init.normal_(weight, 0.0, 0.01, rng)
            elif scheme == "xavier":
                init.xavier_normal_(weight, gain, rng)
            elif scheme in ("he", "he_scaled"):
                init.kaiming_normal_(weight, 0.0, "fan_in", "relu" if not last else "linear", rng)
                if scheme == "he_scaled" and not last and index > 0:
                    weight /= np.sqrt(depth)
            elif scheme == "orthogonal":
                init.orthogonal_(weight, gain, rng)
            else:
                raise ValueError(f"unknown initialisation scheme {scheme!r}")

    def parameters(self):
        """dict name -> array, in layer order (weights and biases)."""
        named = {}
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            named[f"layer{index:03d}.weight"] = weight
            named[f"layer{index:03d}.bias"] = bias
        return named

    def pre_activations(self, x):
        """Each hidden layer's z (after layer norm when used), for LSUV and inspection."""
        return self._forward(x)[1]

    def _forward(self, x):
        act, _ = ACTIVATIONS[self.activation]
        cache, outputs, h = [], [], x
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            z = h @ weight.T + bias
            stats = None
            if self.use_layer_norm:
                z, mean, rstd = layer_norm(z, return_stats=True)
                stats = (h @ weight.T + bias, mean, rstd)
            a = act(z)
            outputs.append(z)
            cache.append((h, z, a, stats))
            h = h + a if self.residual and h.shape == a.shape else a
        logits = h @ self.weights[-1].T + self.biases[-1]
        return logits, outputs, cache, h

    def loss_and_gradients(self, x, labels):
        """(mean cross-entropy, accuracy, dict name -> gradient)."""
        logits, _, cache, h_last = self._forward(x)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        batch = x.shape[0]
        loss = float(-np.mean(np.log(probabilities[np.arange(batch), labels] + 1e-12)))
        accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
        d_logits = probabilities
        d_logits[np.arange(batch), labels] -= 1.0
        d_logits /= batch
        grads_w = [None] * len(self.weights)
        grads_b = [None] * len(self.biases)
        grads_w[-1] = d_logits.T @ h_last
        grads_b[-1] = d_logits.sum(axis=0)
        d_h = d_logits @ self.weights[-1]
        _, act_grad = ACTIVATIONS[self.activation]
        for index in range(len(self.weights) - 2, -1, -1):
            h, z, a, stats = cache[index]
            d_a = d_h
            d_z = d_a * act_grad(z, a)
            if stats is not None:
                z_raw, mean, rstd = stats
                d_z = layer_norm_backward(d_z.astype(z_raw.dtype), z_raw, mean, rstd)[0]
            grads_w[index] = d_z.T @ h
            grads_b[index] = d_z.sum(axis=0)
            d_h = d_z @ self.weights[index]
            if self.residual and h.shape == a.shape:
                d_h = d_h + d_a
        grads = {}
        for index in range(len(self.weights)):
            grads[f"layer{index:03d}.weight"] = np.ascontiguousarray(grads_w[index], dtype=self.weights[index].dtype)
            grads[f"layer{index:03d}.bias"] = np.ascontiguousarray(grads_b[index], dtype=self.biases[index].dtype)
        return loss, accuracy, grads

    def evaluate(self, x, labels):
        logits = self._forward(x)[0]
        return float(np.mean(np.argmax(logits, axis=1) == labels))


def two_spirals(points, noise=0.2, seed=0, turns=1.75):
    """Two interleaved spirals in 2-D (a classic task deep nets must bend space for)."""
    rng = np.random.default_rng(seed)
    half = points // 2
    angle = np.sqrt(rng.uniform(0, 1, half)) * turns * 2 * np.pi
    radius = angle / (turns * 2 * np.pi) * 2.0
    first = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    data = np.concatenate([first, -first]) + rng.normal(0, noise * 0.1, (2 * half, 2))
    labels = np.concatenate([np.zeros(half, np.int64), np.ones(half, np.int64)])
    order = rng.permutation(2 * half)
    return data[order].astype(np.float32), labels[order]
