"""gradguard.keras.GradGuardCallback in model.fit (skipped without keras; the
torch backend, which runs eagerly)."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # keras reads it once, at import
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - another test imported keras first
    pytest.skip("these tests run keras on its torch backend", allow_module_level=True)
from gradguard.keras import GradGuardCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_callback_monitors_every_step_and_logs():
    x, y = _data()
    callback = GradGuardCallback()
    history = _model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    assert callback.monitor.summary()["steps"] == 8
    assert callback.monitor.names == ["hidden/kernel", "hidden/bias", "out/kernel", "out/bias"]
    assert "gradguard_global_norm" in history.history
    assert np.isfinite(callback.monitor.history()["norm"]).all()


def test_clipping_matches_keras_global_clipnorm():
    x, y = _data()
    ours, theirs = _model(1), _model(1)
    theirs.compile(optimizer=keras.optimizers.SGD(0.05, global_clipnorm=0.05), loss="mse")
    ours.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False, callbacks=[GradGuardCallback(max_norm=0.05)])
    theirs.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for mine, reference in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-6)


def test_callback_restores_the_optimiser_and_refuses_bad_arguments():
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[GradGuardCallback()])
    assert "_clip_gradients" not in vars(model.optimizer)  # the wrappers are gone after fit
    assert "_backend_apply_gradients" not in vars(model.optimizer)
    with pytest.raises(ValueError, match="max_norm"):
        GradGuardCallback(max_norm=-1.0)


JAX_SCRIPT = """
import numpy as np, keras
from gradguard.keras import GradGuardCallback
x = np.ones((32, 4), "float32"); y = x.sum(axis=1, keepdims=True)
m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
m.compile(optimizer="sgd", loss="mse", run_eagerly=True)
try:
    m.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[GradGuardCallback()])
except RuntimeError as error:
    assert "KERAS_BACKEND=torch" in str(error), error
    print("refused")
"""


def test_other_backends_are_refused_clearly():
    pytest.importorskip("jax")
    import subprocess
    import sys

    environment = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused" in result.stdout


def test_gradient_accumulation_records_and_clips_what_the_optimiser_applies():
    """6 updates of 2 micro-batches: 6 records, and the weights of Keras's own global_clipnorm run."""
    x, y = _data()
    ours, theirs = _model(2), _model(2)
    ours.compile(optimizer=keras.optimizers.SGD(0.05, gradient_accumulation_steps=2), loss="mse")
    theirs.compile(
        optimizer=keras.optimizers.SGD(0.05, gradient_accumulation_steps=2, global_clipnorm=0.05), loss="mse"
    )
    callback = GradGuardCallback(max_norm=0.05)
    ours.fit(x[:48], y[:48], batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    theirs.fit(x[:48], y[:48], batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert callback.monitor.summary()["steps"] == 6
    for mine, reference in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-6)


def test_mixed_float16_records_unscaled_gradients_and_leaves_out_overflowed_steps():
    x, y = _data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model(3)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")  # wrapped in a LossScaleOptimizer
        assert hasattr(model.optimizer, "inner_optimizer")
        callback = GradGuardCallback()
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    norms = callback.monitor.history()["grad_norm"]
    reference = _model(3)
    reference.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[probe := GradGuardCallback()])
    # unscaled: the same order as a float32 run's (loss-scaled ones are 2**15 times larger)
    assert np.isfinite(norms).all() and norms.max() < 100 * probe.monitor.history()["grad_norm"].max()
    assert callback.monitor.findings == []
    assert callback.monitor.summary()["steps"] <= 8
