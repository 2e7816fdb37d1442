"""The detection benchmark's runs show what their ground truth says, and its score is computed right."""

import pytest

from gradguard.bench import detection


@pytest.mark.parametrize("spec", detection.corpus(), ids=lambda spec: spec.name)
def test_every_run_shows_its_ground_truth(spec):
    record = detection.run(spec)
    record.verify()  # a healthy run trains; a sick run shows its sickness in its own record
    assert len(record.losses) == spec.steps and len(record.norms) == spec.steps
    if not spec.healthy:
        assert set(record.affected) <= set(range(len(record.layers)))


def test_runs_are_deterministic():
    spec = detection.corpus()[0]
    first, second = detection.run(spec), detection.run(spec)
    assert first.losses == second.losses and first.norms == second.norms


def test_score_counts_false_findings_and_detections():
    healthy, sick = detection.corpus()[0], [s for s in detection.corpus() if s.sickness == "nonfinite"][0]
    rows = detection.score([detection.run(healthy), detection.run(sick)])
    assert rows[0]["healthy"] and isinstance(rows[0]["false_findings"], dict)
    # an inf injected into a gradient is reported as exploding at once, on that layer
    assert rows[1]["detected"] and rows[1]["delay"] == 0 and rows[1]["precision"] == 1.0
    assert "detected: yes" in detection.format_score(rows)


def test_a_silent_monitor_detects_nothing():
    class Silent:
        def update(self, grads, params=None, step=None, step_report=None, loss=None):
            return []

    sick = [s for s in detection.corpus() if not s.healthy]
    rows = detection.score([detection.run(spec, make_monitor=lambda names: Silent()) for spec in sick[:2]])
    assert not any(row["detected"] for row in rows)


def test_the_guard_rescues_runs_that_blow_up():
    specs = [s for s in detection.corpus() if s.sickness in ("lr_explosion", "nonfinite")]
    rows = detection.guard_comparison(specs)
    assert all(without and not with_guard for _, without, with_guard in rows)
    assert "with it" in detection.format_guard_comparison(rows)
