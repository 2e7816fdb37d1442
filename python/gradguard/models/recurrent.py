"""Recurrent networks in NumPy for the demo: a vanilla tanh RNN and an LSTM,
forward and backpropagation through time by hand, on the adding problem.

    RNN   h_t = tanh(x_t W_x^T + h_{t-1} W_h^T + b)
    LSTM  [i, f, g, o] = x_t W_x^T + h_{t-1} W_h^T + b
          c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)
          (the forget-gate bias starts at 1, Jozefowicz et al., 2015)
    both  y = h_T w_out^T + b_out,   loss = mean((y - target)^2)

Inputs are time-major: x has shape (T, batch, features). Besides the
gradients, the backward pass returns ||dL/dx_t|| for every step t: how much
the loss still hears of the input T - t steps back, the quantity that
vanishes (or explodes) with distance."""

from __future__ import annotations

import numpy as np

from .. import init

CELLS = ("rnn", "lstm")
FORGET_BIAS = 1.0


class Recurrent:
    """cell: "rnn" or "lstm"; hidden: units. Parameters are float32 arrays
    named W_x, W_h, b, w_out, b_out (the LSTM's gate blocks are stacked in the
    order i, f, g, o)."""

    def __init__(self, cell, inputs, hidden, dtype=np.float32):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(CELLS)}")
        self.cell, self.hidden = cell, hidden
        rows = 4 * hidden if cell == "lstm" else hidden
        self.params = {
            "W_x": np.zeros((rows, inputs), dtype),
            "W_h": np.zeros((rows, hidden), dtype),
            "b": np.zeros(rows, dtype),
            "w_out": np.zeros((1, hidden), dtype),
            "b_out": np.zeros(1, dtype),
        }

    def initialise(self, rng, spectral_radius=1.0):
        """Xavier input and output weights; recurrent weights orthogonal times
        spectral_radius (per gate block for the LSTM), so every eigenvalue of the
        RNN's W_h has modulus spectral_radius; LSTM forget bias FORGET_BIAS."""
        p = self.params
        init.xavier_normal_(p["W_x"], 1.0, rng)
        init.xavier_normal_(p["w_out"], 1.0, rng)
        blocks = 4 if self.cell == "lstm" else 1
        for block in range(blocks):
            rows = slice(block * self.hidden, (block + 1) * self.hidden)
            square = np.zeros((self.hidden, self.hidden), p["W_h"].dtype)
            init.orthogonal_(square, spectral_radius, rng)
            p["W_h"][rows] = square
        p["b"][...] = 0.0
        p["b_out"][...] = 0.0
        if self.cell == "lstm":
            p["b"][self.hidden : 2 * self.hidden] = FORGET_BIAS

    def predict(self, x):
        return self._forward(x)[0]

    def _gate_constants(self, dtype):
        """The LSTM evaluates all four gates with one tanh: sigmoid(z) = (1 + tanh(z / 2)) / 2.
        Returns (scale, offset) per gate column: gate = tanh(pre * scale) * scale + offset,
        and d gate / d pre = (1 - tanh^2) * scale^2."""
        hidden = self.hidden
        scale = np.full(4 * hidden, 0.5, dtype)
        scale[2 * hidden : 3 * hidden] = 1.0
        offset = np.where(scale == 0.5, 0.5, 0.0).astype(dtype)
        return scale, offset

    def _forward(self, x):
        p, hidden = self.params, self.hidden
        steps, batch, _ = x.shape
        projected = (x.reshape(steps * batch, -1) @ p["W_x"].T + p["b"]).reshape(steps, batch, -1)
        recurrent = np.ascontiguousarray(p["W_h"].T)
        h = np.zeros((batch, hidden), x.dtype)
        c = np.zeros_like(h)
        states, saved = [h], []
        if self.cell == "lstm":
            scale, offset = self._gate_constants(x.dtype)
            slope = scale * scale
        for t in range(steps):
            pre = projected[t] + h @ recurrent
            if self.cell == "rnn":
                h = np.tanh(pre)
                saved.append(h)
            else:
                squashed = np.tanh(pre * scale)
                gates = squashed * scale + offset
                i, f = gates[:, :hidden], gates[:, hidden : 2 * hidden]
                g, o = gates[:, 2 * hidden : 3 * hidden], gates[:, 3 * hidden :]
                c_previous = c
                c = f * c + i * g
                tanh_c = np.tanh(c)
                h = o * tanh_c
                slopes = (1.0 - squashed * squashed) * slope
                saved.append((gates, slopes, c_previous, tanh_c))
            states.append(h)
        y = (h @ p["w_out"].T)[:, 0] + p["b_out"][0]
        return y, states, saved

    def loss_and_gradients(self, x, targets):
        """(mean squared error, dict name -> gradient, ||dL/dx_t|| for t = 0..T-1)."""
        p, hidden = self.params, self.hidden
        steps, batch, features = x.shape
        y, states, saved = self._forward(x)
        error = y - targets
        loss = float(np.mean(error * error))
        d_y = (2.0 / batch) * error
        grads = {"w_out": (d_y[None, :] @ states[-1]), "b_out": np.array([d_y.sum()])}
        d_h = d_y[:, None] * p["w_out"]
        d_c = np.zeros_like(d_h)
        d_pre = np.empty((steps, batch, p["W_h"].shape[0]), x.dtype)
        upstream = np.empty((batch, p["W_h"].shape[0]), x.dtype)
        for t in range(steps - 1, -1, -1):
            if self.cell == "rnn":
                h = saved[t]
                np.multiply(d_h, 1.0 - h * h, out=d_pre[t])
            else:
                gates, slopes, c_previous, tanh_c = saved[t]
                i, f = gates[:, :hidden], gates[:, hidden : 2 * hidden]
                g, o = gates[:, 2 * hidden : 3 * hidden], gates[:, 3 * hidden :]
                d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
                np.multiply(d_c, g, out=upstream[:, :hidden])
                np.multiply(d_c, c_previous, out=upstream[:, hidden : 2 * hidden])
                np.multiply(d_c, i, out=upstream[:, 2 * hidden : 3 * hidden])
                np.multiply(d_h, tanh_c, out=upstream[:, 3 * hidden :])
                np.multiply(upstream, slopes, out=d_pre[t])
                d_c = d_c * f
            d_h = d_pre[t] @ p["W_h"]
        flat = d_pre.reshape(steps * batch, -1)
        previous = np.stack(states[:-1]).reshape(steps * batch, hidden)
        grads["W_x"] = flat.T @ x.reshape(steps * batch, features)
        grads["W_h"] = flat.T @ previous
        grads["b"] = flat.sum(axis=0)
        d_x = (flat @ p["W_x"]).reshape(steps, batch, features)
        input_norms = np.sqrt(np.sum(d_x.astype(np.float64) ** 2, axis=(1, 2)))
        named = {name: np.ascontiguousarray(grads[name], dtype=p[name].dtype) for name in p}
        return loss, named, input_norms
