"""Probes on frozen features: what a linear read-out of each layer can tell (GR Figure 1, E/N appendix)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rcdm_viz.config import Config, ProbeConfig
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, write_json


@torch.inference_mode()
def extract_features(
    encoder: nn.Module, images: ImageSet, layers: Sequence[str], batch_size: int = 256, progress: bool = False
) -> dict[str, Tensor]:
    """Features of every named layer in ONE pass over the images (eval mode, no augmentation).

    Returns layer -> float32 [N, D_layer] on the CPU.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
    n = len(images)
    for start in tqdm(range(0, n, batch_size), desc="features", disable=not progress, leave=False):
        idx = torch.arange(start, min(n, start + batch_size))
        out = encoder(images.batch(idx).to(device), layers=list(layers))
        for name in layers:
            chunks[name].append(out[name].float().cpu())
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def _standardize(train_x: Tensor, test_x: Tensor) -> tuple[Tensor, Tensor]:
    """Scale features by the training set's statistics (a linear change: the probe class is the same)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    return (train_x - mean) / std, (test_x - mean) / std


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    cfg: ProbeConfig | None = None,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of a linear classifier trained on (train_x [N,D], train_y [N]) on the test split.

    E/N's probe: AdamW (lr 1e-4, wd 0.04), batch 1024, 100 epochs, cross-entropy; features standardized.
    """
    cfg = cfg or ProbeConfig()
    if len(train_x) == 0 or len(test_x) == 0:
        raise RcdmVizError(f"linear probe needs non-empty splits (train {len(train_x)}, test {len(test_x)})")
    train_x, test_x = _standardize(train_x.float(), test_x.float())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = nn.functional.cross_entropy(probe(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((probe(test_x).argmax(1) == test_y).float().mean())


def probe_layers(
    train_feats: dict[str, Tensor],
    train_y: Tensor,
    val_feats: dict[str, Tensor],
    val_y: Tensor,
    cfg: ProbeConfig,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Linear-probe accuracy per layer: layer -> {"linear_acc": top-1, "dim": D}."""
    results = {}
    for name in tqdm(list(train_feats), desc="probes", disable=not progress, leave=False):
        acc = linear_probe(train_feats[name], train_y, val_feats[name], val_y, cfg)
        results[name] = {"linear_acc": acc, "dim": int(train_feats[name].shape[1])}
    return results


def format_table(results: dict[str, dict[str, float]], chance: float | None = None) -> str:
    """A plain-text table of per-layer probe results."""
    lines = [f"{'layer':<8} {'dim':>6} {'linear acc':>11}"]
    for name, row in results.items():
        lines.append(f"{name:<8} {int(row['dim']):>6} {100 * row['linear_acc']:>10.1f}%")
    if chance is not None:
        lines.append(f"(chance: {100 * chance:.1f}%)")
    return "\n".join(lines)


def probe_run(cfg: Config, run: RunDir, progress: bool = True) -> dict:
    """Linear probes on object class at every layer of a run's encoder; writes ``encoder/probes.json``.

    Returns {"layers": {layer: {"linear_acc", "dim"}}, "chance": float, "n_train": int, "n_val": int}.
    """
    from rcdm_viz.encoders import load_encoder  # deferred: the probe maths above needs no model code

    encoder = load_encoder(run.require_encoder())
    res = encoder.config["resolution"]
    n_train = cfg.probe.n_train or cfg.data.n_train
    train = load_images(cfg.data, "train", n=n_train, resolution=res, progress=progress)
    val = load_images(cfg.data, "val", resolution=res, progress=progress)
    layers = encoder.all_layer_names
    train_f = extract_features(encoder, train, layers, progress=progress)
    val_f = extract_features(encoder, val, layers, progress=progress)
    results = probe_layers(train_f, train.labels, val_f, val.labels, cfg.probe, progress=progress)
    counts = torch.bincount(val.labels)
    summary = {
        "layers": results,
        "chance": float(counts.max()) / len(val),
        "n_train": len(train),
        "n_val": len(val),
        "probe": {"epochs": cfg.probe.epochs, "lr": cfg.probe.lr, "weight_decay": cfg.probe.weight_decay},
    }
    write_json(run.probes, summary)
    return summary
