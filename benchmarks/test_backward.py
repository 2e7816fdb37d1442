"""pytest-benchmark: backward, then clip + AdamW, on a gpt2-small-shaped torch
transformer: torch (clip_grad_norm_ + AdamW(fused=True)) against gradguard
(BackwardNorm takes the norm during backward; gg.optim.AdamW folds the clip
into its step). Each round's forward (and, for the step, backward) is setup,
not timed."""

import copy

import pytest

torch = pytest.importorskip("torch")

import gradguard as gg  # noqa: E402
from gradguard.bench.backward import GPT2Shaped, check_shapes  # noqa: E402
from gradguard.torch import BackwardNorm  # noqa: E402

BATCH, LENGTH, MAX_NORM, LR = 4, 64, 1.0, 1e-4


@pytest.fixture(scope="module")
def setups():
    torch_model = GPT2Shaped()
    check_shapes(torch_model)
    ours = copy.deepcopy(torch_model)
    tracker = BackwardNorm(list(ours.named_gpt2_parameters()))
    optimizer = gg.optim.AdamW({n: t.detach().numpy() for n, t in tracker.named}, lr=LR, max_grad_norm=MAX_NORM)
    tokens = torch.randint(0, 50257, (BATCH, LENGTH + 1), generator=torch.Generator().manual_seed(1))
    yield {
        "torch": (torch_model, torch.optim.AdamW(torch_model.parameters(), lr=LR, fused=True)),
        "gradguard": (ours, (tracker, optimizer)),
        "tokens": tokens,
    }
    tracker.remove()


def _fresh_loss(setups, implementation):
    """Gradients cleared (and the tracker's partials), then an untimed forward."""
    model, optimizer = setups[implementation]
    if implementation == "gradguard":
        optimizer[0].reset()
    model.zero_grad(set_to_none=True)
    return model.loss(setups["tokens"])


@pytest.mark.parametrize("implementation", ["torch", "gradguard"])
def test_backward(benchmark, setups, implementation):
    benchmark.group = "gpt2-small-shaped backward (gradguard: norm partials taken in the hooks)"

    def setup():
        return (_fresh_loss(setups, implementation),), {}

    benchmark.pedantic(lambda loss: loss.backward(), setup=setup, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("implementation", ["torch", "gradguard"])
def test_clip_and_step(benchmark, setups, implementation):
    model, optimizer = setups[implementation]
    benchmark.group = "gpt2-small-shaped clip + AdamW step"

    def setup():
        _fresh_loss(setups, implementation).backward()
        return (), {}

    if implementation == "torch":

        def step():
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            optimizer.step()

    else:
        tracker, ours = optimizer

        def step():
            tracker.step(ours)

    benchmark.pedantic(step, setup=setup, rounds=3, warmup_rounds=1)
