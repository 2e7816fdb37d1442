"""JAX and Optax adapters: pytrees in, gradguard's statistics out, and Optax
gradient transformations that Optax does not have.

The reading functions take any pytree of arrays (jax.Array, NumPy) and name
each leaf by its tree path ("params/dense/kernel"). A jax.Array on the CPU is
read through np.asarray, which shares its memory (no copy); one on an
accelerator is reduced there with jax.numpy (leaf_stats: grad_stats' fields,
one small transfer). JAX arrays are immutable, so clipping returns a new tree
instead of writing in place.

Optax transformations (usable inside jax.jit):
- zclip(): ZClip's z-score clipping (Kumar et al., 2025), gg.ZClip's rule;
- autoclip(): AutoClip's percentile clipping (Seetharaman et al., 2020) over a
  fixed-size ring of past norms (jit needs a fixed shape);
- monitor_tap(monitor): feeds a gg.GradientMonitor from inside a jitted update,
  the statistics computed in the update and only they sent to the host
  (jax.debug.callback), the updates passed through unchanged.

Needs jax (and optax for the transformations): pip install "gradguard[jax]".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

try:
    import jax
    import jax.numpy as jnp
except ImportError as error:  # pragma: no cover - exercised only without jax
    raise ImportError('gradguard.jax needs JAX: pip install "gradguard[jax]"') from error

import numpy as np

from ._arguments import positive_int, real
from .clip import CLIP_EPS, clip_coefficient
from .clip import global_norm as _global_norm
from .stats import STATS_FIELDS, stats_from_columns
from .stats import grad_stats as _grad_stats

__all__ = [
    "path_name",
    "leaves_by_path",
    "global_norm",
    "grad_stats",
    "clip_by_global_norm",
    "clip_tree_by_global_norm",
    "monitor_update",
    "zclip",
    "autoclip",
    "monitor_tap",
    "leaf_stats",
    "LEAF_STATS_COLUMNS",
    "stats_from_table",
    "ZClipState",
    "AutoClipState",
    "MonitorTapState",
]


def _key_name(key):
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_name(path) -> str:
    """A tree path as "a/b/0" (dict keys, attribute names and sequence indices joined by /)."""
    return "/".join(_key_name(key) for key in path)


def _leaf_names(tree) -> list:
    """The leaves' tree paths as names, in tree order (refused when two coincide)."""
    names = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"two leaves have the tree path {repeated[0]!r} (a key holding '/' against a nested one?)")
    return names


def _on_cpu(leaf) -> bool:
    devices = getattr(leaf, "devices", None)
    return not callable(devices) or all(device.platform == "cpu" for device in devices())


def leaves_by_path(tree) -> dict:
    """{path name: NumPy array} for every leaf of a pytree, in tree order. jax.Array
    leaves on the CPU are shared, not copied (read-only views); leaves on another
    device are refused here (NumPy cannot view them): global_norm, grad_stats and
    monitor_update reduce those on their device instead."""
    _refuse_traced(tree, "leaves_by_path")
    names = _leaf_names(tree)
    named = {}
    for name, leaf in zip(names, jax.tree_util.tree_leaves(tree)):
        if not _on_cpu(leaf):
            raise ValueError(
                f"leaf {name!r} lives on {sorted(d.platform for d in leaf.devices())}: NumPy cannot view it "
                "(gradguard.jax.grad_stats and global_norm reduce it on its device; jax.device_get copies it)"
            )
        named[name] = np.asarray(leaf)
    return named


def _on_device(tree) -> bool:
    return not all(_on_cpu(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def _refuse_traced(tree, function):
    """The host functions read values; inside jit (grad, vmap) there are none yet:
    say so in gradguard's words rather than JAX's ConcretizationTypeError."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree)):
        raise TypeError(
            f"gradguard.jax.{function} reads the arrays' values on the host, so it cannot run inside jax.jit "
            "(or grad, vmap); inside jit use the Optax transformations clip_by_global_norm(max_norm), zclip(), "
            "autoclip() and monitor_tap(monitor), or leaf_stats(tree)"
        )


# The columns of leaf_stats' table: grad_stats' fields, in the core's order.
LEAF_STATS_COLUMNS = STATS_FIELDS


def leaf_stats(tree) -> jax.Array:
    """Per leaf, grad_stats' fields computed with jax.numpy (inside jit too, and
    on the leaves' devices; under jax.sharding, of the global arrays): a
    (leaves, len(LEAF_STATS_COLUMNS)) float32 table, rows in tree order.

        non-finite entries counted apart (n_nan, n_inf), n_zero, numel;
        over the finite x, with s = 2^-k and 2^k near max |x| (exact scaling, so
        that no square over- or underflows): l2 = ||x s|| / s, mean, std
        (population, two passes), abs_mean, min, max (NaN without finite x; l2 0)

    Accumulated in float32 (float64 with jax_enable_x64 and float64 leaves):
    equal to gg.grad_stats to float32 rounding."""
    rows = [_leaf_row(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    if not rows:
        return jnp.zeros((0, len(LEAF_STATS_COLUMNS)), jnp.float32)
    return jnp.stack(rows)


def _leaf_row(leaf):
    values = jnp.ravel(leaf)
    wide = jnp.promote_types(values.dtype, jnp.float32)
    values = values.astype(wide)
    finite = jnp.isfinite(values)
    count = jnp.sum(finite)
    kept = jnp.where(finite, values, 0.0)
    largest = jnp.max(jnp.abs(kept), initial=0.0)
    scale = jnp.exp2(-jnp.frexp(largest)[1].astype(wide))  # a power of two: exact
    scaled = kept * scale
    n = jnp.maximum(count, 1).astype(wide)
    mean_scaled = jnp.sum(scaled) / n
    deviation = jnp.where(finite, scaled - mean_scaled, 0.0)
    none = count == 0
    nan = jnp.asarray(jnp.nan, wide)
    fields = {
        "numel": jnp.asarray(values.size, wide),
        "mean": jnp.where(none, nan, mean_scaled / scale),
        "std": jnp.where(none, nan, jnp.sqrt(jnp.sum(deviation * deviation) / n) / scale),
        "abs_mean": jnp.where(none, nan, jnp.sum(jnp.abs(scaled)) / n / scale),
        "l2": jnp.sqrt(jnp.sum(scaled * scaled)) / scale,
        "min": jnp.where(none, nan, jnp.min(jnp.where(finite, values, jnp.inf), initial=jnp.inf)),
        "max": jnp.where(none, nan, jnp.max(jnp.where(finite, values, -jnp.inf), initial=-jnp.inf)),
        "n_nan": jnp.sum(jnp.isnan(values)).astype(wide),
        "n_inf": jnp.sum(jnp.isinf(values)).astype(wide),
        "n_zero": jnp.sum(values == 0).astype(wide),
    }
    return jnp.stack([fields[name] for name in LEAF_STATS_COLUMNS])


_COUNTS = ("numel", "n_nan", "n_inf", "n_zero")


def stats_from_table(table, names):
    """A GradStats from leaf_stats' table (NumPy, on the host)."""
    table = np.asarray(table, dtype=np.float64).reshape(-1, len(LEAF_STATS_COLUMNS))
    columns = {
        name: (np.rint(table[:, index]).astype(np.int64) if name in _COUNTS else table[:, index])
        for index, name in enumerate(LEAF_STATS_COLUMNS)
    }
    return stats_from_columns(columns, names)


_leaf_stats_jit = jax.jit(leaf_stats)


def global_norm(tree, ord=2.0) -> float:
    """gg.global_norm of every leaf of a pytree: (sum_i sum_j |leaf_i_j|^p)^(1/p).
    Leaves on an accelerator: the L2 norm from leaf_stats on their device (one
    small transfer), to float32 rounding; other orders need CPU leaves."""
    _refuse_traced(tree, "global_norm")
    if _on_device(tree):
        if real(ord, "ord") != 2.0:
            raise ValueError("global_norm of device arrays takes ord=2 (leaf_stats' l2); jax.device_get them first")
        return grad_stats(tree).global_norm
    return _global_norm(leaves_by_path(tree), ord)


def grad_stats(tree):
    """gg.grad_stats of a pytree's leaves, named by tree path: by gradguard's core
    on CPU leaves, by leaf_stats on their device otherwise (one small transfer)."""
    _refuse_traced(tree, "grad_stats")
    if _on_device(tree):
        return stats_from_table(jax.device_get(_leaf_stats_jit(tree)), _leaf_names(tree))
    return _grad_stats(leaves_by_path(tree))


def clip_tree_by_global_norm(tree, max_norm, eps=CLIP_EPS):
    """(clipped tree, norm before clipping), gg.clip_by_global_norm's rule
    (gg.clip_coefficient): leaf * min(1, max_norm / (norm + eps)) for every
    leaf, unchanged when that is 1; the norm and the coefficient are taken by
    gradguard's core on the shared CPU memory, the scaling by JAX (its arrays
    are immutable). Reads values on the host, so not inside jit: there,
    clip_by_global_norm(max_norm) is the transformation."""
    _refuse_traced(tree, "clip_tree_by_global_norm")
    max_norm = real(max_norm, "max_norm", low=0.0)
    eps = real(eps, "eps", low=0.0, allow_inf=False)
    norm = global_norm(tree)
    coefficient = clip_coefficient(max_norm, norm, eps)
    if coefficient == 1.0:
        return tree, norm
    return jax.tree_util.tree_map(lambda leaf: leaf * jnp.asarray(coefficient, leaf.dtype), tree), norm


def monitor_update(monitor, grads, step=None, *, allow_missing=False):
    """monitor.update with a pytree of gradients, layers named by tree path
    (leaves on an accelerator: their statistics from leaf_stats, on the device)."""
    _refuse_traced(grads, "monitor_update")
    if _on_device(grads):
        return monitor.update_stats(grad_stats(grads), step=step, allow_missing=allow_missing)
    return monitor.update(leaves_by_path(grads), step=step, allow_missing=allow_missing)


# ---- Optax transformations -------------------------------------------------------------


def _optax():
    try:
        import optax
    except ImportError:  # pragma: no cover - exercised only without optax
        raise ImportError('the Optax transformations need optax: pip install "gradguard[jax]"') from None
    return optax


def _tree_norm(updates):
    """The global L2 norm of a pytree inside a traced function, in float32: a
    jitted transformation cannot call the core (it has no values to read while
    tracing), so this one norm is JAX's own."""
    leaves = jax.tree_util.tree_leaves(updates)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def _safe_tree_norm(updates):
    """The global L2 norm of a pytree, traced, without overflow or underflow: each
    leaf scaled by the largest |value| of all before squaring (float32 at least;
    a float16 sum of squares overflows at a norm of 256)."""
    leaves = [leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)) for leaf in jax.tree_util.tree_leaves(updates)]
    if not leaves:
        return jnp.zeros([], jnp.float32)
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf), initial=0.0) for leaf in leaves]))
    scale = jnp.where(jnp.isfinite(largest) & (largest > 0), largest, 1.0)
    total = sum(jnp.sum(jnp.square(leaf / scale)) for leaf in leaves)
    return jnp.where(jnp.isfinite(largest), scale * jnp.sqrt(total), largest + total)


def clip_by_global_norm(max_norm, eps=0.0):
    """Optax's clip_by_global_norm as a GradientTransformation that runs under jit:

        updates * min(1, max_norm / (norm + eps)),  norm = ||updates||_2 over every leaf

    eps=0 (the default) is Optax's rule (updates * max_norm / max(norm,
    max_norm)); eps=gg.CLIP_EPS is torch's clip_grad_norm_'s. The norm is taken
    without overflow (leaves scaled by their largest |value| first), so float16
    and bfloat16 updates whose squares overflow clip as float32 ones would;
    a non-finite norm leaves the updates as they are (NaN stays visible). No
    state. clip_tree_by_global_norm is the eager function (the core's norm)."""
    optax = _optax()
    max_norm = real(max_norm, "max_norm", low=0.0)
    eps = real(eps, "eps", low=0.0, allow_inf=False)

    def update_fn(updates, state, params=None):
        del params
        norm = _safe_tree_norm(updates)
        factor = jnp.where(jnp.isfinite(norm), jnp.minimum(1.0, max_norm / (norm + eps)), 1.0)
        factor = jnp.where(norm == 0, 1.0, factor)
        return jax.tree_util.tree_map(lambda leaf: (leaf * factor).astype(leaf.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _scaled(updates, norm, threshold):
    """gg.ZClip's and gg.AutoClip's rule, traced: where norm > threshold, updates
    times gg.clip_coefficient(threshold, norm) = threshold / (norm + CLIP_EPS);
    unchanged otherwise."""
    factor = jnp.where(norm > threshold, threshold / (norm + CLIP_EPS), 1.0)
    return jax.tree_util.tree_map(lambda leaf: (leaf * factor).astype(leaf.dtype), updates)


class ZClipState(NamedTuple):
    count: jax.Array  # norms seen
    mean: jax.Array  # warm-up: running mean (Welford); after: the EMA mean
    var: jax.Array  # warm-up: running sum of squared deviations (Welford M2); after: the EMA variance


def zclip(alpha=0.97, z_thresh=2.5, max_grad_norm=1.0, eps=1e-6, warmup_steps=25):
    """ZClip as an Optax GradientTransformation, gg.ZClip's rule:

    the first warmup_steps norms set mean and (population) variance, meanwhile
    updates are clipped at max_grad_norm (if given); then with
    z = (g - mean) / (sqrt(var) + eps):

        threshold = mean + z_thresh * std / (z / z_thresh)   when z > z_thresh (a spike)
        clip at min(threshold, max_grad_norm)                 (threshold = g otherwise)
        mean = alpha mean + (1 - alpha) x;  var = alpha var + (1 - alpha) (x - mean)^2

    x being the clipped norm on a spike and g otherwise; a non-finite norm is
    not recorded (its threshold is the spike boundary). The norm is the global
    L2 norm of the updates (float32); state is three scalars, so it runs under jit.
    """
    optax = _optax()
    alpha = real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    z_thresh = real(z_thresh, "z_thresh", low=0.0, low_open=True, allow_inf=False)
    cap = real(max_grad_norm, "max_grad_norm", low=0.0, allow_none=True)
    cap = float("inf") if cap is None else cap
    eps = real(eps, "eps", low=0.0, allow_inf=False)
    warmup_steps = positive_int(warmup_steps, "warmup_steps")

    def init_fn(params):
        del params
        return ZClipState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        norm = _tree_norm(updates)
        warming = state.count < warmup_steps
        # Warm-up: Welford's running mean and M2; the last warm-up norm turns M2 into the variance.
        count = state.count + 1
        delta = norm - state.mean
        welford_mean = state.mean + delta / count
        welford_m2 = state.var + delta * (norm - welford_mean)
        finishing = count == warmup_steps
        warm_mean = welford_mean
        warm_var = jnp.where(finishing, welford_m2 / count, welford_m2)
        # After warm-up: ZClip's threshold and EMA update.
        std = jnp.sqrt(state.var)
        z = (norm - state.mean) / (std + eps)
        spike = z > z_thresh
        adaptive = jnp.where(spike, state.mean + z_thresh * std / (z / z_thresh), norm)
        ema_mean = alpha * state.mean + (1 - alpha) * adaptive
        ema_var = alpha * state.var + (1 - alpha) * (adaptive - ema_mean) ** 2
        threshold = jnp.where(warming, cap, jnp.minimum(adaptive, cap))
        new_state = ZClipState(
            jnp.where(warming, count, state.count + 1),
            jnp.where(warming, warm_mean, ema_mean),
            jnp.where(warming, warm_var, ema_var),
        )
        # A non-finite norm is not recorded (gg.ZClip's rule): its threshold is the spike boundary.
        finite = jnp.isfinite(norm)
        boundary = jnp.where(warming, cap, jnp.minimum(state.mean + z_thresh * std, cap))
        threshold = jnp.where(finite, threshold, boundary)
        new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return _scaled(updates, norm, threshold), new_state

    return optax.GradientTransformation(init_fn, update_fn)


class AutoClipState(NamedTuple):
    norms: jax.Array  # ring of the last `history` norms, NaN where not yet filled
    count: jax.Array  # finite norms seen


def autoclip(percentile=10.0, history=1000):
    """AutoClip as an Optax GradientTransformation, gg.AutoClip's rule over the
    last `history` norms (a fixed-size ring, so that it runs under jit):

        norms.append(||g||);  threshold = percentile(norms, p);  clip at threshold

    Non-finite norms are not recorded; before any finite norm nothing is clipped.
    """
    optax = _optax()
    percentile = real(percentile, "percentile", low=0.0, high=100.0)
    history = positive_int(history, "history")

    def init_fn(params):
        del params
        return AutoClipState(jnp.full([history], jnp.nan, jnp.float32), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        norm = _tree_norm(updates)
        finite = jnp.isfinite(norm)
        slot = state.count % history
        norms = jnp.where(finite, state.norms.at[slot].set(norm), state.norms)
        count = state.count + finite.astype(jnp.int32)
        seen = jnp.nanpercentile(norms, percentile)
        threshold = jnp.where(count > 0, seen, jnp.inf)
        return _scaled(updates, norm, threshold), AutoClipState(norms, count)

    return optax.GradientTransformation(init_fn, update_fn)


class MonitorTapState(NamedTuple):
    step: jax.Array


def monitor_tap(monitor, *, allow_missing: bool = False):
    """An Optax GradientTransformation that passes the updates through unchanged
    and feeds `monitor` (a gg.GradientMonitor) with them at every step, from
    inside jit too. The per-leaf statistics are computed inside the update
    (leaf_stats: on the device, of the global arrays under jax.sharding), and
    only that small table, (leaves x 10) numbers, goes to the host through
    jax.debug.callback (ordered, so steps arrive in order), never the gradients.
    Chain it first to see the raw gradients:
    optax.chain(gradguard.jax.monitor_tap(monitor), optax.adam(1e-3)).
    Layers are named by tree path."""
    optax = _optax()

    def record(table, step, names):
        monitor.update_stats(stats_from_table(table, names), step=int(step), allow_missing=allow_missing)

    def init_fn(params):
        del params
        return MonitorTapState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        names = _leaf_names(updates)  # static: known while tracing
        jax.debug.callback(functools.partial(record, names=names), leaf_stats(updates), state.step, ordered=True)
        return updates, MonitorTapState(state.step + 1)

    return optax.GradientTransformation(init_fn, update_fn)
