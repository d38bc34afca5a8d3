"""The probes of a run: every probe at every layer of its encoder, plus encoder invariance, into
``encoder/probes.json``; and the plain-text table the CLI prints.

Features of every layer come from ONE pass over the images and are cached in
``features/probe-<split>/<layer>.safetensors`` (``rcdm_viz.features``), keyed by the encoder's fingerprint
and the image set. The maths is in ``rcdm_viz.evaluation.probes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from rcdm_viz.config import Config, to_dict
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.data.synthetic import CIRCULAR, FACTOR_RANGES
from rcdm_viz.encoders import load_encoder
from rcdm_viz.evaluation import probes
from rcdm_viz.evaluation.invariance import encoder_invariance
from rcdm_viz.features import FeatureTable, cached_features
from rcdm_viz.records import ProbeReport
from rcdm_viz.runs import RunDir, write_json


def format_table(report: ProbeReport) -> str:
    """A plain-text table of per-layer probe results (accuracies in %, factor R² averaged)."""
    lines = [f"{'layer':<8} {'dim':>6} " + " ".join(f"{m.short:>7}" for m in report.metrics)
             + f" {'sparsity':>8} {'rankme':>7} {'factor R2':>9}"]
    for name, row in report.layers.items():
        accs = " ".join(f"{'-':>7}" if (acc := row.accuracy(m)) is None else f"{100 * acc:>6.1f}%"
                        for m in report.metrics)
        r2 = row.factor_r2
        r2_text = f"{sum(r2.values()) / len(r2):>9.3f}" if r2 else f"{'-':>9}"
        lines.append(f"{name:<8} {row.dim:>6} {accs} {row.sparsity:>8.3f} {row.rankme:>7.1f} {r2_text}")
    lines.append(f"(chance: {100 * report.chance:.1f}%; factor R2 = mean over factors)")
    return "\n".join(lines)


def _factor_info(images: ImageSet) -> tuple[dict[str, tuple[float, float]], tuple[str, ...]] | None:
    if not images.factors:
        return None
    return FACTOR_RANGES, CIRCULAR


class _Loaded(Mapping):
    """layer -> float32 [N, D], read from its memory-mapped cache file when asked: the probes of one layer
    hold that layer of the probe split alone, never every layer at once."""

    def __init__(self, tables: dict[str, FeatureTable]) -> None:
        self.tables = tables

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tables[name].float()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


def probe_run(
    cfg: Config, run: RunDir, progress: bool = True, layers: str | Sequence[str] | None = None
) -> ProbeReport:
    """Every probe at every layer of a run's encoder, plus encoder invariance; writes encoder/probes.json
    (``records.ProbeReport``) and returns it."""
    encoder = load_encoder(run.require_encoder())
    names = encoder.select_layers(layers, stages=True)
    res = encoder.config["resolution"]
    n_train = cfg.probe.n_train or cfg.data.n_train
    train = load_images(cfg.data, "train", n=n_train, resolution=res, progress=progress)
    val = load_images(cfg.data, "val", resolution=res, progress=progress)
    feats = {}
    for split, images in (("train", train), ("val", val)):
        cached = cached_features(encoder, images, encoder.all_layer_names, run.features / f"probe-{split}",
                                 progress=progress)
        feats[split] = _Loaded(cached)
    train_t = val_t = None
    if (info := _factor_info(train)) is not None and val.factors is not None:
        train_t = probes.factor_targets(train.factors, *info)
        val_t = probes.factor_targets(val.factors, *info)
    results = probes.probe_layers(
        _Loaded({k: feats["train"].tables[k] for k in names}), train.labels,
        _Loaded({k: feats["val"].tables[k] for k in names}), val.labels,
        cfg.probe, progress=progress, train_t=train_t, val_t=val_t,
    )
    n_inv = min(len(val), cfg.probe.invariance_images)
    invariance = encoder_invariance(encoder, val.batch(torch.arange(n_inv)), layers=names)
    report = ProbeReport(
        layers=results, metrics=tuple(probe.metric for probe in probes.PROBES), invariance=invariance,
        chance=float(torch.bincount(val.labels).max()) / len(val),
        n_train=len(train), n_val=len(val), n_invariance=n_inv, encoder=encoder.fingerprint(),
        width=encoder.config["width"], probe=to_dict(cfg.probe),
    )
    write_json(run.probes, report.to_json())
    return report
