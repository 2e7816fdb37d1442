"""`gradguard bench --sections origin`: what finding where a NaN was born costs.

gradguard.torch.origin.NonfiniteOrigin hooks every submodule's forward (the
float32 sum of its output, kept on its device) and every parameter's
post-accumulate-grad (the backward order). Timed here: one forward + backward
of a 4-layer pre-LN transformer encoder (d = 256, 4 heads, FFN 1024, a
1000-token embedding and head; a batch of 16 x 128 tokens), with and without
the hooks, interleaved medians. The hooks read nothing back on a healthy step.
"""

from __future__ import annotations

from .harness import interleaved_medians, torch

__all__ = ["measure_origin", "format_origin"]


def _model():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True, norm_first=True)
    return torch.nn.Sequential(
        torch.nn.Embedding(1000, 256),
        torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False),
        torch.nn.Linear(256, 1000),
    )


def measure_origin(repeat=15):
    """{case: median seconds} of a forward + backward, without and with the hooks, and the modules hooked."""
    from ..torch.origin import NonfiniteOrigin

    plain, hooked = _model(), _model()
    NonfiniteOrigin(hooked)  # its hooks live as long as the model
    tokens = torch.randint(0, 1000, (16, 128), generator=torch.Generator().manual_seed(1))

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(tokens).pow(2).mean().backward()

        return run

    cases = {"forward + backward": step(plain), "with NonfiniteOrigin's hooks": step(hooked)}
    return interleaved_medians(cases, repeat, settle=0.0), sum(1 for _ in hooked.modules())


def format_origin(measured) -> str:
    times, modules = measured
    plain, hooked = times["forward + backward"], times["with NonfiniteOrigin's hooks"]
    return "\n".join(
        [
            f"where a NaN was born: hooks on {modules} modules of a 4-layer d=256 transformer (batch 16 x 128)",
            "",
            f"{'forward + backward (ms)':>24} {'with the hooks (ms)':>20} {'ratio':>6}",
            f"{plain * 1e3:>24.1f} {hooked * 1e3:>20.1f} {hooked / plain:>6.3f}",
        ]
    )
