"""Deep fully connected networks in NumPy, for the demo and the detection benchmark: forward and backward
by hand, in the architectures the classic remedies for vanishing and exploding
gradients call for. Normalisation runs through gg.layer_norm.

Hidden layer l maps h to h' (z = h W_l^T + b_l, act the activation):

    plain        h' = act(z)
    residual     h' = h + act(z)                       (when the widths match)
    layer_norm   h' = act(LN(z))            batch_norm   h' = act(BN(z))
    preln        h' = h + act(LN(h)) W_l^T + b_l       (pre-LN residual; a
                 branch's weights start scaled by 1/sqrt(L), so the sum of L
                 branches keeps the signal's variance)
    highway      h' = h + T (act(z) - h),   T = sigmoid(h G_l^T + c_l)
                 (Srivastava et al., 2015: the gate bias c starts negative, so
                 each layer starts close to the identity)

The first hidden layer (input width != hidden width) is act(z) in every
architecture (the older flag spelling aside): it cannot add h, and normalising it would throw away the scale
of the input (LN of W x is the same for x and 2x, so 2-D points would lose
their radius). A final linear layer gives the logits; the loss
is softmax cross-entropy. Batch norm normalises each feature over the batch
(gg.layer_norm on the transposed pre-activations) and keeps running averages
for evaluation."""

from __future__ import annotations

import numpy as np

from .. import init
from ..norm import layer_norm, layer_norm_backward
from .activations import sigmoid

LEAKY_SLOPE = 0.01

ACTIVATIONS = {
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z, a: a * (1.0 - a)),
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(z.dtype)),
    "leaky_relu": (
        lambda z: np.where(z > 0, z, z * LEAKY_SLOPE),
        lambda z, a: np.where(z > 0, 1.0, LEAKY_SLOPE).astype(z.dtype),
    ),
}

ARCHITECTURES = ("plain", "residual", "preln", "highway", "layer_norm", "batch_norm")

HIGHWAY_GATE_BIAS = -2.0
BATCH_NORM_MOMENTUM = 0.1
_EPS = 1e-5


class MLP:
    """widths: input, hidden..., classes. `residual` and `use_layer_norm` are the
    older spelling of the architecture (both together: post-LN residual,
    h' = h + act(LN(z))); that spelling normalises the first layer too, as the
    detection benchmark's runs were built."""

    def __init__(
        self, widths, activation="relu", residual=False, use_layer_norm=False, dtype=np.float32, architecture=None
    ):
        if architecture is not None and architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
        self.widths = list(widths)
        self.activation = activation
        self.architecture = architecture
        self.residual = residual or architecture == "residual"
        self.use_layer_norm = use_layer_norm or architecture == "layer_norm"
        self.use_batch_norm = architecture == "batch_norm"
        self.normalise_first_layer = bool(use_layer_norm) and architecture is None
        count = len(self.widths) - 1
        self.weights = [np.zeros((self.widths[i + 1], self.widths[i]), dtype) for i in range(count)]
        self.biases = [np.zeros(self.widths[i + 1], dtype) for i in range(count)]
        # Highway gates and batch-norm running statistics, for the layers that have them.
        self.gate_weights = {i: np.zeros_like(self.weights[i]) for i in self._layers_that("highway")}
        self.gate_biases = {i: np.zeros_like(self.biases[i]) for i in self._layers_that("highway")}
        self.running = {
            i: (np.zeros(self.widths[i + 1]), np.ones(self.widths[i + 1])) for i in range(count - 1)
        } if self.use_batch_norm else {}  # fmt: skip

    def _layers_that(self, architecture):
        """Hidden layers that take the given skip form (their input width matches)."""
        if self.architecture != architecture:
            return []
        return [i for i in range(len(self.weights) - 1) if self.widths[i] == self.widths[i + 1]]

    def _kind(self, index):
        if self.architecture in ("preln", "highway") and self.widths[index] == self.widths[index + 1]:
            return self.architecture
        return "post"

    def initialise(self, scheme, rng, depth=None):
        """Fill the weights (biases 0) by a named scheme, the last layer linear:
        "normal0.01" N(0, 0.01); "xavier" Xavier normal with the activation's gain;
        "he" Kaiming normal (fan_in, for the activation when it is a ReLU, else for
        ReLU); "he_scaled" He with the hidden layers after the first divided by
        sqrt(depth) (residual branches: the sum of L branches keeps unit variance);
        "orthogonal" orthogonal with the activation's gain. Pre-LN branches are
        always scaled by 1/sqrt(depth); highway gates get Xavier weights and
        bias HIGHWAY_GATE_BIAS."""
        depth = len(self.weights) - 1 if depth is None else depth
        leaky = self.activation == "leaky_relu"
        for index, weight in enumerate(self.weights):
            last = index == len(self.weights) - 1
            gain = init.calculate_gain(self.activation) if not last else 1.0
            if scheme == "normal0.01":
                init.normal_(weight, 0.0, 0.01, rng)
            elif scheme == "xavier":
                init.xavier_normal_(weight, gain, rng)
            elif scheme in ("he", "he_scaled"):
                nonlinearity = "linear" if last else ("leaky_relu" if leaky else "relu")
                init.kaiming_normal_(weight, LEAKY_SLOPE if leaky else 0.0, "fan_in", nonlinearity, rng)
                if scheme == "he_scaled" and not last and index > 0:
                    weight /= np.sqrt(depth)
            elif scheme == "orthogonal":
                init.orthogonal_(weight, gain, rng)
            else:
                raise ValueError(f"unknown initialisation scheme {scheme!r}")
            if not last and self._kind(index) == "preln" and scheme != "he_scaled":
                weight /= np.sqrt(depth)
        for index, gate in self.gate_weights.items():
            init.xavier_normal_(gate, 1.0, rng)
            self.gate_biases[index][...] = HIGHWAY_GATE_BIAS

    def parameters(self):
        """dict name -> array, in layer order (weights and biases; gate_weight and
        gate_bias for highway layers)."""
        named = {}
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            named[f"layer{index:03d}.weight"] = weight
            named[f"layer{index:03d}.bias"] = bias
            if index in self.gate_weights:
                named[f"layer{index:03d}.gate_weight"] = self.gate_weights[index]
                named[f"layer{index:03d}.gate_bias"] = self.gate_biases[index]
        return named

    def pre_activations(self, x):
        """Each hidden layer's z (after the normalisation when used), for LSUV and inspection."""
        return self._forward(x)[1]

    # -- forward -----------------------------------------------------------------------------
    def _normalise(self, z, index, training):
        """(normalised z, what the backward needs) for the post-activation layers."""
        if self.widths[index] != self.widths[index + 1] and not self.normalise_first_layer:
            return z, None
        if self.use_layer_norm:
            normalised, mean, rstd = layer_norm(z, eps=_EPS, return_stats=True)
            return normalised, ("layer", z, mean, rstd)
        if self.use_batch_norm:
            running_mean, running_var = self.running[index]
            if not training:
                return ((z - running_mean) / np.sqrt(running_var + _EPS)).astype(z.dtype), None
            features_by_batch = np.ascontiguousarray(z.T)
            normalised, mean, rstd = layer_norm(features_by_batch, eps=_EPS, return_stats=True)
            rows = z.shape[0]
            variance = (1.0 / np.square(rstd.astype(np.float64)) - _EPS) * rows / max(rows - 1, 1)
            running_mean *= 1.0 - BATCH_NORM_MOMENTUM
            running_mean += BATCH_NORM_MOMENTUM * mean
            running_var *= 1.0 - BATCH_NORM_MOMENTUM
            running_var += BATCH_NORM_MOMENTUM * variance
            return normalised.T, ("batch", features_by_batch, mean, rstd)
        return z, None

    def _forward(self, x, training=True):
        act, _ = ACTIVATIONS[self.activation]
        cache, outputs, h = [], [], x
        for index, (weight, bias) in enumerate(zip(self.weights[:-1], self.biases[:-1])):
            kind = self._kind(index)
            if kind == "preln":
                u, mean, rstd = layer_norm(h, eps=_EPS, return_stats=True)
                a = act(u)
                z = a @ weight.T + bias
                outputs.append(z)
                cache.append((kind, h, u, a, (mean, rstd)))
                h = h + z
            elif kind == "highway":
                z = h @ weight.T + bias
                a = act(z)
                gate = sigmoid(h @ self.gate_weights[index].T + self.gate_biases[index])
                outputs.append(z)
                cache.append((kind, h, z, a, gate))
                h = h + gate * (a - h)
            else:
                z = h @ weight.T + bias
                z, stats = self._normalise(z, index, training)
                a = act(z)
                outputs.append(z)
                cache.append((kind, h, z, a, stats))
                h = h + a if self.residual and h.shape == a.shape else a
        logits = h @ self.weights[-1].T + self.biases[-1]
        return logits, outputs, cache, h

    # -- backward ----------------------------------------------------------------------------
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
        grads = {}
        grads[len(self.weights) - 1] = (d_logits.T @ h_last, d_logits.sum(axis=0))
        d_h = d_logits @ self.weights[-1]
        _, act_grad = ACTIVATIONS[self.activation]
        for index in range(len(self.weights) - 2, -1, -1):
            kind, h, z, a, saved = cache[index]
            weight = self.weights[index]
            if kind == "preln":
                u, (mean, rstd) = z, saved
                grads[index] = (d_h.T @ a, d_h.sum(axis=0))
                d_u = (d_h @ weight) * act_grad(u, a)
                d_h = d_h + layer_norm_backward(d_u.astype(h.dtype), h, mean, rstd)[0]
            elif kind == "highway":
                gate = saved
                d_z = d_h * gate * act_grad(z, a)
                d_gate_z = d_h * (a - h) * gate * (1.0 - gate)
                grads[index] = (d_z.T @ h, d_z.sum(axis=0), d_gate_z.T @ h, d_gate_z.sum(axis=0))
                d_h = d_h * (1.0 - gate) + d_z @ weight + d_gate_z @ self.gate_weights[index]
            else:
                d_a = d_h
                d_z = d_a * act_grad(z, a)
                if saved is not None:
                    d_z = self._normalise_backward(d_z, saved)
                grads[index] = (d_z.T @ h, d_z.sum(axis=0))
                d_h = d_z @ weight
                if self.residual and h.shape == a.shape:
                    d_h = d_h + d_a
        named = {}
        for index in range(len(self.weights)):
            dtype = self.weights[index].dtype
            named[f"layer{index:03d}.weight"] = np.ascontiguousarray(grads[index][0], dtype=dtype)
            named[f"layer{index:03d}.bias"] = np.ascontiguousarray(grads[index][1], dtype=dtype)
            if index in self.gate_weights:
                named[f"layer{index:03d}.gate_weight"] = np.ascontiguousarray(grads[index][2], dtype=dtype)
                named[f"layer{index:03d}.gate_bias"] = np.ascontiguousarray(grads[index][3], dtype=dtype)
        return loss, accuracy, named

    @staticmethod
    def _normalise_backward(d_normalised, saved):
        kind, normalised_input, mean, rstd = saved
        if kind == "layer":
            return layer_norm_backward(d_normalised.astype(normalised_input.dtype), normalised_input, mean, rstd)[0]
        d_features_by_batch = np.ascontiguousarray(d_normalised.T, dtype=normalised_input.dtype)
        return layer_norm_backward(d_features_by_batch, normalised_input, mean, rstd)[0].T

    def evaluate_loss(self, x, labels):
        """(mean cross-entropy, accuracy) on (x, labels), in evaluation mode."""
        logits = self._forward(x, training=False)[0].astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = float(-np.mean(log_probabilities[np.arange(len(labels)), labels]))
        return loss, float(np.mean(np.argmax(logits, axis=1) == labels))
