"""The report: one table and one plot per question, for a run (``report/``) or across runs.

Per run (``rcdm-viz report --run DIR``): ``layers.csv`` / ``layers.json`` gather the probes
(``encoder/probes.json``), the encoder invariance and the decoder scores averaged over every
``samples/*/scores.json``; plots: probe accuracy per layer (GR Figure 1), factor R² per layer x factor
(GR Figure 2), invariance per layer x augmentation, decoder scores per layer.
Across runs (``rcdm-viz report --runs A B ... --out DIR``): accuracy vs trunk width D (E/N Figure 4),
sparsity vs D (E/N Figure 7), binarized vs continuous accuracy (E/N Figure 9), linear vs MLP probe
(E/N Figure 8), and accuracy per layer for every run (GR Figures 1 and 6).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import yaml  # noqa: E402

from rcdm_viz.errors import RcdmVizError  # noqa: E402
from rcdm_viz.runs import RunDir, atomic_write_bytes, atomic_write_text, read_json, write_json  # noqa: E402

ACCURACIES = {
    "linear_acc": "linear",
    "mlp_acc": "MLP",
    "knn_acc": "kNN (k=20)",
    "binary_acc": "linear, binarized",
}
_MEANS = ("fidelity", "diversity", "consistency", "retrieval_top1")
DECODER_SCORES = {
    "consistency": "representation consistency",
    "retrieval_top1": "retrieval top-1",
    "retention_mean": "factor retention (mean)",
    "fidelity": "fidelity (distance to input)",
    "diversity": "diversity (distance between samples)",
}

# ------------------------------------------------------------------------------------------- gathering


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def decoder_scores(run: RunDir) -> tuple[dict[str, dict], dict]:
    """Decoder scores per layer averaged over every ``samples/*/scores.json``; and what they are based on.

    Returns ({layer: {score: mean, "factor_retention": {factor: mean}, "n_images": k}}, info) with info =
    {"distance": names, "images": ids}.
    """
    files = sorted((run.root / "samples").glob("*/scores.json"))
    per_layer: dict[str, list[dict]] = {}
    distances, images = set(), []
    for path in files:
        data = read_json(path)
        distances.add(data.get("distance"))
        images.append(path.parent.name)
        for layer, row in data.get("layers", {}).items():
            per_layer.setdefault(layer, []).append(row)
    out = {}
    for layer, rows in per_layer.items():
        agg = {k: _mean([r.get(k) for r in rows]) for k in _MEANS}
        factors = sorted({f for r in rows for f in r.get("factor_retention", {})})
        if factors:
            retention = [r.get("factor_retention", {}) for r in rows]
            agg["factor_retention"] = {f: _mean([r.get(f) for r in retention]) for f in factors}
            agg["retention_mean"] = _mean(list(agg["factor_retention"].values()))
        agg["n_images"] = len(rows)
        out[layer] = agg
    return out, {"distance": sorted(d for d in distances if d), "images": images}


def gather_run(run: RunDir) -> dict:
    """Everything known per layer of a run: {"run", "width", "method", "chance", "layers": {layer: row}}.

    Raises a one-line error when the run has neither probes nor decoder scores.
    """
    probes = read_json(run.probes) if run.probes.is_file() else None
    scores, info = decoder_scores(run)
    if probes is None and not scores:
        raise RcdmVizError(
            f"nothing to report in '{run.root}': no {run.probes} and no samples/*/scores.json; "
            "run `rcdm-viz probe` (and `rcdm-viz sample --scores`) first"
        )
    layers: dict[str, dict] = {}
    if probes is not None:
        for name, row in probes["layers"].items():
            layers[name] = dict(row)
            if row.get("factor_r2"):
                layers[name]["factor_r2_mean"] = _mean(list(row["factor_r2"].values()))
        for name, row in probes.get("invariance", {}).items():
            layers.setdefault(name, {})["invariance"] = row
    for name, row in scores.items():
        layers.setdefault(name, {})["decoder"] = row
    config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    encoder_cfg = read_json(run.encoder / "config.json") if (run.encoder / "config.json").is_file() else {}
    return {
        "run": str(run.root),
        "width": encoder_cfg.get("width"),
        "head": encoder_cfg.get("head"),
        "method": (config.get("ssl") or {}).get("method"),
        "chance": probes.get("chance") if probes else None,
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


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------- plotting


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_probe_accuracy(summary: dict, path: Path) -> Path | None:
    """Probe accuracy per layer, one line per probe (GR Figure 1 style)."""
    layers = [n for n, r in summary["layers"].items() if "linear_acc" in r]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in ACCURACIES.items():
        if all(key in summary["layers"][n] for n in layers):
            ax.plot(layers, [100 * summary["layers"][n][key] for n in layers], marker="o", label=label)
    if summary.get("chance") is not None:
        ax.axhline(100 * summary["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("layer (shallow → deep; trunk = before the projector)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.set_title("What a probe reads from each layer (object class)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _heatmap(matrix: list[list[float]], rows: list[str], cols: list[str], title: str, label: str,
             path: Path, vmin: float = 0.0, vmax: float = 1.0) -> Path:
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.2 + 0.45 * len(rows)))
    im = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, line in enumerate(matrix):
        for j, v in enumerate(line):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    return _save(fig, path)


def plot_factor_r2(summary: dict, path: Path) -> Path | None:
    """Linear-regression R² per layer x factor (GR Figure 2)."""
    layers = [n for n, r in summary["layers"].items() if r.get("factor_r2")]
    if not layers:
        return None
    factors = list(summary["layers"][layers[0]]["factor_r2"])
    matrix = [[summary["layers"][n]["factor_r2"][f] for f in factors] for n in layers]
    return _heatmap(matrix, layers, factors, "Factor read-out per layer (linear regression)",
                    "validation R²", path)


def plot_invariance(summary: dict, path: Path) -> Path | None:
    """Encoder invariance per layer x augmentation (1 = unchanged, 0 = as far as another image)."""
    layers = [n for n, r in summary["layers"].items() if r.get("invariance")]
    if not layers:
        return None
    augs = list(summary["layers"][layers[0]]["invariance"])
    matrix = [[summary["layers"][n]["invariance"][a] for a in augs] for n in layers]
    return _heatmap(matrix, layers, augs, "Encoder invariance per layer and augmentation",
                    "invariance (1 = invariant, 0 = another image)", path, vmin=min(0.0, *map(min, matrix)))


def plot_decoder_scores(summary: dict, path: Path) -> Path | None:
    """Decoder scores per layer (means over the scored images)."""
    layers = [n for n, r in summary["layers"].items() if r.get("decoder")]
    if not layers:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    low = 0.0
    for key, label in DECODER_SCORES.items():
        vals = [summary["layers"][n]["decoder"].get(key, float("nan")) for n in layers]
        if any(math.isfinite(v) for v in vals):
            ax = axes[1] if key in ("fidelity", "diversity") else axes[0]
            ax.plot(layers, vals, marker="o", label=label)
            if ax is axes[0]:
                low = min(low, *(v for v in vals if math.isfinite(v)))
    dist = ", ".join(summary.get("distance") or ["?"])
    n_img = max(summary["layers"][n]["decoder"]["n_images"] for n in layers)
    axes[0].set_ylim(low - 0.05, 1.05)  # the scale's two anchors, 0 and 1, always shown
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("score (1 = kept, 0 = another image)")
    axes[0].set_title(f"What the samples kept ({n_img} images)")
    axes[1].set_ylabel(f"perceptual distance ({dist})")
    axes[1].set_title("How close and how varied the samples are")
    for ax in axes:
        ax.set_xlabel("layer the decoder is conditioned on")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def report_run(run: RunDir) -> dict:
    """Write ``report/layers.csv``, ``layers.json`` and the plots of one run; returns the summary."""
    summary = gather_run(run)
    out = run.report
    _write_csv(out / "layers.csv", flat_rows(summary))
    plots = {
        "probe_accuracy": plot_probe_accuracy(summary, out / "probe_accuracy.png"),
        "factor_r2": plot_factor_r2(summary, out / "factor_r2.png"),
        "invariance": plot_invariance(summary, out / "invariance.png"),
        "decoder_scores": plot_decoder_scores(summary, out / "decoder_scores.png"),
    }
    summary["plots"] = {k: str(v.name) for k, v in plots.items() if v is not None}
    write_json(out / "layers.json", summary)
    return summary


# ---------------------------------------------------------------------------------------- across runs


def _run_label(summary: dict) -> str:
    return Path(summary["run"]).name


def _by_width(summaries: list[dict]) -> list[dict]:
    """The width series among the runs, sorted by width: runs with probes and a width, of the (method, head)
    that spans the most widths, so that other experiments at one width (e.g. positives) are not joined in."""
    runs = [s for s in summaries if s.get("width") and any("linear_acc" in r for r in s["layers"].values())]
    if not runs:
        return []
    series: dict[tuple, list[dict]] = {}
    for s in runs:
        series.setdefault((s.get("method"), s.get("head")), []).append(s)
    widest = max(series.values(), key=lambda group: len({s["width"] for s in group}))
    return sorted(widest, key=lambda s: s["width"])


def _width_axis(ax: plt.Axes, widths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("trunk width D (channels of the last block)")
    ax.grid(alpha=0.3)


def _head_layer(summary: dict) -> str | None:
    heads = [n for n in summary["layers"] if n.startswith("head")]
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
    means = [_mean(vals) for vals in finite]
    below = [m - min(vals) for m, vals in zip(means, finite, strict=True)]
    above = [max(vals) - m for m, vals in zip(means, finite, strict=True)]
    return widths, means, [below, above]


def _seeds_note(runs: list[dict]) -> str:
    counts = Counter(s["width"] for s in runs).values()
    if max(counts) == 1:
        return ""
    n = str(max(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    return f"\n(mean and range of {n} runs per width)"


def _plot_width_series(ax: plt.Axes, runs: list[dict], value: Callable[[dict], float], **style) -> list[int]:
    widths, means, err = width_series(runs, value)
    ax.errorbar(widths, means, yerr=err, capsize=3, **style)
    return widths


def _distinct_widths(runs: list[dict]) -> int:
    return len({s["width"] for s in runs})


def plot_accuracy_vs_width(runs: list[dict], path: Path) -> Path | None:
    """Linear-probe accuracy at the trunk and at the last head vs D (E/N Figure 4)."""
    if _distinct_widths(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    widths = _plot_width_series(ax, runs, lambda s: 100 * s["layers"]["trunk"]["linear_acc"], marker="o",
                                label="trunk")
    _plot_width_series(ax, runs, lambda s: 100 * s["layers"][h]["linear_acc"] if (h := _head_layer(s))
                       else math.nan, marker="s", label="last projector layer")
    if runs[0].get("chance") is not None:
        ax.axhline(100 * runs[0]["chance"], color="grey", ls="--", lw=1, label="chance")
    _width_axis(ax, widths)
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Accuracy vs trunk width (projector fixed)" + _seeds_note(runs), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sparsity_vs_width(runs: list[dict], path: Path) -> Path | None:
    """Fraction of exact zeros in the trunk representation vs D (E/N Figure 7)."""
    if _distinct_widths(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    widths = _plot_width_series(ax, runs, lambda s: 100 * s["layers"]["trunk"]["sparsity"], marker="o",
                                color="C2")
    _width_axis(ax, widths)
    ax.set_ylabel("trunk activations exactly 0 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Sparsity of the trunk representation vs width" + _seeds_note(runs), fontsize=10)
    return _save(fig, path)


def plot_binary_vs_continuous(runs: list[dict], path: Path) -> Path | None:
    """Trunk linear-probe accuracy on continuous vs binarized (x > 0) features, per D (E/N Figure 9)."""
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, shift, label in (("linear_acc", -0.2, "continuous"), ("binary_acc", 0.2, "binarized (x > 0)")):
        widths, means, err = width_series(runs, lambda s, k=key: 100 * s["layers"]["trunk"][k])
        xs = [x + shift for x in range(len(widths))]
        ax.bar(xs, means, 0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(list(range(len(widths))), [str(w) for w in widths])
    ax.set_xlabel("trunk width D")
    ax.set_ylabel("trunk linear probe top-1 (%)")
    ax.set_title("Binarized vs continuous trunk features" + _seeds_note(runs), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_linear_vs_mlp(runs: list[dict], path: Path) -> Path | None:
    """Trunk linear vs MLP probe accuracy vs D (E/N Figure 8)."""
    runs = [s for s in runs if "mlp_acc" in s["layers"]["trunk"]]
    if _distinct_widths(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, marker, label in (("linear_acc", "o", "linear probe"), ("mlp_acc", "s", "MLP probe")):
        widths = _plot_width_series(ax, runs, lambda s, k=key: 100 * s["layers"]["trunk"][k], marker=marker,
                                    label=label)
    _width_axis(ax, widths)
    ax.set_ylabel("trunk probe top-1 (%)")
    ax.set_title("Linear vs non-linear probe on the trunk" + _seeds_note(runs), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_by_layer(summaries: list[dict], path: Path) -> Path | None:
    """Linear-probe accuracy per layer, one line per run (GR Figures 1 and 6)."""
    runs = [s for s in summaries if any("linear_acc" in r for r in s["layers"].values())]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for s in runs:
        layers = [n for n, r in s["layers"].items() if "linear_acc" in r]
        ax.plot(layers, [100 * s["layers"][n]["linear_acc"] for n in layers], marker="o", label=_run_label(s))
    ax.set_xlabel("layer (shallow → deep)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Accuracy per layer, per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def markdown_table(summaries: list[dict], layers: Sequence[str] = ("trunk", "head")) -> str:
    """A Markdown table, one row per run x layer ("head" = the run's last projector layer), of the probes."""
    cols = ["linear_acc", "mlp_acc", "knn_acc", "binary_acc"]
    lines = [
        "| run | D | layer | linear | MLP | kNN | binarized | sparsity | RankMe | factor R² (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for wanted in layers:
            layer = _head_layer(s) if wanted == "head" else wanted
            row = s["layers"].get(layer or "", {})
            if "linear_acc" not in row:
                continue
            accs = " | ".join(f"{100 * row[c]:.1f}%" if c in row else "-" for c in cols)
            r2 = f"{row['factor_r2_mean']:.3f}" if "factor_r2_mean" in row else "-"
            stats = f"{100 * row['sparsity']:.1f}% | {row['rankme']:.1f} | {r2}"
            lines.append(f"| {_run_label(s)} | {s['width']} | {layer} | {accs} | {stats} |")
    return "\n".join(lines) + "\n"


def compare_runs(runs: Sequence[RunDir], out: Path) -> dict:
    """Cross-run report into ``out``: runs.csv (one row per run x layer), runs.md, runs.json and plots."""
    if not runs:
        raise RcdmVizError("report --runs needs at least one run directory")
    summaries = [gather_run(r) for r in runs]
    rows = []
    for s in summaries:
        for flat in flat_rows(s):
            rows.append({"run": _run_label(s), "width": s["width"], "head": s["head"], "method": s["method"],
                         **flat})
    out = Path(out)
    _write_csv(out / "runs.csv", rows)
    atomic_write_text(out / "runs.md", markdown_table(summaries))
    widths = _by_width(summaries)
    plots = {
        "accuracy_vs_width": plot_accuracy_vs_width(widths, out / "accuracy_vs_width.png"),
        "sparsity_vs_width": plot_sparsity_vs_width(widths, out / "sparsity_vs_width.png"),
        "binary_vs_continuous": plot_binary_vs_continuous(widths, out / "binary_vs_continuous.png"),
        "linear_vs_mlp": plot_linear_vs_mlp(widths, out / "linear_vs_mlp.png"),
        "accuracy_by_layer": plot_accuracy_by_layer(summaries, out / "accuracy_by_layer.png"),
    }
    result = {"runs": summaries, "plots": {k: v.name for k, v in plots.items() if v is not None}}
    write_json(out / "runs.json", result)
    return result
