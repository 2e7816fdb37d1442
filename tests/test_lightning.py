"""gradguard.lightning.GradGuardCallback in a real Trainer (skipped without lightning)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lightning = pytest.importorskip("lightning")
from gradguard.lightning import GradGuardCallback  # noqa: E402

# Lightning warns about data loader workers and the like; those warnings are not under test here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


class Regression(lightning.LightningModule):
    def __init__(self, poison_step=None):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.unused = torch.nn.Linear(2, 2)  # never gets a gradient
        self.poison_step = poison_step

    def training_step(self, batch, batch_index):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.body(x), y)
        if self.global_step == self.poison_step:
            loss = loss * float("inf")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _trainer(callback, tmp_path, steps=12, **settings):
    return lightning.Trainer(
        max_steps=steps,
        callbacks=[callback, *settings.pop("callbacks", [])],
        logger=lightning.pytorch.loggers.CSVLogger(str(tmp_path)),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
        **settings,
    )


def _data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_callback_monitors_clips_and_logs(tmp_path):
    torch.manual_seed(0)
    callback = GradGuardCallback(max_norm=0.1, per_layer=True)
    model = Regression()
    _trainer(callback, tmp_path).fit(model, _data())
    assert callback.monitor.summary()["steps"] == 12
    assert "unused.weight" in callback.monitor.names  # known, never present: not a finding
    assert callback.monitor.findings == []
    history = callback.monitor.history()
    assert np.isnan(history["norm"][:, history["layers"].index("unused.weight")]).all()
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "grad_norm/body.0.weight" in metrics
    for key in ("grad_norm_before_clip", "grad_norm_after_clip", "clipped", "clip_rate"):
        assert f"gradguard/{key}" in metrics
    flat = callback.monitor.latest()
    assert flat["gradguard/grad_norm_before_clip"] == callback._hook.last_norm > 0.1  # above the bound: clipped
    assert flat["gradguard/grad_norm_after_clip"] == pytest.approx(0.1, rel=1e-4) and flat["gradguard/clipped"] == 1.0


def test_callback_skips_a_non_finite_step(tmp_path):
    torch.manual_seed(1)
    model = Regression(poison_step=3)
    callback = GradGuardCallback(skip_nonfinite=True)
    _trainer(callback, tmp_path, steps=6).fit(model, _data())
    assert callback.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert callback.monitor.summary()["steps"] == 5 and math.isinf(callback._hook.last_norm) is False


def test_a_resumed_fit_monitors_as_the_uninterrupted_one(tmp_path):
    """The callback's state (the monitor's history, baselines, streaks) travels in Lightning's checkpoint."""

    def fit(steps, ckpt_path=None, callback=None):
        torch.manual_seed(0)
        model = Regression()
        callback = callback or GradGuardCallback(max_norm=0.5)
        trainer = _trainer(callback, tmp_path / f"run{steps}{ckpt_path is not None}", steps=steps)
        trainer.fit(model, _data(), ckpt_path=ckpt_path)
        return trainer, callback

    first, stopped = fit(8)  # two whole epochs of 4 batches
    checkpoint = tmp_path / "at8.ckpt"
    first.save_checkpoint(str(checkpoint))
    _, resumed = fit(12, ckpt_path=str(checkpoint))
    # Lightning's resumed trajectory is its own (its data order after a restart); what the
    # callback owns is restored whole: the history before the stop, then steps from 8 on.
    ours, before = resumed.monitor.history(), stopped.monitor.history()
    assert ours["step"].tolist() == list(range(12)) and resumed._hook.steps == 12
    np.testing.assert_array_equal(ours["norm"][:8], before["norm"])
    assert resumed.monitor.summary()["steps"] == 12


def test_callback_and_trainer_clip_in_one_place(tmp_path):
    """max_norm= with the Trainer's gradient_clip_val: a warning, the Trainer's
    clip alone, and the norm after it recorded."""
    torch.manual_seed(0)
    callback = GradGuardCallback(max_norm=0.01)
    trainer = _trainer(callback, tmp_path, steps=4)
    trainer.gradient_clip_val = 0.2  # as Trainer(gradient_clip_val=0.2) sets it
    with pytest.warns(UserWarning, match="would both clip"):
        trainer.fit(Regression(), _data())
    flat = callback.monitor.latest()
    before, after = flat["gradguard/grad_norm_before_clip"], flat["gradguard/grad_norm_after_clip"]
    assert before > 0.2 and after == pytest.approx(0.2, rel=1e-4)  # the Trainer's bound, not 0.01


def test_callback_numbers_steps_by_the_trainer_global_step(tmp_path):
    torch.manual_seed(1)
    callback = GradGuardCallback()
    _trainer(callback, tmp_path, steps=6).fit(Regression(), _data())
    assert callback.monitor.history()["step"].tolist() == list(range(6))


def test_callback_names_where_a_nan_was_born(tmp_path):
    torch.manual_seed(2)
    callback = GradGuardCallback(find_origin=True)
    _trainer(callback, tmp_path, steps=5).fit(Regression(poison_step=3), _data())
    born = [f for f in callback.monitor.findings if "origin" in f.evidence]
    assert born and {f.step for f in born} == {3}
    # the loss was multiplied by inf after every module: the last layer's gradient is where it began
    assert all(f.evidence["origin"].startswith("backward gradient of `body.2.") for f in born)


class _UnfreezeAt(lightning.Callback):
    """Progressive unfreezing: body.2 trains from `step` on."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_index):
        if trainer.global_step == self.step:
            for parameter in pl_module.body[2].parameters():
                parameter.requires_grad_(True)


def test_a_layer_unfrozen_during_fit_joins_the_monitor(tmp_path):
    """A layer frozen when fit starts is read once it has a gradient (here with
    gradient accumulation over 2 batches), and joins the monitor from then on."""
    torch.manual_seed(0)
    model = Regression()
    for parameter in model.body[2].parameters():
        parameter.requires_grad_(False)
    callback = GradGuardCallback()
    trainer = _trainer(callback, tmp_path, steps=8, accumulate_grad_batches=2, callbacks=[_UnfreezeAt(4)])
    trainer.fit(model, _data())
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 16  # two batches a step
    names = callback.monitor.names
    assert "body.2.weight" in names and "body.2.bias" in names
    history = callback.monitor.history()
    late = history["layers"].index("body.2.weight")
    assert history["step"].tolist() == list(range(8))
    assert np.isnan(history["norm"][:4, late]).all() and (history["norm"][4:, late] > 0).all()
