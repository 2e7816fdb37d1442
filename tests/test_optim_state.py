"""Optimiser state: state_dict round trips resume exactly, and a state_dict is
loaded with the constructor's rules (nothing changes unless all of it is valid)."""

import math

import numpy as np
import pytest

import gradguard as gg


def test_half_valid_state_dict_changes_nothing():
    optimizer = _adam()
    saved = optimizer.state_dict()
    broken = optimizer.state_dict()
    broken["hyper"]["lr"] = 0.5
    broken["max_grad_norm"] = 2.0
    broken["step"] = 9
    broken["state"]["exp_avg"] = [np.zeros(4, np.float32)]  # wrong shape, found last
    with pytest.raises(ValueError, match="shape"):
        optimizer.load_state_dict(broken)
    assert optimizer.hyper == saved["hyper"] and optimizer.max_grad_norm == 1.0 and optimizer.step_count == 1
    np.testing.assert_array_equal(optimizer.state["exp_avg"][0], saved["state"]["exp_avg"][0])


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda s: s["hyper"].update(lr=math.nan), ValueError),
        (lambda s: s["hyper"].update(lr=-1.0), ValueError),
        (lambda s: s.update(max_grad_norm=-1.0), ValueError),
        (lambda s: s["hyper"].update(betas=(0.9, 1.0)), ValueError),
        (lambda s: s["hyper"].pop("eps"), ValueError),
        (lambda s: s.pop("step"), KeyError),
        (lambda s: s["state"].update(exp_avg=[np.zeros(3, np.complex64)]), TypeError),
        (lambda s: s["state"].update(momentum_buffer=[np.zeros(3, np.float32)]), ValueError),
        (lambda s: s.update(kind="SGD"), ValueError),
    ],
)
def test_invalid_optimizer_state_refused(change, error):
    optimizer = _adam()
    state = optimizer.state_dict()
    change(state)
    before = optimizer.state_dict()
    with pytest.raises(error):
        optimizer.load_state_dict(state)
    assert optimizer.state_dict()["hyper"] == before["hyper"] and optimizer.step_count == before["step"]


def test_sgd_state_into_adam_refused():
    params = [np.ones(3, np.float32)]
    sgd = gg.optim.SGD(params, lr=0.1, momentum=0.9)
    sgd.step([np.ones(3, np.float32)])
    with pytest.raises(ValueError):
        gg.optim.Adam([np.ones(3, np.float32)]).load_state_dict(sgd.state_dict())


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(10)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(7, 5), (33,), (300, 17), (1,)]]
    sequence = [[(rng.standard_normal(p.shape) * 3).astype(np.float32) for p in params] for _ in range(20)]
    optimizer = gg.optim.Adam(params, lr=0.01, amsgrad=True, max_grad_norm=1.0)
    for grads in sequence[:10]:
        optimizer.step(grads)
    saved_params = [p.copy() for p in params]
    saved = optimizer.state_dict()
    for grads in sequence[10:]:
        optimizer.step(grads)
    finished = [p.copy() for p in params]
    resumed_params = [p.copy() for p in saved_params]
    resumed = gg.optim.Adam(resumed_params, lr=0.5)
    resumed.load_state_dict(saved)
    for grads in sequence[10:]:
        resumed.step(grads)
    for a, b in zip(resumed_params, finished):
        assert a.tobytes() == b.tobytes()
    assert resumed.step_count == 20 and saved["step"] == 10


def _adam():
    params = [np.ones(3, np.float32)]
    optimizer = gg.optim.Adam(params, lr=0.1, max_grad_norm=1.0)
    optimizer.step([np.full(3, 0.5, np.float32)])
    return optimizer


def test_max_grad_norm_set_after_construction_is_checked_at_the_step():
    params = [np.ones(3, np.float32)]
    optimizer = gg.optim.SGD(params, lr=0.1)
    optimizer.max_grad_norm = -1.0
    with pytest.raises(ValueError, match="max_grad_norm"):
        optimizer.step([np.ones(3, np.float32)])
    optimizer.max_grad_norm = float("nan")
    with pytest.raises(ValueError, match="max_grad_norm"):
        optimizer.step([np.ones(3, np.float32)])
    assert (params[0] == 1).all() and optimizer.step_count == 0


def test_a_fault_in_a_later_group_is_named_by_its_group():
    first, second = np.ones(3, np.float32), np.ones(3, np.float32)
    optimizer = gg.optim.SGD([{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1)
    state = optimizer.state_dict()
    state["param_groups"][1]["lr"] = -1
    with pytest.raises(ValueError, match=r"state_dict\['param_groups'\]\[1\]: lr must be"):
        optimizer.load_state_dict(state)
    state = optimizer.state_dict()
    state["param_groups"][1]["bogus"] = 1
    with pytest.raises(ValueError, match=r"state_dict\['param_groups'\]\[1\] has keys"):
        optimizer.load_state_dict(state)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.5]
