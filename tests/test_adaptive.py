"""Adaptive clipping (gg.AutoClip, gg.ZClip) against transcriptions of the papers' rules; refusals before any state changes."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import layer_with_norm


def reference_autoclip(norms, percentile, history=None):
    seen, thresholds = [], []
    for norm in norms:
        seen.append(norm)
        if history:
            seen = seen[-history:]
        thresholds.append(float(np.percentile(seen, percentile)))
    return thresholds


def reference_zclip(norms, alpha, z_thresh, max_grad_norm, eps, warmup):
    buffer, mean, var, thresholds = [], None, None, []
    for g in norms:
        if mean is None:
            buffer.append(g)
            if len(buffer) >= warmup:
                mean = sum(buffer) / len(buffer)
                var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
            thresholds.append(max_grad_norm)
            continue
        std = var**0.5
        z = (g - mean) / (std + eps)
        clip = mean + (z_thresh * std) / (z / z_thresh) if z > z_thresh else None
        thresholds.append(min(clip if clip is not None else g, max_grad_norm))
        x = clip if clip is not None else g
        mean = alpha * mean + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mean) ** 2
    return thresholds


def norm_sequence(seed, steps=300):
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.standard_normal(steps) * 0.2)
    norms[[60, 150, 151, 250]] *= [50, 20, 30, 100]  # spikes
    return norms


@pytest.mark.parametrize("history", [None, 50])
def test_autoclip_matches_the_paper_rule(history):
    rng = np.random.default_rng(9)
    arrays = [layer_with_norm(rng, n).astype(np.float64) for n in norm_sequence(8)]
    norms = [float(np.linalg.norm(a)) for a in arrays]  # the norms the arrays really have
    clipper = gg.AutoClip(percentile=10, history=history)
    expected = reference_autoclip(norms, 10, history)
    for array, norm, wanted in zip(arrays, norms, expected):
        grads = [array]
        seen, threshold = clipper(grads)
        assert seen == pytest.approx(norm, rel=1e-6) and threshold == pytest.approx(wanted, rel=1e-6)
        assert np.linalg.norm(grads[0]) == pytest.approx(min(norm, wanted), rel=1e-5)
    restored = gg.AutoClip()
    restored.load_state_dict(clipper.state_dict())
    probe = layer_with_norm(rng, 3.0).astype(np.float64)
    assert restored([probe.copy()]) == clipper([probe.copy()])


def test_zclip_matches_the_paper_rule():
    rng = np.random.default_rng(11)
    arrays = [layer_with_norm(rng, n).astype(np.float64) for n in norm_sequence(10) * 0.5]
    norms = [float(np.linalg.norm(a)) for a in arrays]
    clipper = gg.ZClip(alpha=0.97, z_thresh=2.5, max_grad_norm=5.0, warmup_steps=25)
    expected = reference_zclip(norms, 0.97, 2.5, 5.0, 1e-6, 25)
    for array, wanted in zip(arrays, expected):
        grads = [array]
        seen, threshold = clipper(grads)
        assert threshold == pytest.approx(wanted, rel=1e-9)
        assert np.linalg.norm(grads[0]) == pytest.approx(min(seen, wanted), rel=1e-5)
    assert clipper.mean is not None and math.isfinite(clipper.var)


@pytest.mark.parametrize("clipper", [gg.AutoClip(), gg.ZClip(warmup_steps=2)], ids=["AutoClip", "ZClip"])
def test_adaptive_clippers_refuse_before_recording(clipper):
    frozen = np.ones(10, np.float32)
    frozen.flags.writeable = False
    before = clipper.state_dict()
    with pytest.raises(ValueError, match="read-only"):
        clipper([np.ones(10, np.float32), frozen])
    after = clipper.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(np.asarray(before[key], dtype=object), np.asarray(after[key], dtype=object))


def test_autoclip_clips_at_the_percentile_itself():
    grads = [np.full(4, 3.0, np.float32)]
    norm, threshold = gg.AutoClip(percentile=10)(grads)
    assert norm == threshold == 6.0
    expected = [np.full(4, 3.0, np.float32)]
    gg.clip_by_global_norm(expected, threshold)
    np.testing.assert_array_equal(grads[0], expected[0])
    assert grads[0][0] < 3.0


def test_a_nonfinite_norm_does_not_poison_zclip():
    clipper = gg.ZClip(warmup_steps=5, max_grad_norm=None)
    for norm in (1.0, 1.1, 0.9, 1.0, 1.05):
        clipper.observe(norm)
    boundary = clipper.mean + clipper.z_thresh * clipper.var**0.5
    assert clipper.observe(math.nan) == pytest.approx(boundary)
    assert clipper.observe(math.inf) == pytest.approx(boundary)
    assert math.isfinite(clipper.mean) and math.isfinite(clipper.var)
    spike = [np.full(4, 5e5)]  # norm 1e6
    norm, threshold = clipper(spike)
    assert norm == 1e6 and threshold < 10 and np.linalg.norm(spike[0]) < 10


def test_a_nonfinite_norm_during_warm_up_is_not_counted():
    clipper = gg.ZClip(warmup_steps=3, max_grad_norm=2.0)
    assert clipper.observe(math.nan) == 2.0
    for norm in (1.0, 1.0, 1.0):
        clipper.observe(norm)
    assert clipper.mean == 1.0 and clipper.var == 0.0


@pytest.mark.parametrize(
    "clipper, state, words",
    [
        (gg.ZClip, {"mean": "x"}, "ZClip state_dict: missing"),
        (gg.AutoClip, {"x": 1}, "AutoClip state_dict: missing"),
        (gg.ZClip, [1, 2], "takes the dict"),
        (gg.AutoClip, {"percentile": 10.0, "history": None, "norms": ["a"]}, "norms"),
        (gg.ZClip, dict(gg.ZClip().state_dict(), warmup=[1.0] * 30), "warm-up"),
        (gg.ZClip, dict(gg.ZClip().state_dict(), mean=1.0, var=1.0, warmup=[1.0]), "warm-up is over"),
        (gg.ZClip, dict(gg.ZClip().state_dict(), mean="x", var=1.0), "mean"),
    ],
)
def test_clipper_state_dicts_are_checked_with_messages_that_say_what_is_wrong(clipper, state, words):
    target = clipper()
    for norm in (1.0, 2.0, 3.0):
        target.observe(norm)
    before = repr(target.state_dict())
    with pytest.raises((TypeError, ValueError), match=words):
        target.load_state_dict(state)
    assert repr(target.state_dict()) == before
