"""pytest-benchmark: a transformer's forward + backward without and with
NonfiniteOrigin's hooks (what finding where a NaN was born costs); the
interleaved form is `gradguard bench --sections origin`."""

import pytest

torch = pytest.importorskip("torch")

from gradguard.bench.origin import _model  # noqa: E402
from gradguard.torch.origin import NonfiniteOrigin  # noqa: E402


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "origin-hooks"])
def test_forward_backward(benchmark, hooked):
    model = _model()
    origin = NonfiniteOrigin(model) if hooked else None
    tokens = torch.randint(0, 1000, (16, 128), generator=torch.Generator().manual_seed(1))

    def step():
        model.zero_grad(set_to_none=True)
        model(tokens).pow(2).mean().backward()

    benchmark(step)
    if origin is not None:
        assert origin.origin([]) is None  # a healthy step: nothing to name
        origin.remove()
