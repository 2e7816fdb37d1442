"""Typed settings: a frozen dataclass whose fields carry their own rule.

One description per set of settings (an optimiser's hyperparameters, the
monitor's thresholds) names each setting once, with its default, its check
and its one-line meaning; the constructor signature, the validation, the
dict form and the documentation are all read from it.

    @dataclass(frozen=True)
    class Thresholds(Settings):
        floor: float = setting(1e-10, number(low=0.0), "norm below this is vanishing outright")
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, asdict, field, fields
from typing import Callable

from ._arguments import boolean, positive_int, real


def setting(default=MISSING, check: Callable = None, doc: str = ""):
    """A dataclass field with its check (value, name) -> checked value and its meaning."""
    return field(default=default, metadata={"check": check, "doc": doc})


class Settings:
    """Mixin for frozen dataclasses of settings: every field is checked by its
    rule at construction (and check_together() for rules that span fields)."""

    def __post_init__(self):
        for spec in fields(self):
            check = spec.metadata.get("check")
            if check is not None:
                object.__setattr__(self, spec.name, check(getattr(self, spec.name), spec.name))
        self.check_together()

    def check_together(self) -> None:
        """Rules over several fields; the default has none."""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple:
        return tuple(spec.name for spec in fields(cls))

    @classmethod
    def parameters(cls) -> list:
        """The fields as keyword-or-positional inspect.Parameters, for a signature built from them."""
        return [
            inspect.Parameter(
                spec.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=inspect.Parameter.empty if spec.default is MISSING else spec.default,
            )
            for spec in fields(cls)
        ]

    @classmethod
    def documentation(cls) -> str:
        """One line per field: name=default  meaning."""
        lines = []
        for spec in fields(cls):
            default = "required" if spec.default is MISSING else f"{spec.default!r}"
            lines.append(f"    {spec.name}={default}  {spec.metadata.get('doc', '')}".rstrip())
        return "\n".join(lines)


def number(*, low=None, high=None, low_open=False, high_open=False, allow_inf=True):
    """A rule: a real number in the interval (NaN refused; inf only with allow_inf)."""

    def check(value, name):
        return real(value, name, low=low, high=high, low_open=low_open, high_open=high_open, allow_inf=allow_inf)

    return check


def integer(minimum=1):
    """A rule: an int >= minimum (bool and floats refused)."""

    def check(value, name):
        return positive_int(value, name, minimum)

    return check


def flag(value, name):
    """A rule: a bool (NumPy's included)."""
    return boolean(value, name)


def pair(rule, description):
    """A rule: a pair (list or tuple of two), each checked by `rule` as name[0], name[1]."""

    def check(value, name):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"{name} must be a pair {description}, got {value!r}")
        return (rule(value[0], f"{name}[0]"), rule(value[1], f"{name}[1]"))

    return check
