"""Config dataclasses from the objects of fields that JSON gives: one check for every nested config."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_fields(cls: type[T], value: Any, where: str) -> T:
    """`value` as an instance of the dataclass `cls`: an instance stays as it is, an object of its fields (a dict,
    as JSON gives it) is built. A ValueError starting with `where` (the field or file it came from) for anything
    else: not an object, an unknown field (listing the valid ones) or a value the class refuses."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object of fields, got {value!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(names))}")
    try:
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
