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


def _checked_file(obj: Any, name: str, version: int) -> dict[str, Any]:
    """``obj`` (a file's parsed JSON) when it is a mapping of format ``version`` (files written before the
    format key existed read as format 1)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{name} holds a {type(obj).__name__}, not a mapping")
    fmt = obj.get("format", 1)
    if fmt != version:
        raise ValueError(f"{name} has format {str(fmt)[:20]!r}; this version reads {version}")
    return obj


def _rows_json(rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: row.to_json() for name, row in rows.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


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
        obj = _checked_file(obj, "meta.json", cls.FORMAT)
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


# ------------------------------------------------------------------------------------ encoder/probes.json


@dataclass(frozen=True)
class Metric:
    """A per-layer number a run records: its key in the files, a short column name, a legend label."""

    key: str
    short: str
    label: str


LINEAR = Metric("linear_acc", "linear", "linear")
MLP = Metric("mlp_acc", "mlp", "MLP")
KNN = Metric("knn_acc", "knn", "kNN (k=20)")
BINARY = Metric("binary_acc", "binary", "linear, binarized")
PROBE_ACCURACIES = (LINEAR, MLP, KNN, BINARY)  # the probes' accuracies, in the order tables show them
FACTOR_R2 = "factor_r2"


@dataclass(frozen=True)
class ProbeRow:
    """One layer's probes (``evaluation.probes.probe_layer``): accuracies in [0, 1] on the validation split,
    sparsity, RankMe, and on synthetic scenes the factor R² with the ridge penalty chosen per factor."""

    dim: int
    linear_acc: float
    knn_acc: float
    binary_acc: float
    sparsity: float
    rankme: float
    mlp_acc: float | None = None
    factor_r2: dict[str, float] | None = None
    factor_ridge: dict[str, float] | None = None

    def accuracy(self, metric: Metric) -> float | None:
        return getattr(self, metric.key)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any) -> ProbeRow:
        if not isinstance(obj, dict):
            raise ValueError(f"a probe row is a {type(obj).__name__}, not a mapping")
        numbers = {f.name: _field(obj, f.name, _NUMBER, None) for f in dataclasses.fields(cls)
                   if f.name not in ("dim", FACTOR_R2, "factor_ridge")}
        for key in ("linear_acc", "knn_acc", "binary_acc", "sparsity", "rankme"):
            if numbers[key] is None:
                raise ValueError(f"field '{key}' is missing")
        return cls(dim=_field(obj, "dim", int), **numbers, factor_r2=_numbers(obj, FACTOR_R2),
                   factor_ridge=_numbers(obj, "factor_ridge"))


def _numbers(obj: dict[str, Any], key: str) -> dict[str, float] | None:
    values = _field(obj, key, dict, None)
    if values is not None and not all(_is_number(v) for v in values.values()):
        raise ValueError(f"field '{key}' must map names to numbers")
    return values


@dataclass(frozen=True)
class ProbeReport:
    """``encoder/probes.json``: every layer's probes, the encoder's invariance per augmentation, the chance
    accuracy, the split sizes, the encoder's fingerprint and width, and the probe config."""

    layers: dict[str, ProbeRow]
    invariance: dict[str, dict[str, float]]
    chance: float
    n_train: int
    n_val: int
    n_invariance: int
    encoder: str
    width: int | None
    probe: dict[str, Any]

    FORMAT = 1

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **dataclasses.asdict(self), "layers": _rows_json(self.layers)}

    @classmethod
    def from_json(cls, obj: Any) -> ProbeReport:
        obj = _checked_file(obj, "probes.json", cls.FORMAT)
        layers = _field(obj, "layers", dict)
        invariance = _field(obj, "invariance", dict, {})
        if not all(isinstance(v, dict) for v in invariance.values()):
            raise ValueError("field 'invariance' must map layers to scores")
        return cls(
            layers={str(name): ProbeRow.from_json(row) for name, row in layers.items()},
            invariance=invariance,
            chance=float(_field(obj, "chance", _NUMBER)),
            n_train=_field(obj, "n_train", int), n_val=_field(obj, "n_val", int),
            n_invariance=_field(obj, "n_invariance", int, 0),
            encoder=_field(obj, "encoder", str, ""), width=_field(obj, "width", int, None),
            probe=_field(obj, "probe", dict, {}),
        )


# --------------------------------------------------------------------------- samples/<id>/scores.json

FIDELITY = Metric("fidelity", "fidelity", "fidelity (distance to input)")
DIVERSITY = Metric("diversity", "diversity", "diversity (distance between samples)")
CONSISTENCY = Metric("consistency", "cons", "representation consistency")
RETRIEVAL = Metric("retrieval_top1", "retrieval", "retrieval top-1")
SHAPE_KEPT = Metric("shape_kept", "shape kept", "shape kept")
GRAIN = Metric("grain", "grain", "grain (samples / input)")
RETENTION_MEAN = Metric("retention_mean", "retention", "factor retention (mean)")  # over factors, gathered
DECODER_METRICS = (FIDELITY, DIVERSITY, CONSISTENCY, RETRIEVAL, SHAPE_KEPT, GRAIN)  # one number per layer
FACTOR_RETENTION = "factor_retention"  # factor -> retention, per layer
N_IMAGES = "n_images"  # how many scored images a gathered mean is over


@dataclass(frozen=True, kw_only=True)
class LayerScores:
    """One layer's samples of one input scored (``evaluation.scores``): the numbers of DECODER_METRICS, in
    their order (diversity needs two samples; shape kept and factor retention need the scenes' oracle)."""

    fidelity: float
    diversity: float | None = None
    consistency: float
    retrieval_top1: float
    shape_kept: float | None = None
    grain: float
    factor_retention: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any) -> LayerScores:
        if not isinstance(obj, dict):
            raise ValueError(f"a layer's scores are a {type(obj).__name__}, not a mapping")
        numbers = {m.key: _field(obj, m.key, _NUMBER, None) for m in DECODER_METRICS}
        for metric in (FIDELITY, CONSISTENCY, RETRIEVAL, GRAIN):
            if numbers[metric.key] is None:
                raise ValueError(f"field '{metric.key}' is missing")
        return cls(**numbers, factor_retention=_numbers(obj, FACTOR_RETENTION))


@dataclass(frozen=True)
class ImageScores:
    """``samples/<id>/scores.json``: every layer's scores for one input, the perceptual distance used, the
    number of samples and of gallery images, and the oracle's own validation quality when it was used."""

    distance: str
    n: int
    gallery: int
    layers: dict[str, LayerScores]
    oracle_val_r2: dict[str, float] | None = None
    oracle_val_shape_accuracy: float | None = None

    FORMAT = 1

    def to_json(self) -> dict[str, Any]:
        present = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {"format": self.FORMAT, **present, "layers": _rows_json(self.layers)}

    @classmethod
    def from_json(cls, obj: Any) -> ImageScores:
        obj = _checked_file(obj, "scores.json", cls.FORMAT)
        layers = _field(obj, "layers", dict)
        return cls(
            distance=_field(obj, "distance", str), n=_field(obj, "n", int),
            gallery=_field(obj, "gallery", int),
            layers={str(name): LayerScores.from_json(row) for name, row in layers.items()},
            oracle_val_r2=_numbers(obj, "oracle_val_r2"),
            oracle_val_shape_accuracy=_field(obj, "oracle_val_shape_accuracy", _NUMBER, None),
        )
