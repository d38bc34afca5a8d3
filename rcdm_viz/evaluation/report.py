"""The report: one table and one plot per question, for a run (``report/``) or across runs.

The tables are gathered by ``rcdm_viz.evaluation.gather``; this module draws and writes.

Per run (``rcdm-viz report --run DIR``): ``layers.csv`` / ``layers.json`` gather the probes
(``encoder/probes.json``), the encoder invariance and the decoder scores averaged over every
``samples/*/scores.json``; plots: probe accuracy per layer (GR Figure 1), factor R² per layer x factor
(GR Figure 2), invariance per layer x augmentation, decoder scores per layer.
Across runs (``rcdm-viz report --runs A B ... --out DIR``): accuracy vs trunk width D (E/N Figure 4),
sparsity vs D (E/N Figure 7), binarized vs continuous accuracy (E/N Figure 9), linear vs MLP probe
(E/N Figure 8), and accuracy per layer for every run (GR Figures 1 and 6).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from rcdm_viz.errors import RcdmVizError  # noqa: E402
from rcdm_viz.evaluation.gather import (  # noqa: E402
    by_width,
    decoder_scores,
    distinct_widths,
    flat_rows,
    gather_run,
    head_layer,
    markdown_table,
    probe_metrics,
    run_label,
    seeds_note,
    width_series,
    write_csv,
)
from rcdm_viz.evaluation.probes import BINARY, LINEAR, MLP  # noqa: E402
from rcdm_viz.layers import TRUNK  # noqa: E402
from rcdm_viz.records import (  # noqa: E402
    CONSISTENCY,
    DIVERSITY,
    FACTOR_R2,
    FIDELITY,
    N_IMAGES,
    RETENTION_MEAN,
    RETRIEVAL,
)
from rcdm_viz.runs import RunDir, atomic_write_bytes, atomic_write_text, write_json  # noqa: E402

# Gathering lives in rcdm_viz.evaluation.gather; these names stay importable from here.
__all__ = ["compare_runs", "decoder_scores", "flat_rows", "gather_run", "markdown_table", "report_run",
           "width_series"]

DECODER_SCORES = {m.key: m.label for m in (CONSISTENCY, RETRIEVAL, RETENTION_MEAN, FIDELITY, DIVERSITY)}

# ------------------------------------------------------------------------------------------- gathering


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
    layers = [n for n, r in summary["layers"].items() if LINEAR.key in r]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for metric in probe_metrics([summary]):
        if all(metric.key in summary["layers"][n] for n in layers):
            ax.plot(layers, [100 * summary["layers"][n][metric.key] for n in layers], marker="o",
                    label=metric.label)
    if summary.get("chance") is not None:
        ax.axhline(100 * summary["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("layer (shallow → deep; trunk = before the projector)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.set_title("What a probe reads from each layer (object class)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _heatmap(matrix: list[list[float]], rows: list[str], cols: list[str], title: str, label: str,
             path: Path, *, vmin: float = 0.0, vmax: float = 1.0) -> Path:
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


def _layer_matrix(summary: dict, key: str) -> tuple[list[str], list[str], list[list[float]]] | None:
    """The layers whose row has the table ``key`` (a dict), its columns, and the layer x column values."""
    layers = [n for n, r in summary["layers"].items() if r.get(key)]
    if not layers:
        return None
    cols = list(summary["layers"][layers[0]][key])
    return layers, cols, [[summary["layers"][n][key][c] for c in cols] for n in layers]


def plot_factor_r2(summary: dict, path: Path) -> Path | None:
    """Linear-regression R² per layer x factor (GR Figure 2)."""
    if (table := _layer_matrix(summary, FACTOR_R2)) is None:
        return None
    layers, factors, matrix = table
    return _heatmap(matrix, layers, factors, "Factor read-out per layer (linear regression)",
                    "validation R²", path)


def plot_invariance(summary: dict, path: Path) -> Path | None:
    """Encoder invariance per layer x augmentation (1 = unchanged, 0 = as far as another image)."""
    if (table := _layer_matrix(summary, "invariance")) is None:
        return None
    layers, augs, matrix = table
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
            ax = axes[1] if key in (FIDELITY.key, DIVERSITY.key) else axes[0]
            ax.plot(layers, vals, marker="o", label=label)
            if ax is axes[0]:
                low = min(low, *(v for v in vals if math.isfinite(v)))
    dist = ", ".join(summary.get("distance") or ["?"])
    n_img = max(summary["layers"][n]["decoder"][N_IMAGES] for n in layers)
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
    write_csv(out / "layers.csv", flat_rows(summary))
    plots = {
        "probe_accuracy": plot_probe_accuracy(summary, out / "probe_accuracy.png"),
        FACTOR_R2: plot_factor_r2(summary, out / f"{FACTOR_R2}.png"),
        "invariance": plot_invariance(summary, out / "invariance.png"),
        "decoder_scores": plot_decoder_scores(summary, out / "decoder_scores.png"),
    }
    summary["plots"] = {k: str(v.name) for k, v in plots.items() if v is not None}
    write_json(out / "layers.json", summary)
    return summary


# ---------------------------------------------------------------------------------------- across runs


def _width_axis(ax: plt.Axes, widths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("trunk width D (channels of the last block)")
    ax.grid(alpha=0.3)


def _plot_width_series(ax: plt.Axes, runs: list[dict], value: Callable[[dict], float], **style) -> list[int]:
    widths, means, err = width_series(runs, value)
    ax.errorbar(widths, means, yerr=err, capsize=3, **style)
    return widths


def plot_accuracy_vs_width(runs: list[dict], path: Path) -> Path | None:
    """Linear-probe accuracy at the trunk and at the last head vs D (E/N Figure 4)."""
    if distinct_widths(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    widths = _plot_width_series(ax, runs, lambda s: 100 * s["layers"][TRUNK][LINEAR.key], marker="o",
                                label=TRUNK)
    _plot_width_series(ax, runs, lambda s: 100 * s["layers"][h][LINEAR.key] if (h := head_layer(s))
                       else math.nan, marker="s", label="last projector layer")
    if runs[0].get("chance") is not None:
        ax.axhline(100 * runs[0]["chance"], color="grey", ls="--", lw=1, label="chance")
    _width_axis(ax, widths)
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Accuracy vs trunk width (projector fixed)" + seeds_note(runs), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sparsity_vs_width(runs: list[dict], path: Path) -> Path | None:
    """Fraction of exact zeros in the trunk representation vs D (E/N Figure 7)."""
    if distinct_widths(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    widths = _plot_width_series(ax, runs, lambda s: 100 * s["layers"][TRUNK]["sparsity"], marker="o",
                                color="C2")
    _width_axis(ax, widths)
    ax.set_ylabel("trunk activations exactly 0 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Sparsity of the trunk representation vs width" + seeds_note(runs), fontsize=10)
    return _save(fig, path)


def plot_binary_vs_continuous(runs: list[dict], path: Path) -> Path | None:
    """Trunk linear-probe accuracy on continuous vs binarized (x > 0) features, per D (E/N Figure 9)."""
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, shift, label in ((LINEAR.key, -0.2, "continuous"), (BINARY.key, 0.2, "binarized (x > 0)")):
        widths, means, err = width_series(runs, lambda s, k=key: 100 * s["layers"][TRUNK][k])
        xs = [x + shift for x in range(len(widths))]
        ax.bar(xs, means, 0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(list(range(len(widths))), [str(w) for w in widths])
    ax.set_xlabel("trunk width D")
    ax.set_ylabel("trunk linear probe top-1 (%)")
    ax.set_title("Binarized vs continuous trunk features" + seeds_note(runs), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_linear_vs_mlp(runs: list[dict], path: Path) -> Path | None:
    """Trunk linear vs MLP probe accuracy vs D (E/N Figure 8)."""
    runs = [s for s in runs if MLP.key in s["layers"][TRUNK]]
    if distinct_widths(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, marker, label in ((LINEAR.key, "o", "linear probe"), (MLP.key, "s", "MLP probe")):
        widths = _plot_width_series(ax, runs, lambda s, k=key: 100 * s["layers"][TRUNK][k], marker=marker,
                                    label=label)
    _width_axis(ax, widths)
    ax.set_ylabel("trunk probe top-1 (%)")
    ax.set_title("Linear vs non-linear probe on the trunk" + seeds_note(runs), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_by_layer(summaries: list[dict], path: Path) -> Path | None:
    """Linear-probe accuracy per layer, one line per run (GR Figures 1 and 6)."""
    runs = [s for s in summaries if any(LINEAR.key in r for r in s["layers"].values())]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for s in runs:
        layers = [n for n, r in s["layers"].items() if LINEAR.key in r]
        ax.plot(layers, [100 * s["layers"][n][LINEAR.key] for n in layers], marker="o", label=run_label(s))
    ax.set_xlabel("layer (shallow → deep)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Accuracy per layer, per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def compare_runs(runs: Sequence[RunDir], out: Path) -> dict:
    """Cross-run report into ``out``: runs.csv (one row per run x layer), runs.md, runs.json and plots."""
    if not runs:
        raise RcdmVizError("comparing runs needs at least one run directory")
    summaries = [gather_run(r) for r in runs]
    rows = []
    for s in summaries:
        for flat in flat_rows(s):
            rows.append({"run": run_label(s), "width": s["width"], "head": s["head"], "method": s["method"],
                         **flat})
    out = Path(out)
    write_csv(out / "runs.csv", rows)
    atomic_write_text(out / "runs.md", markdown_table(summaries))
    widths = by_width(summaries)
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
