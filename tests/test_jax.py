"""gradguard.jax: pytrees read without copies, named by tree path; Optax's
zclip/autoclip against gg.ZClip/gg.AutoClip; monitor_tap from inside jit."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import run_python

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
ggj = pytest.importorskip("gradguard.jax")


def _tree(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": jnp.asarray(rng.standard_normal((5, 3)) * scale, jnp.float32), "bias": jnp.zeros(3)},
        "blocks": [jnp.asarray(rng.standard_normal(7) * scale, jnp.float32)],
    }


def test_leaves_are_named_by_path_and_shared_not_copied():
    tree = _tree()
    leaves = ggj.leaves_by_path(tree)
    assert list(leaves) == ["blocks/0", "dense/bias", "dense/kernel"]
    assert np.shares_memory(leaves["dense/kernel"], np.asarray(tree["dense"]["kernel"]))
    flat = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)])
    assert ggj.global_norm(tree) == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert ggj.global_norm(tree, "inf") == pytest.approx(np.abs(flat).max())
    stats = ggj.grad_stats(tree)
    assert stats.names == ("blocks/0", "dense/bias", "dense/kernel")
    assert stats.l2[2] == pytest.approx(np.linalg.norm(np.asarray(tree["dense"]["kernel"], np.float64)), rel=1e-12)


def test_clip_tree_by_global_norm_returns_a_new_tree():
    tree = _tree(scale=10.0)
    clipped, norm = ggj.clip_tree_by_global_norm(tree, 1.0)
    assert norm > 1.0 and ggj.global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    assert ggj.global_norm(tree) == pytest.approx(norm)  # the input is untouched (JAX arrays are immutable)
    same, _ = ggj.clip_tree_by_global_norm(tree, 1e6)
    assert same is tree


def test_host_functions_inside_jit_say_so_in_gradguards_words():
    for function in (ggj.global_norm, ggj.grad_stats, lambda t: ggj.clip_tree_by_global_norm(t, 1.0)):
        with pytest.raises(TypeError, match="cannot run inside jax.jit.*clip_by_global_norm"):
            jax.jit(function)(_tree())


def test_monitor_update_and_refusals():
    monitor = gg.GradientMonitor()
    assert ggj.monitor_update(monitor, _tree()) == []
    assert monitor.names == ["blocks/0", "dense/bias", "dense/kernel"]
    with pytest.raises(ValueError, match="max_norm"):
        ggj.clip_tree_by_global_norm(_tree(), -1.0)


optax = pytest.importorskip("optax")


@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 30.0, 1e30])
@pytest.mark.parametrize("eps", [0.0, gg.CLIP_EPS])
def test_clip_by_global_norm_is_optaxs_transformation_under_jit(scale, eps):
    """Against a float64 reference of the rule, and Optax's own where its float32 norm is finite."""
    tree = _tree(seed=3, scale=scale)
    transform = ggj.clip_by_global_norm(1.0, eps=eps)
    state = transform.init(tree)
    clipped, _ = jax.jit(transform.update)(tree, state)
    flat = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)])
    norm = np.linalg.norm(flat)
    factor = 1.0 if norm == 0 else min(1.0, 1.0 / (norm + eps))
    for ours, leaf in zip(jax.tree_util.tree_leaves(clipped), jax.tree_util.tree_leaves(tree)):
        np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(leaf, np.float64) * factor, rtol=2e-6)
    if eps == 0.0 and scale < 1e19:
        theirs, _ = optax.clip_by_global_norm(1.0).update(tree, optax.EmptyState())
        for ours, leaf in zip(jax.tree_util.tree_leaves(clipped), jax.tree_util.tree_leaves(theirs)):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(leaf), rtol=2e-6, atol=1e-30)


def test_clip_by_global_norm_in_half_precision_does_not_overflow():
    """float16 leaves of norm ~ 2000: their squares overflow float16, not this norm."""
    leaves = {"w": jnp.full((4, 4), 500.0, jnp.float16), "b": jnp.full(3, -300.0, jnp.bfloat16)}
    clipped, _ = jax.jit(ggj.clip_by_global_norm(1.0).update)(leaves, optax.EmptyState())
    norm = math.sqrt(16 * 500.0**2 + 3 * 300.0**2)
    assert float(clipped["w"][0, 0]) == pytest.approx(500.0 / norm, rel=2e-3)
    assert float(clipped["b"][0]) == pytest.approx(-300.0 / norm, rel=1e-2)
    assert clipped["w"].dtype == jnp.float16 and clipped["b"].dtype == jnp.bfloat16
    nan = {"w": jnp.array([1.0, float("nan")])}
    kept, _ = ggj.clip_by_global_norm(1.0).update(nan, optax.EmptyState())
    assert np.isnan(np.asarray(kept["w"])[1]) and float(kept["w"][0]) == 1.0  # NaN stays visible, not spread


def _run(transform, scales, seed=0):
    """The transformation, jitted, on a fixed tree scaled by each factor in turn:
    (norms in, norms out)."""
    base = _tree(seed)
    state = transform.init(base)
    update = jax.jit(transform.update)
    norms_in, norms_out = [], []
    for scale in scales:
        grads = jax.tree_util.tree_map(lambda leaf, factor=scale: leaf * factor, base)
        out, state = update(grads, state)
        norms_in.append(ggj.global_norm(grads))
        norms_out.append(ggj.global_norm(out))
    return norms_in, norms_out


def _expected(clipper, norms_in):
    out = []
    for norm in norms_in:
        threshold = clipper.observe(norm)
        out.append(norm * threshold / (norm + 1e-6) if norm > threshold else norm)
    return out


SCALES = [1.0, 1.2, 0.9, 1.1, 1.0, 0.95, 1.05, 1.0, 8.0, 1.0, 0.9, 30.0, 1.1, 1.0, 0.8, 1.2, 5.0, 1.0]


@pytest.mark.parametrize("max_grad_norm", [None, 4.0])
def test_zclip_follows_gg_zclip(max_grad_norm):
    transform = ggj.zclip(warmup_steps=5, max_grad_norm=max_grad_norm)
    norms_in, norms_out = _run(transform, SCALES)
    expected = _expected(gg.ZClip(warmup_steps=5, max_grad_norm=max_grad_norm), norms_in)
    np.testing.assert_allclose(norms_out, expected, rtol=2e-5)
    assert norms_out[8] < norms_in[8] and norms_out[11] < norms_in[11]  # the spikes were clipped


@pytest.mark.parametrize("history", [4, 100])
def test_autoclip_follows_gg_autoclip(history):
    norms_in, norms_out = _run(ggj.autoclip(percentile=25.0, history=history), SCALES)
    expected = _expected(gg.AutoClip(percentile=25.0, history=history), norms_in)
    np.testing.assert_allclose(norms_out, expected, rtol=2e-5)


def test_autoclip_ignores_non_finite_norms():
    transform = ggj.autoclip(percentile=50.0, history=8)
    state = transform.init(_tree())
    bad = jax.tree_util.tree_map(lambda leaf: leaf * jnp.inf, _tree())
    out, state = jax.jit(transform.update)(bad, state)
    assert int(state.count) == 0 and not math.isfinite(ggj.global_norm(out))  # left for a loss scaler or guard


def test_monitor_tap_feeds_the_monitor_from_inside_jit():
    monitor = gg.GradientMonitor()
    optimiser = optax.chain(ggj.monitor_tap(monitor), optax.sgd(0.1))
    params = _tree()
    state = optimiser.init(params)

    @jax.jit
    def train_step(params, state, scale):
        grads = jax.tree_util.tree_map(lambda leaf: leaf * scale, params)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    expected = []
    for step in range(5):
        expected.append(ggj.global_norm(params) * (step + 1))
        params, state = train_step(params, state, float(step + 1))
    jax.effects_barrier()
    history = monitor.history()
    assert list(history["step"]) == [0, 1, 2, 3, 4]
    assert monitor.names == ["blocks/0", "dense/bias", "dense/kernel"]
    np.testing.assert_allclose(np.sqrt(np.nansum(history["norm"] ** 2, axis=1)), expected, rtol=1e-5)


def test_monitor_tap_passes_updates_through():
    transform = ggj.monitor_tap(gg.GradientMonitor())
    tree = _tree()
    out, _ = transform.update(tree, transform.init(tree))
    jax.effects_barrier()
    assert out is tree


def test_top_level_functions_read_jax_arrays_and_refuse_to_write_them():
    tree = _tree()
    leaves = jax.tree_util.tree_leaves(tree)
    flat = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in leaves])
    assert gg.global_norm(leaves) == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert gg.global_norm(tree["dense"]["kernel"]) == pytest.approx(
        np.linalg.norm(np.asarray(tree["dense"]["kernel"], np.float64)), rel=1e-12
    )
    assert gg.grad_stats({"k": tree["dense"]["kernel"]}).names == ("k",)
    with pytest.raises(ValueError, match=r"arrays\[0\] is read-only"):
        gg.clip_by_global_norm([tree["dense"]["kernel"]], 0.1)  # JAX arrays are immutable: gradguard.jax clips


def test_zclip_ignores_non_finite_norms_like_gg_zclip():
    transform = ggj.zclip(warmup_steps=3, max_grad_norm=None)
    state = transform.init(_tree())
    update = jax.jit(transform.update)
    for _ in range(4):
        _, state = update(_tree(), state)
    before = (float(state.mean), float(state.var))
    _, state = update(jax.tree_util.tree_map(lambda leaf: leaf * jnp.nan, _tree()), state)
    assert (float(state.mean), float(state.var)) == before  # not poisoned
    spike = jax.tree_util.tree_map(lambda leaf: leaf * 1e6, _tree())
    out, state = update(spike, state)
    assert ggj.global_norm(out) < 1e-3 * ggj.global_norm(spike)  # a later spike is still clipped


def test_leaves_with_the_same_path_are_refused():
    with pytest.raises(ValueError, match="tree path 'a/b'"):
        ggj.leaves_by_path({"a/b": np.ones(2), "a": {"b": np.ones(2)}})


def _adversarial_tree():
    rng = np.random.default_rng(0)
    return {
        "a": rng.standard_normal(1000).astype(np.float32),
        "empty": np.zeros(0, np.float32),
        "huge": (rng.standard_normal(50) * 1e25).astype(np.float32),
        "tiny": (rng.standard_normal(50) * 1e-30).astype(np.float32),
        "nonfinite": np.array([1, np.nan, np.inf, 0, -2, -np.inf], np.float32),
        "all_nan": np.array([np.nan] * 4, np.float32),
        "zeros": np.zeros(10, np.float32),
        "half": rng.standard_normal(64).astype(np.float16),
        "constant": np.full(7, 3.0, np.float32),
        "offset": 1 + rng.standard_normal(500).astype(np.float32) * 1e-4,
    }


def test_leaf_stats_inside_jit_are_grad_stats_to_float32_rounding():
    arrays = _adversarial_tree()
    table = jax.jit(ggj.leaf_stats)({name: jnp.asarray(value) for name, value in arrays.items()})
    assert table.shape == (len(arrays), len(ggj.LEAF_STATS_COLUMNS))
    names = sorted(arrays)  # a dict's leaves come in key order
    ours, expected = ggj.stats_from_table(np.asarray(table), names), gg.grad_stats({n: arrays[n] for n in names})
    for field in gg.stats.STATS_FIELDS:
        np.testing.assert_allclose(
            getattr(ours, field), getattr(expected, field), rtol=3e-6, equal_nan=True, err_msg=field
        )
    assert math.isnan(ours.global_norm) and math.isnan(expected.global_norm)


def test_monitor_tap_sends_only_the_statistics_to_the_host(monkeypatch):
    sent = []
    real_callback = jax.debug.callback

    def watched(function, *arguments, **keywords):
        sent.append([int(np.prod(np.shape(argument))) for argument in arguments])
        return real_callback(function, *arguments, **keywords)

    monkeypatch.setattr(jax.debug, "callback", watched)
    monitor = gg.GradientMonitor()
    transform = ggj.monitor_tap(monitor)
    params = {"w": jnp.ones((256, 256)), "b": jnp.ones(256)}
    state = transform.init(params)
    update = jax.jit(transform.update)
    for _ in range(3):
        _, state = update(params, state)
    jax.effects_barrier()
    leaves, columns = 2, len(ggj.LEAF_STATS_COLUMNS)
    assert sent and all(sizes == [leaves * columns, 1] for sizes in sent)  # 20 numbers and the step, not 65,792 values
    assert monitor.summary()["steps"] == 3
    np.testing.assert_allclose(monitor.history()["norm"][-1], [16.0, 256.0], rtol=1e-6)


def test_arrays_on_an_accelerator_are_reduced_there(monkeypatch):
    """The path device leaves take, run here by treating the CPU leaves as device ones."""
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1.0, -2.0, 0.0], np.float32)}
    tree = {name: jnp.asarray(value) for name, value in arrays.items()}
    expected = gg.grad_stats(arrays)
    monkeypatch.setattr(ggj, "_on_cpu", lambda leaf: False)
    with pytest.raises(ValueError, match="NumPy cannot view it"):
        ggj.leaves_by_path(tree)
    ours = ggj.grad_stats(tree)
    for field in gg.stats.STATS_FIELDS:
        np.testing.assert_allclose(getattr(ours, field), getattr(expected, field), rtol=3e-6, err_msg=field)
    assert ggj.global_norm(tree) == pytest.approx(expected.global_norm, rel=1e-6)
    monitor = gg.GradientMonitor()
    ggj.monitor_update(monitor, tree)
    assert monitor.names == ["a", "b"] and monitor.summary()["steps"] == 1


def test_leaf_stats_of_sharded_arrays_are_those_of_the_global_arrays():
    """Under jax.sharding, on 4 host devices: the statistics inside jit are of each whole array."""
    done = run_python(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        import gradguard as gg, gradguard.jax as ggj
        assert len(jax.devices()) == 4, jax.devices()
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rng = np.random.default_rng(0)
        arrays = {"w": rng.standard_normal((64, 16)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)}
        arrays["w"][3, 2] = np.nan
        sharded = {k: jax.device_put(v, NamedSharding(mesh, PartitionSpec("data"))) for k, v in arrays.items()}
        assert len(sharded["w"].addressable_shards) == 4
        table = jax.jit(ggj.leaf_stats)(sharded)
        ours, expected = ggj.stats_from_table(np.asarray(table), ["b", "w"]), gg.grad_stats({k: arrays[k] for k in ["b", "w"]})
        for field in gg.stats.STATS_FIELDS:
            np.testing.assert_allclose(getattr(ours, field), getattr(expected, field), rtol=3e-6, err_msg=field)
        print("ok")
        """,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr[-3000:]
