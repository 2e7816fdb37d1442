"""gradguard watch: unmodified training scripts (tests/watch_scripts) under the
watcher, checked against what torch, Lightning and the Trainer report themselves."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from gradguard.watch import run_watched  # noqa: E402

SCRIPTS = Path(__file__).parent / "watch_scripts"


def _history(out):
    return [json.loads(line) for line in (Path(out) / "history.jsonl").read_text().splitlines()]


def _watch(script, out, *arguments, **options):
    return run_watched(str(SCRIPTS / script), [str(a) for a in arguments], out=str(out), **options)


def test_cli_runs_a_plain_loop_sees_norms_before_its_clip_and_keeps_its_exit_code(tmp_path):
    out, norms_path = tmp_path / "out", tmp_path / "torch_norms.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradguard",
            "watch",
            "--out",
            str(out),
            "--",
            str(SCRIPTS / "plain_loop.py"),
            str(norms_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3, done.stderr  # the script's sys.exit(3)
    lines = [line for line in done.stderr.splitlines() if line.startswith("gradguard: step")]
    assert lines and all(line.startswith("gradguard: step 30: exploding: ") for line in lines)  # once, as it happened
    torch_norms = json.loads(norms_path.read_text())
    history = _history(out)
    assert [entry["gradguard/step"] for entry in history] == list(range(40))
    before = [entry["gradguard/grad_norm_before_clip"] for entry in history]
    assert before == pytest.approx(torch_norms, rel=1e-5)  # torch's own pre-clip norms
    for entry, norm in zip(history, torch_norms):
        assert entry["gradguard/grad_norm_after_clip"] == pytest.approx(min(norm, 1.0), rel=1e-5)
        assert entry["gradguard/clipped"] == float(norm > 1.0 + 1e-6)
    assert before[30] > 1e3  # the spike the clip hid from a hook at optimizer.step
    report = (out / "report.md").read_text()
    assert "Exit status of the script: 3" in report and "| 30 | `0.weight` | exploding |" in report
    assert (out / "gradient_flow_optimizer_0_sgd.png").stat().st_size > 0
    findings = [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()]
    assert {f["step"] for f in findings} == {30}


def test_gradscaler_skipped_steps_are_counted_not_recorded(tmp_path):
    assert _watch("scaler_loop.py", tmp_path) == 0
    history = _history(tmp_path)
    steps = [entry["gradguard/step"] for entry in history]
    assert steps == [s for s in range(30) if s not in (7, 19)]  # numbered by training step, gaps at the skips
    assert all(entry["gradguard/grad_norm_after_clip"] <= 0.05 * (1 + 1e-5) for entry in history)
    report = (tmp_path / "report.md").read_text()
    assert "28 steps recorded of 30" in report and "2 skipped by the GradScaler" in report
    assert "No findings" in report  # routine overflows are not explosions


def test_a_gan_gets_one_monitor_per_optimizer(tmp_path):
    assert _watch("gan.py", tmp_path) == 0
    history = _history(tmp_path)
    labels = {entry["optimizer"] for entry in history}
    assert labels == {"optimizer 0 (Adam)", "optimizer 1 (Adam)"}
    discriminator = [entry for entry in history if entry["optimizer"] == "optimizer 0 (Adam)"]
    # clip_grad_value_(0.1): the norm after it is the clamped gradients' norm, at most 0.1 * sqrt(numel)
    assert any(entry["gradguard/clipped"] == 1.0 for entry in discriminator)
    assert len(discriminator) == 25 and "grad_norm/0.weight" in discriminator[0]


def test_a_crashing_script_keeps_its_exit_code_and_its_report(tmp_path, capsys):
    assert _watch("crash.py", tmp_path, "x") == 1
    error = capsys.readouterr().err
    assert "RuntimeError: loss is nan at step 15" in error and "runpy" not in error
    assert "gradguard: step 12: exploding: " in error
    report = (tmp_path / "report.md").read_text()
    assert "Exit status of the script: 1" in report and "| 12 |" in report and "16 steps recorded" in report


def test_a_script_without_an_optimizer_gets_a_clear_message(tmp_path, capsys):
    assert _watch("no_optimizer.py", tmp_path) == 0
    assert "never stepped a torch.optim optimizer" in capsys.readouterr().err
    assert "nothing was monitored" in (tmp_path / "report.md").read_text()


def test_guard_options_clip_and_skip(tmp_path):
    out = tmp_path / "guarded"
    assert _watch("crash.py", out, "x", max_norm=0.01, skip_nonfinite=True) == 1
    history = _history(out)
    assert all(entry["gradguard/grad_norm_after_clip"] <= 0.01 * (1 + 1e-5) for entry in history[:12])
    assert "4 skipped by --skip-nonfinite" in (out / "report.md").read_text()


def test_every_records_one_step_in_n(tmp_path):
    out = tmp_path / "sampled"
    assert _watch("scaler_loop.py", out, every=5) == 0
    assert [entry["gradguard/step"] for entry in _history(out)] == [0, 5, 10, 15, 20, 25]


def _signal_when_started(tmp_path, script, signal_number, settle=0.0):
    """Runs `gradguard watch` on a script that touches its marker file once it
    is where the test wants it, sends it a signal there, and returns
    (exit status, stderr, seconds from the signal to the exit)."""
    marker = tmp_path / "started"
    command = [sys.executable, "-m", "gradguard", "watch", "--out", str(tmp_path / "out"), str(SCRIPTS / script)]
    # A terminal's Ctrl-C reaches a process whose SIGINT is the default; a test
    # run started in the background of a non-interactive shell has SIGINT
    # ignored, which a child would inherit (and Python keeps). Caught here while
    # the child starts, it is the default there (exec resets caught signals).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([*command, str(marker)], stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(settle)
    started = time.monotonic()
    process.send_signal(signal_number)
    _, error = process.communicate(timeout=60)
    return process.returncode, error, time.monotonic() - started


def test_ctrl_c_writes_the_report_and_exits_130(tmp_path):
    status, error, _ = _signal_when_started(tmp_path, "endless.py", signal.SIGINT)
    assert status == 130 and "interrupted" in error
    assert "steps recorded" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.filterwarnings("ignore")  # Lightning's own warnings (workers, deprecations)
def test_lightning_script_records_before_the_trainers_clip(tmp_path):
    pytest.importorskip("lightning")
    assert _watch("lightning_fit.py", tmp_path) == 0
    history = _history(tmp_path)
    assert [entry["gradguard/step"] for entry in history] == list(range(12))  # step(closure): recorded in the step
    for entry in history:
        assert entry["gradguard/grad_norm_before_clip"] > 0.5  # the Trainer's gradient_clip_val
        assert entry["gradguard/grad_norm_after_clip"] == pytest.approx(0.5, rel=1e-4)


@pytest.mark.filterwarnings("ignore")
def test_hugging_face_trainer_script_norms_match_the_trainers_grad_norm(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out, trainer_out = tmp_path / "watch", tmp_path / "trainer"
    assert _watch("hf_trainer.py", out, trainer_out) == 0
    logged = [entry for entry in json.loads((trainer_out / "log_history.json").read_text()) if "grad_norm" in entry]
    history = _history(out)
    assert len(history) == len(logged) == 10
    for entry, log in zip(history, logged):
        assert entry["gradguard/step"] == log["step"] - 1
        assert entry["gradguard/grad_norm_before_clip"] == pytest.approx(log["grad_norm"], rel=1e-4)  # pre-clip
        assert entry["gradguard/grad_norm_after_clip"] == pytest.approx(min(log["grad_norm"], 1.0), rel=1e-4)
    assert "transformer.h.0.attn.c_attn.weight" in (out / "report.md").read_text()


def test_the_clip_functions_are_torchs_own_again_after_the_watch(tmp_path):
    original = torch.nn.utils.clip_grad_norm_
    assert _watch("gan.py", tmp_path) == 0
    assert torch.nn.utils.clip_grad_norm_ is original and not hasattr(original, "__gradguard_original__")
    assert os.path.exists(tmp_path / "report.md")


def _torchrun(tmp_path, *script_arguments):
    environment = dict(os.environ, OMP_NUM_THREADS="1", GRADGUARD_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "gradguard", "watch", "--out", str(tmp_path / "out"), str(SCRIPTS / "ddp.py"), *script_arguments]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    return done, time.monotonic() - started


def test_under_torchrun_each_rank_writes_its_own_report(tmp_path):
    done, _ = _torchrun(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        report = (tmp_path / "out" / f"rank{rank}" / "report.md").read_text()
        assert f"Rank {rank} of 2" in report and "20 steps recorded of 20" in report
        history = _history(tmp_path / "out" / f"rank{rank}")
        # DDP averages the gradients over ranks: both ranks see the same norms
        assert len(history) == 20
    zero, one = (_history(tmp_path / "out" / f"rank{r}") for r in (0, 1))
    assert [e["gradguard/grad_norm_before_clip"] for e in zero] == pytest.approx(
        [e["gradguard/grad_norm_before_clip"] for e in one], rel=1e-6
    )


def test_under_torchrun_a_crashed_rank_does_not_hang_the_others_reports(tmp_path):
    """Rank 1 raises at step 10; rank 0 blocks in DDP's next all-reduce until torchrun
    terminates it: both reports are written (rank 0's by the watcher's SIGTERM helper)."""
    done, seconds = _torchrun(tmp_path, "1")
    assert done.returncode != 0 and seconds < 200
    crashed = (tmp_path / "out" / "rank1" / "report.md").read_text()
    assert "Exit status of the script: 1" in crashed and "11 steps recorded" in crashed
    # Rank 0 either sees gloo's connection drop (its script raises: 1) or is
    # terminated by torchrun (143); its report is written either way.
    survivor = (tmp_path / "out" / "rank0" / "report.md").read_text()
    assert re.search(r"Exit status of the script: (1|143)\n", survivor) and "steps recorded" in survivor


def test_sigterm_while_blocked_in_cpp_still_writes_the_report(tmp_path):
    """The script waits in C++ (a TCPStore key that never comes), where Python
    cannot unwind: the watcher's helper thread writes the report and exits 143."""
    status, error, seconds = _signal_when_started(tmp_path, "blocked.py", signal.SIGTERM, settle=0.3)
    assert status == 143 and seconds < 30
    assert "terminated while blocked" in error
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Exit status of the script: 143" in report and "3 steps recorded of 3" in report


def test_a_nan_born_in_a_forward_module_is_named_where_it_was_born(tmp_path, capsys):
    assert _watch("nan_module.py", tmp_path) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gradguard: step 12")]
    assert lines and all("the first inf/NaN of the step: forward output of `3`" in line for line in lines)
    assert any("4.weight: gradient holds NaN/inf" in line for line in lines)  # where it ended up, and where it began


def test_gradguards_own_clip_is_seen_before_it_writes(tmp_path):
    from gradguard.torch import clip_grad_norm_
    from gradguard.watch import watching

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    totals = []
    with watching(str(tmp_path), find_origin=False) as watcher:
        for _ in range(5):
            optimizer.zero_grad()
            (model(torch.randn(16, 4)).pow(2).mean() * 100).backward()
            totals.append(float(clip_grad_norm_(model.parameters(), 0.5)))
            optimizer.step()
    history = watcher.recorders[0][2].monitor.history()
    assert history["grad_norm"].tolist() == pytest.approx(totals, rel=1e-6) and min(totals) > 0.5
    assert history["norm_after_clip"].tolist() == pytest.approx([0.5] * 5, rel=1e-5)


def test_a_layer_unfrozen_during_the_run_joins_the_monitor(tmp_path):
    assert _watch("unfreeze.py", tmp_path) == 0
    history = _history(tmp_path)
    assert len(history) == 20
    assert all("grad_norm/2.weight" not in entry for entry in history[:10])
    assert all(entry["grad_norm/2.weight"] > 0 and entry["grad_norm/2.bias"] > 0 for entry in history[10:])
