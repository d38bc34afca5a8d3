"""Typed records of the files a run holds: one dataclass per file, the one place that spells its keys.

Each record has ``to_json`` (the dict written) and ``from_json`` (the dict read back, every field's type
checked). A file of another version, or with a field of the wrong type, is a ``ValueError`` naming the
field; the readers that face user files (the browser) turn it into a one-line notice for that item.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
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

    def to_json(self) -> list[str]:
        return [self.key, self.short, self.label]

    @classmethod
    def from_json(cls, obj: Any) -> Metric:
        if not (isinstance(obj, list) and len(obj) == 3 and all(isinstance(v, str) for v in obj)):
            raise ValueError(f"a metric is [key, short name, label], got {str(obj)[:80]}")
        return cls(*obj)


FACTOR_R2 = "factor_r2"
_ACCURACY_SUFFIX = "_acc"  # probes.json files written before "metrics" existed: their accuracies' keys end so


@dataclass(frozen=True)
class ProbeRow:
    """One layer's probes (``evaluation.probes.probe_layer``): each probe's accuracy in [0, 1] on the
    validation split by its metric key (None: that probe was skipped), sparsity, RankMe, and on synthetic
    scenes the factor R² with the ridge penalty chosen per factor."""

    dim: int
    accuracies: dict[str, float | None]
    sparsity: float
    rankme: float
    factor_r2: dict[str, float] | None = None
    factor_ridge: dict[str, float] | None = None

    def accuracy(self, metric: Metric) -> float | None:
        return self.accuracies.get(metric.key)

    def to_json(self) -> dict[str, Any]:
        fields = {"dim": self.dim, **self.accuracies, "sparsity": self.sparsity, "rankme": self.rankme,
                  FACTOR_R2: self.factor_r2, "factor_ridge": self.factor_ridge}
        return {k: v for k, v in fields.items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any) -> ProbeRow:
        if not isinstance(obj, dict):
            raise ValueError(f"a probe row is a {type(obj).__name__}, not a mapping")
        named = {"dim", "sparsity", "rankme", FACTOR_R2, "factor_ridge"}
        accuracies = {str(k): _field(obj, k, _NUMBER) for k in obj if k not in named}
        return cls(dim=_field(obj, "dim", int), accuracies=accuracies,
                   sparsity=_field(obj, "sparsity", _NUMBER), rankme=_field(obj, "rankme", _NUMBER),
                   factor_r2=_numbers(obj, FACTOR_R2), factor_ridge=_numbers(obj, "factor_ridge"))


def _numbers(obj: dict[str, Any], key: str) -> dict[str, float] | None:
    values = _field(obj, key, dict, None)
    if values is not None and not all(_is_number(v) for v in values.values()):
        raise ValueError(f"field '{key}' must map names to numbers")
    return values


def legacy_metrics(keys: Iterable[str]) -> tuple[Metric, ...]:
    """The probe accuracies among ``keys`` (a row's keys) where no list of metrics was written (files from
    before probes.json named them): every key ending in _acc, named by the rest of the key."""
    names = dict.fromkeys(k for k in keys if k.endswith(_ACCURACY_SUFFIX))
    return tuple(Metric(k, k.removesuffix(_ACCURACY_SUFFIX), k.removesuffix(_ACCURACY_SUFFIX)) for k in names)


@dataclass(frozen=True)
class ProbeReport:
    """``encoder/probes.json``: every layer's probes, the probes' metrics (key, column name, label; in
    table order: the file describes its own columns, so a reader without the probes' code shows them all),
    the encoder's invariance per augmentation, the chance accuracy, the split sizes, the encoder's
    fingerprint and width, and the probe config."""

    layers: dict[str, ProbeRow]
    metrics: tuple[Metric, ...]
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
        return {"format": self.FORMAT, **dataclasses.asdict(self), "layers": _rows_json(self.layers),
                "metrics": [m.to_json() for m in self.metrics]}

    @classmethod
    def from_json(cls, obj: Any) -> ProbeReport:
        obj = _checked_file(obj, "probes.json", cls.FORMAT)
        layers = {str(name): ProbeRow.from_json(row) for name, row in _field(obj, "layers", dict).items()}
        metrics = _field(obj, "metrics", list, None)
        invariance = _field(obj, "invariance", dict, {})
        if not all(isinstance(v, dict) for v in invariance.values()):
            raise ValueError("field 'invariance' must map layers to scores")
        return cls(
            layers=layers,
            metrics=(legacy_metrics(k for row in layers.values() for k in row.accuracies) if metrics is None
                     else tuple(Metric.from_json(m) for m in metrics)),
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


# ------------------------------------------------------------------------------ <bundle>/metrics.jsonl


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """A line of a training's ``metrics.jsonl`` (every ``log_every`` steps): the step, the loss (the mean
    over the steps since the last record for a decoder, the last step's for an encoder), the learning
    rate, the throughput and the processes it was measured on; an encoder's records add the epoch and the
    loss's terms (VICReg's invariance, variance, covariance, ...). Other lines (a warm start's source at
    step 0) are not step records."""

    step: int
    loss: float
    lr: float
    images_per_s: float
    processes: int
    epoch: float | None = None
    terms: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        epoch = {} if self.epoch is None else {"epoch": self.epoch}
        return {"step": self.step, **epoch, "lr": self.lr, "images_per_s": self.images_per_s,
                "processes": self.processes, "loss": self.loss, **self.terms}

    @classmethod
    def from_json(cls, obj: Any) -> StepRecord:
        if not isinstance(obj, dict):
            raise ValueError(f"a metrics line is a {type(obj).__name__}, not a mapping")
        named = {f.name for f in dataclasses.fields(cls)} - {"terms"}
        epoch = _field(obj, "epoch", _NUMBER, None)
        return cls(step=_field(obj, "step", int), loss=float(_field(obj, "loss", _NUMBER)),
                   lr=float(_field(obj, "lr", _NUMBER)),
                   images_per_s=float(_field(obj, "images_per_s", _NUMBER)),
                   processes=_field(obj, "processes", int), epoch=None if epoch is None else float(epoch),
                   terms={str(k): float(_field(obj, k, _NUMBER)) for k in obj if k not in named})


# ---------------------------------------------------------------------------- oracle/<res>px/config.json


@dataclass(frozen=True)
class OracleRecord:
    """``oracle/<res>px/config.json``, beside the factor oracle's weights: the settings it was trained with
    (the cache key: a run whose settings differ trains a new one) and its validation R² per factor and
    shape accuracy."""

    key: dict[str, Any]
    val_r2: dict[str, float]
    val_shape_accuracy: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> OracleRecord:
        if not isinstance(obj, dict):
            raise ValueError(f"the oracle's config.json holds a {type(obj).__name__}, not a mapping")
        return cls(key=_field(obj, "key", dict), val_r2=_numbers(obj, "val_r2") or {},
                   val_shape_accuracy=float(_field(obj, "val_shape_accuracy", _NUMBER)))
