"""Sampling options declared once by the family that takes them: kind, default, range or choices, help.

A family lists its `OptionSpec`s in `option_specs`; its `sample_options` (name -> default) is derived
from them. The API validates every call against the specs (`check_option`), and the CLI and the HTTP
server offer and check exactly these, so no range is written anywhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

OptionValue = Union[int, float, str]


@dataclass(frozen=True)
class OptionSpec:
    """One keyword option of a family's sample(): "int" and "float" with an inclusive [min, max] (None:
    unbounded on that side), "choice" with its choices."""

    name: str
    kind: Literal["int", "float", "choice"]
    default: OptionValue
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    def __post_init__(self):
        if self.kind not in ("int", "float", "choice"):
            raise ValueError(f"option {self.name}: kind must be int, float or choice, got {self.kind!r}")
        if (self.kind == "choice") != (self.choices is not None):
            raise ValueError(f"option {self.name}: choices go with kind 'choice' and only with it")
        object.__setattr__(self, "default", self.check(self.default))  # a declaration's own default must pass

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of: " + ", ".join(self.choices or ())
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"{'an integer' if self.kind == 'int' else 'a finite number'} in [{lo}, {hi}]"

    def check(self, value) -> OptionValue:
        """value if it is valid for this option (an int where "float" is due becomes a float), else a
        ValueError naming the option and its valid range."""
        bad = ValueError(f"sampling option {self.name} must be {self.range_text()}, got {value!r}")
        if self.kind == "choice":
            if not isinstance(value, str) or value not in (self.choices or ()):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise bad
            value = int(value) if math.isfinite(value) else value
        if not math.isfinite(value):  # NaN passes every range test
            raise bad
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise bad
        return float(value) if self.kind == "float" else int(value)


def option_defaults(specs: tuple[OptionSpec, ...]) -> dict[str, OptionValue]:
    """name -> default of each declared option: a family's `sample_options`."""
    return {s.name: s.default for s in specs}
