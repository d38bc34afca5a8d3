"""Gathering what a run (or several) measured into per-layer tables: no plotting here (no matplotlib).

Per run: the probes (``encoder/probes.json``), the encoder invariance and the decoder scores averaged over
every ``samples/*/scores.json``. Across runs: the width series (E/N) and a Markdown table of the probes.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.layers import TRUNK, is_head
from rcdm_viz.records import (
    DECODER_METRICS,
    N_IMAGES,
    RETENTION_MEAN,
    ImageScores,
    LayerScores,
    Metric,
    legacy_metrics,
)
from rcdm_viz.runs import RunDir, atomic_write_text, read_json


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def decoder_scores(run: RunDir) -> tuple[dict[str, LayerScores], dict]:
    """Decoder scores per layer averaged over every ``samples/*/scores.json``; and what they are based on.

    Returns ({layer: the mean of each score}, info) with info = {"distance": names, "images": ids,
    "n_images": {layer: how many images scored it}}. A scores.json that cannot be read is a one-line error.
    """
    files = sorted((run.root / "samples").glob("*/scores.json"))
    per_layer: dict[str, list[LayerScores]] = {}
    distances, images = set(), []
    for path in files:
        try:
            scores = ImageScores.from_json(read_json(path))
        except ValueError as err:
            raise RcdmVizError(f"'{path}' cannot be read: {err}; sample that image again") from None
        distances.add(scores.distance)
        images.append(path.parent.name)
        for layer, row in scores.layers.items():
            per_layer.setdefault(layer, []).append(row)
    out = {layer: _mean_scores(rows) for layer, rows in per_layer.items()}
    counts = {layer: len(rows) for layer, rows in per_layer.items()}
    return out, {"distance": sorted(d for d in distances if d), "images": images, N_IMAGES: counts}


def _mean_scores(rows: list[LayerScores]) -> LayerScores:
    """The mean of every score over ``rows`` (non-finite and missing values left out)."""
    means = {m.key: mean_finite([getattr(r, m.key) for r in rows]) for m in DECODER_METRICS}
    factors = sorted({f for r in rows for f in r.factor_retention or {}})
    retention = [r.factor_retention or {} for r in rows]
    kept = {f: mean_finite([r.get(f) for r in retention]) for f in factors} or None
    return LayerScores(**means, factor_retention=kept)


def gather_run(run: RunDir) -> dict:
    """Everything known per layer of a run: {"run", "width", "method", "chance", "layers": {layer: row}}.

    Raises a one-line error when the run has neither probes nor decoder scores.
    """
    probes = run.read_probes()
    scores, info = decoder_scores(run)
    if probes is None and not scores:
        raise RcdmVizError(
            f"nothing to report in '{run.root}': no {run.probes} and no samples/*/scores.json; "
            "run `rcdm-viz probe` (and `rcdm-viz sample --scores`) first"
        )
    layers: dict[str, dict] = {}
    if probes is not None:
        for name, row in probes.layers.items():
            layers[name] = row.to_json()
            if row.factor_r2:
                layers[name]["factor_r2_mean"] = mean_finite(list(row.factor_r2.values()))
        for name, row in probes.invariance.items():
            layers.setdefault(name, {})["invariance"] = row
    for name, row in scores.items():
        gathered = row.to_json()
        if row.factor_retention:
            gathered[RETENTION_MEAN.key] = mean_finite(list(row.factor_retention.values()))
        layers.setdefault(name, {})["decoder"] = {**gathered, N_IMAGES: info[N_IMAGES][name]}
    config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    encoder_cfg = read_json(run.encoder / "config.json") if (run.encoder / "config.json").is_file() else {}
    return {
        "run": str(run.root),
        "width": encoder_cfg.get("width"),
        "head": encoder_cfg.get("head"),
        "method": (config.get("ssl") or {}).get("method"),
        "chance": probes.chance if probes else None,
        "probe_metrics": [m.to_json() for m in probes.metrics] if probes else [],
        "distance": info["distance"],
        "scored_images": info["images"],
        "layers": layers,
    }


def flat_rows(summary: dict) -> list[dict]:
    """One flat dict per layer (nested scores as ``group/name`` columns), for CSV."""
    rows = []
    for layer, row in summary["layers"].items():
        flat: dict = {"layer": layer}
        for key, value in row.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, dict):
                        flat.update({f"{key}/{sub}/{k}": x for k, x in v.items()})
                    else:
                        flat[f"{key}/{sub}"] = v
            else:
                flat[key] = value
        rows.append(flat)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------- across runs


def probe_metrics(summaries: Sequence[dict]) -> list[Metric]:
    """The probe accuracies the runs' probes.json files name, in their order (the first run's first); a
    summary written before they were named: its rows' accuracy keys."""
    found: list[Metric] = []
    for s in summaries:
        if "probe_metrics" in s:
            found += [Metric.from_json(m) for m in s["probe_metrics"]]
        else:
            found += legacy_metrics(k for row in s["layers"].values() for k in row)
    return list(dict.fromkeys(found))


def run_label(summary: dict) -> str:
    return Path(summary["run"]).name


def by_width(summaries: list[dict]) -> list[dict]:
    """The width series among the runs, sorted by width: runs with probes and a width, of the (method, head)
    that spans the most widths, so that other experiments at one width (e.g. positives) are not joined in."""
    runs = [s for s in summaries if s.get("width") and probe_metrics([s])]
    if not runs:
        return []
    series: dict[tuple, list[dict]] = {}
    for s in runs:
        series.setdefault((s.get("method"), s.get("head")), []).append(s)
    widest = max(series.values(), key=lambda group: len({s["width"] for s in group}))
    return sorted(widest, key=lambda s: s["width"])


def head_layer(summary: dict) -> str | None:
    heads = [n for n in summary["layers"] if is_head(n)]
    return heads[-1] if heads else None


def width_series(
    runs: list[dict], value: Callable[[dict], float]
) -> tuple[list[int], list[float], list[list[float]]]:
    """Runs grouped by width D (several seeds per width): sorted widths, the mean of ``value`` per width, and
    the error bars [below, above] from the mean to the smallest and largest run (matplotlib's ``yerr``)."""
    groups: dict[int, list[float]] = {}
    for s in runs:
        groups.setdefault(s["width"], []).append(value(s))
    widths = sorted(groups)
    finite = [[v for v in groups[w] if math.isfinite(v)] or [math.nan] for w in widths]
    means = [mean_finite(vals) for vals in finite]
    below = [m - min(vals) for m, vals in zip(means, finite, strict=True)]
    above = [max(vals) - m for m, vals in zip(means, finite, strict=True)]
    return widths, means, [below, above]


def seeds_note(runs: list[dict]) -> str:
    counts = Counter(s["width"] for s in runs).values()
    if max(counts) == 1:
        return ""
    n = str(max(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    return f"\n(mean and range of {n} runs per width)"


def distinct_widths(runs: list[dict]) -> int:
    return len({s["width"] for s in runs})


def markdown_table(summaries: list[dict], layers: Sequence[str] = (TRUNK, "head")) -> str:
    """A Markdown table, one row per run x layer ("head" = the run's last projector layer), of the probes."""
    metrics = probe_metrics(summaries)
    lines = [
        "| run | D | layer | " + " | ".join(m.label for m in metrics)
        + " | sparsity | RankMe | factor R² (mean) |",
        "|---|---|---|" + "---|" * len(metrics) + "---|---|---|",
    ]
    for s in summaries:
        for wanted in layers:
            layer = head_layer(s) if wanted == "head" else wanted
            row = s["layers"].get(layer or "", {})
            if not any(m.key in row for m in metrics):
                continue
            accs = " | ".join(f"{100 * row[m.key]:.1f}%" if m.key in row else "-" for m in metrics)
            r2 = f"{row['factor_r2_mean']:.3f}" if "factor_r2_mean" in row else "-"
            stats = f"{100 * row['sparsity']:.1f}% | {row['rankme']:.1f} | {r2}"
            lines.append(f"| {run_label(s)} | {s['width']} | {layer} | {accs} | {stats} |")
    return "\n".join(lines) + "\n"
