"""The valid ranges of config fields: rules that ``rcdm_viz.config``'s dataclasses check their fields with
(NaN and inf are never valid numbers)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from rcdm_viz.errors import RcdmVizError

Rule = tuple[Callable[[Any], bool], str]  # (is the value valid, what a valid value is)


def finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float) -> Rule:
    return (lambda v: finite_number(v) and v >= low), f"a number >= {low}"


def above(low: float) -> Rule:
    return (lambda v: finite_number(v) and v > low), f"a number > {low}"


def between(low: float, high: float) -> Rule:
    return (lambda v: finite_number(v) and low <= v <= high), f"a number in [{low}, {high}]"


def each(rule: Rule, nonempty: bool = False) -> Rule:
    ok, want = rule
    return (lambda v: (len(v) > 0 or not nonempty) and all(ok(x) for x in v)), f"a list of {want}"


def check_fields(section: str, obj: Any, rules: dict[str, Rule]) -> None:
    """One-line error naming the first field of ``obj`` outside its valid range (NaN and inf never are)."""
    for name, (ok, want) in rules.items():
        value = getattr(obj, name)
        if not ok(value):
            raise RcdmVizError(f"bad value {value!r} for '{section}.{name}' (expected {want})")
