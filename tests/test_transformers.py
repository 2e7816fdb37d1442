"""gradguard.transformers.GradGuardCallback in a real Trainer on the CPU, a tiny
GPT-2 built from a config (skipped without transformers)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from gradguard.transformers import GradGuardCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, scale_from=None):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (96, 16), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def _trainer(tmp_path, callback, steps=10, **arguments):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(arguments)
    return transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**settings),
        train_dataset=_Tokens(),
        callbacks=[callback],
    )


def test_the_callback_reads_before_the_trainers_clip_and_logs_through_the_trainer(tmp_path):
    callback = GradGuardCallback(per_layer=True)
    trainer = _trainer(tmp_path, callback, max_grad_norm=0.5, gradient_accumulation_steps=2)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(logs) == 10
    for entry in logs:  # the Trainer's grad_norm is torch's pre-clip norm of the accumulated gradients
        assert entry["gradguard/grad_norm_before_clip"] == pytest.approx(entry["grad_norm"], rel=1e-4)
        assert entry["gradguard/grad_norm_after_clip"] == pytest.approx(min(entry["grad_norm"], 0.5), rel=1e-4)
        assert entry["gradguard/clipped"] == float(entry["grad_norm"] > 0.5)
        assert "grad_norm/transformer.h.0.mlp.c_fc.weight" in entry
    assert callback.monitor.history()["step"].tolist() == list(range(10))
    assert trainer.callback_handler.callbacks[0] is callback  # ahead of the loggers


def test_guard_options_and_no_clip(tmp_path):
    callback = GradGuardCallback(max_norm=0.05)
    trainer = _trainer(tmp_path, callback, max_grad_norm=0.0, steps=4)
    trainer.train()
    for entry in [e for e in trainer.state.log_history if "grad_norm" in e]:
        assert entry["gradguard/grad_norm_before_clip"] == pytest.approx(entry["grad_norm"], rel=1e-4)
        assert entry["gradguard/grad_norm_after_clip"] == pytest.approx(0.05, rel=1e-4)


def test_a_resumed_trainer_monitors_as_the_uninterrupted_one(tmp_path):
    """Stopped at step 6 (a checkpoint), resumed to step 10: the monitor's state
    comes back from the Trainer's checkpoint, and the findings and history from
    step 6 on are those of the run that never stopped."""
    settings = dict(monitor_settings={"min_history": 3, "window": 32, "spike_z": 1.5})
    whole = GradGuardCallback(**settings)
    _trainer(tmp_path / "whole", whole).train()
    first = GradGuardCallback(**settings)
    _trainer(tmp_path / "split", first, steps=10, save_strategy="steps", save_steps=6).train()
    saved = json.loads((tmp_path / "split" / "checkpoint-6" / "trainer_state.json").read_text())
    assert "GradGuardCallback" in saved["stateful_callbacks"]
    resumed_callback = GradGuardCallback(**settings)
    trainer = _trainer(tmp_path / "split", resumed_callback, restore_callback_states_from_checkpoint=True)
    trainer.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-6"))
    restored = next(c for c in trainer.callback_handler.callbacks if isinstance(c, GradGuardCallback))
    ours, theirs = restored.monitor.history(), whole.monitor.history()
    assert ours["step"].tolist() == theirs["step"].tolist() == list(range(10))
    np.testing.assert_allclose(ours["norm"], theirs["norm"], rtol=1e-4)
    assert [(f.step, f.layer, f.kind) for f in restored.monitor.findings] == [
        (f.step, f.layer, f.kind) for f in whole.monitor.findings
    ]
    cold = GradGuardCallback(**settings)
    with pytest.warns(UserWarning, match="starts cold"):
        _trainer(tmp_path / "split", cold).train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-6"))


def test_bad_settings_are_refused_at_once():
    with pytest.raises(ValueError):
        GradGuardCallback(max_norm=-1.0)
    with pytest.raises(TypeError):
        GradGuardCallback(monitor_settings={"window": "x"})


def test_a_layer_unfrozen_during_training_joins_the_monitor(tmp_path):
    class Unfreeze(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:
                model.transformer.h[1].mlp.c_fc.weight.requires_grad_(True)

    callback = GradGuardCallback()
    trainer = _trainer(tmp_path, callback, steps=8)
    trainer.model.transformer.h[1].mlp.c_fc.weight.requires_grad_(False)
    trainer.add_callback(Unfreeze())
    trainer.train()
    name = "transformer.h.1.mlp.c_fc.weight"
    assert name in callback.monitor.names
    norms = callback.monitor.history()["norm"][:, callback.monitor.names.index(name)]
    assert np.isnan(norms[:4]).all() and np.isfinite(norms[4:]).all() and (norms[4:] > 0).all()
