"""Typed records of the files a run holds: one dataclass per file, the one place that spells its keys.

Each record has ``to_json`` (the dict written) and ``from_json`` (the dict read back, every field's type
checked). A file of another version, or with a field of the wrong type, is a ``ValueError`` naming the
field; the readers that face user files (the browser) turn it into a one-line notice for that item.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_NUMBER = (int, float)


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = dataclasses.MISSING
           ) -> Any:
    """``obj[key]`` checked to be ``kind`` (a bool is not a number); ``default`` when absent."""
    if key not in obj:
        if default is dataclasses.MISSING:
            raise ValueError(f"field '{key}' is missing")
        return default
    value = obj[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ValueError(f"field '{key}' is {type(value).__name__}, not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _strings(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    values = _field(obj, key, list)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"field '{key}' must be a list of names")
    return tuple(values)


@dataclass(frozen=True)
class SampleMeta:
    """``samples/<id>/meta.json``: a grid's layers (its rows, in order) and every setting that decides its
    pixels. Interpolation grids (``sample --interpolate``) add ``columns`` and the mixing weights ``alpha``.
    A setting missing from an older file reads as None; a setting of the wrong type is an error."""

    layers: tuple[str, ...]
    n: int | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    resolution: int | None = None
    columns: int | None = None
    alpha: tuple[float, ...] | None = None

    FORMAT = 1  # meta.json written before the format key existed reads as format 1

    @property
    def is_interpolation(self) -> bool:
        return self.alpha is not None

    def to_json(self) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        listed = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
        return {"format": self.FORMAT, **listed}

    @classmethod
    def from_json(cls, obj: Any) -> SampleMeta:
        if not isinstance(obj, dict):
            raise ValueError(f"meta.json holds a {type(obj).__name__}, not a mapping")
        fmt = obj.get("format", 1)
        if fmt != cls.FORMAT:
            raise ValueError(f"meta.json has format {str(fmt)[:20]!r}; this version reads {cls.FORMAT}")
        alpha = _field(obj, "alpha", list, None)
        if alpha is not None and not all(isinstance(a, _NUMBER) and not isinstance(a, bool) for a in alpha):
            raise ValueError("field 'alpha' must be a list of numbers")
        guidance = _field(obj, "guidance", _NUMBER, None)
        return cls(
            layers=_strings(obj, "layers"),
            n=_field(obj, "n", int, None),
            sampler=_field(obj, "sampler", str, None),
            steps=_field(obj, "steps", int, None),
            guidance=None if guidance is None else float(guidance),
            seed=_field(obj, "seed", int, None),
            resolution=_field(obj, "resolution", int, None),
            columns=_field(obj, "columns", int, None),
            alpha=None if alpha is None else tuple(float(a) for a in alpha),
        )
