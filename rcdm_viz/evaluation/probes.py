"""Probes on frozen features: what each layer still tells (GR Figures 1-2, E/N Figures 4, 7, 8, 9).

Per layer: linear classification probe (top-1), MLP probe, kNN accuracy, accuracy on binarized features
(x > 0), sparsity (fraction of exact zeros), effective rank (RankMe) and, when the images have known
factors, a ridge regression per factor (R², circular factors as sin/cos). Pure maths on feature tensors:
the run's probes (features, caching, probes.json) are ``rcdm_viz.evaluation.probe_run``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rcdm_viz.config import ProbeConfig, ProbeSolver
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.features import binarize
from rcdm_viz.progress import tqdm
from rcdm_viz.records import Metric, ProbeRow

# ---------------------------------------------------------------------------------------------- helpers


def _check_splits(train_x: Tensor, test_x: Tensor, what: str) -> None:
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"{what} needs non-empty splits (train {len(train_x)}, test {len(test_x)})")


STD_FLOOR = 0.1  # no feature is scaled by less than this fraction of its layer's RMS std (see _standardize)


def _standardize(train_x: Tensor, test_x: Tensor) -> tuple[Tensor, Tensor]:
    """Scale features [N, D] by the training set's statistics (a linear change: the probe class is the same).

    Scales are floored at STD_FLOOR x the layer's RMS std, so that a unit (almost) never active on the
    training images stays a weak input and a rare activation an ordinary outlier; units above the floor
    (all of them in a dense layer) are standardized as usual (why: docs/RESULTS.md, "The std floor of the
    probes' standardization").
    """
    mean, std = train_x.mean(0), train_x.std(0)
    floor = (STD_FLOOR * std.pow(2).mean().sqrt()).clamp_min(1e-12)
    std = std.clamp_min(floor)
    return (train_x - mean) / std, (test_x - mean) / std


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


# ------------------------------------------------------------------------------------- linear probes


def _fit_lbfgs(x: Tensor, y: Tensor, num_classes: int, cfg: ProbeConfig) -> nn.Linear:
    """Multinomial logistic regression, full batch: min mean CE(Wx + b, y) + l2/2 |W|^2 by L-BFGS."""
    probe = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(
        probe.parameters(), lr=1.0, max_iter=cfg.lbfgs_steps, history_size=20,
        tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(probe(x), y) + 0.5 * cfg.l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def _fit_adamw(x: Tensor, y: Tensor, num_classes: int, cfg: ProbeConfig, seed: int) -> nn.Linear:
    """E/N's protocol: AdamW (lr, weight decay), minibatches, ``epochs`` passes, cross-entropy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = nn.functional.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return probe


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    cfg: ProbeConfig | None = None,
    seed: int = 0,
) -> float:
    """Top-1 accuracy on (test_x, test_y) of a linear classifier fitted on (train_x [N,D], train_y [N]).

    Features are standardized by the training split. ``cfg.solver`` picks full-batch L-BFGS (default) or
    E/N's minibatch AdamW (lr 1e-4, wd 0.04, batch 1024, 100 epochs).
    """
    cfg = cfg or ProbeConfig()
    _check_splits(train_x, test_x, "linear probe")
    train_x, test_x = _standardize(train_x.float(), test_x.float())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    with torch.enable_grad():
        if cfg.solver is ProbeSolver.LBFGS:
            probe = _fit_lbfgs(train_x, train_y, num_classes, cfg)
        else:
            probe = _fit_adamw(train_x, train_y, num_classes, cfg, seed)
    with torch.no_grad():
        return _accuracy(probe(test_x), test_y)


def mlp_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, cfg: ProbeConfig, seed: int = 0
) -> float:
    """Top-1 of a 3-layer MLP probe (E/N Figure 8): Linear-BN-ReLU x2, Linear; AdamW, batch 256."""
    _check_splits(train_x, test_x, "MLP probe")
    train_x, test_x = _standardize(train_x.float(), test_x.float())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    h = cfg.mlp_hidden
    mlp = nn.Sequential(
        nn.Linear(train_x.shape[1], h), nn.BatchNorm1d(h), nn.ReLU(),
        nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(),
        nn.Linear(h, num_classes),
    )
    opt = torch.optim.AdamW(mlp.parameters(), lr=cfg.mlp_lr, weight_decay=1e-4)
    steps = cfg.mlp_epochs * math.ceil(len(train_x) / 256)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    with torch.enable_grad():
        for _ in range(cfg.mlp_epochs):
            perm = torch.randperm(len(train_x), generator=gen)
            for start in range(0, len(perm) - 1, 256):  # a last batch of 1 would break BatchNorm
                idx = perm[start : start + 256]
                loss = nn.functional.cross_entropy(mlp(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    mlp.eval()
    with torch.no_grad():
        return _accuracy(mlp(test_x), test_y)


@torch.no_grad()
def knn_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20, temperature: float = 0.07
) -> float:
    """Weighted kNN top-1 (Wu et al. 2018, as DINO): cosine neighbours, votes weighted exp(cos / T)."""
    _check_splits(train_x, test_x, "kNN probe")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train_n = nn.functional.normalize(train_x.float(), dim=1)
    correct = 0
    for start in range(0, len(test_x), 512):
        q = nn.functional.normalize(test_x[start : start + 512].float(), dim=1)
        sims, idx = (q @ train_n.T).topk(min(k, len(train_n)), dim=1)
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, train_y[idx], (sims / temperature).exp())
        correct += int((votes.argmax(1) == test_y[start : start + 512]).sum())
    return correct / len(test_x)


# ------------------------------------------------------------------------------- feature statistics


def sparsity(x: Tensor) -> float:
    """Fraction of exactly-zero activations over all samples and dimensions (E/N Figure 7)."""
    return float((x == 0).float().mean())


@torch.no_grad()
def rankme(x: Tensor, eps: float = 1e-7) -> float:
    """Effective rank (Garrido et al. 2023): exp of the entropy of the normalized singular values of x [N, D].

    p_k = sigma_k / |sigma|_1 + eps; RankMe = exp(-sum p_k log p_k). At most min(N, D).
    """
    x = x.double()
    small = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x  # Gram matrix of the smaller side
    sigma = torch.linalg.eigvalsh(small).clamp_min(0).sqrt()
    p = sigma / sigma.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


# ------------------------------------------------------------------------------------ factor probes


def factor_targets(
    factors: dict[str, Tensor], ranges: dict[str, tuple[float, float]], circular: Sequence[str]
) -> dict[str, Tensor]:
    """Regression targets per factor: [N, 1] for a linear factor, [N, 2] (sin, cos) for a circular one.

    A circular factor's range is mapped onto one turn, so its two ends are the same angle (GR Figure 2).
    """
    out = {}
    for name, v in factors.items():
        lo, hi = ranges[name]
        if name in circular:
            angle = 2 * math.pi * (v.double() - lo) / (hi - lo)
            out[name] = torch.stack([angle.sin(), angle.cos()], dim=1).float()
        else:
            out[name] = v.float()[:, None]
    return out


def ridge_path(x: Tensor, y: Tensor, ridges: Sequence[float]) -> list[Tensor]:
    """Ridge weights W [D, T] minimising |X W - Y|^2 / N + ridge |W|^2 for centred x [N, D], y [N, T],
    one per penalty in ``ridges``, from one eigendecomposition of the smaller Gram matrix.

    Primal X^T X = Q L Q^T gives W = Q (L + ridge N)^-1 Q^T X^T Y; dual X X^T = Q L Q^T gives
    W = X^T Q (L + ridge N)^-1 Q^T Y (Woodbury identity), whichever system is smaller.
    """
    n, d = x.shape
    x, y = x.double(), y.double()
    primal = d <= n
    evals, q = torch.linalg.eigh(x.T @ x if primal else x @ x.T)
    qty = q.T @ (x.T @ y if primal else y)
    out = []
    for ridge in ridges:
        coef = q @ (qty / (evals.clamp_min(0) + ridge * n)[:, None])
        out.append((coef if primal else x.T @ coef).float())
    return out


def r2_score(pred: Tensor, target: Tensor) -> float:
    """Coefficient of determination over all target columns: 1 - SSE / SST (SST around target mean)."""
    sse = (pred - target).pow(2).sum()
    sst = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1 - sse / sst)


def _columns(targets: dict[str, Tensor]) -> dict[str, slice]:
    out, col = {}, 0
    for name, t in targets.items():
        out[name] = slice(col, col + t.shape[1])
        col += t.shape[1]
    return out


def select_ridge(
    x: Tensor, targets: dict[str, Tensor], ridges: Sequence[float], holdout: float
) -> dict[str, float]:
    """Per factor, the penalty in ``ridges`` with the best R² on the last ``holdout`` fraction of the
    (standardized) training features, fitted on the rest: wide layers (D >= N) need far more penalty than
    narrow ones, and choosing it on the validation split would bias the reported R²."""
    if len(ridges) == 1:
        return dict.fromkeys(targets, float(ridges[0]))
    n_fit = int(round(x.shape[0] * (1 - holdout)))
    if not 0 < n_fit < x.shape[0]:
        raise RcdmVizError(
            f"probe.ridge_holdout {holdout} leaves no fit or no held-out images of {x.shape[0]}"
        )
    y = torch.cat(list(targets.values()), dim=1)
    mean = y[:n_fit].mean(0)
    weights = ridge_path(x[:n_fit], y[:n_fit] - mean, ridges)
    cols = _columns(targets)
    best = {}
    for name, c in cols.items():
        scores = [r2_score(x[n_fit:] @ w[:, c] + mean[c], y[n_fit:, c]) for w in weights]
        best[name] = float(ridges[max(range(len(ridges)), key=scores.__getitem__)])
    return best


def factor_probe(
    train_x: Tensor,
    train_t: dict[str, Tensor],
    test_x: Tensor,
    test_t: dict[str, Tensor],
    ridges: Sequence[float],
    holdout: float = 0.2,
    *,
    chosen: dict[str, float] | None = None,
) -> dict[str, float]:
    """Validation R² of a linear (ridge) regression from features to each factor's targets (GR Figure 2),
    the penalty chosen per factor on held-out training images (``select_ridge``), then refitted on all.
    If ``chosen`` is given, it receives the penalty of each factor (recorded beside the R² in probes.json)."""
    _check_splits(train_x, test_x, "factor probe")
    train_x, test_x = _standardize(train_x.float(), test_x.float())
    picked = select_ridge(train_x, train_t, ridges, holdout)
    if chosen is not None:
        chosen.update(picked)
    y = torch.cat(list(train_t.values()), dim=1)
    y_mean = y.mean(0)
    penalties = sorted(set(picked.values()))
    weights = dict(zip(penalties, ridge_path(train_x, y - y_mean, penalties), strict=True))
    out = {}
    for name, c in _columns(train_t).items():
        pred = test_x @ weights[picked[name]][:, c] + y_mean[c]
        out[name] = r2_score(pred, test_t[name])
    return out


# ------------------------------------------------------------------------------------------ per layer


@dataclass(frozen=True)
class Split:
    """One layer's features and labels: train_x [N, D], train_y [N], val_x [M, D], val_y [M]."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor


@dataclass(frozen=True)
class Probe:
    """A probe accuracy: how probes.json, the tables and the plots name it, and how it is measured
    (None: skipped under this config). Adding a probe is one entry in PROBES."""

    metric: Metric
    measure: Callable[[Split, ProbeConfig], float | None]


LINEAR = Metric("linear_acc", "linear", "linear")
MLP = Metric("mlp_acc", "mlp", "MLP")
KNN = Metric("knn_acc", "knn", "kNN (k=20)")
BINARY = Metric("binary_acc", "binary", "linear, binarized")

# In table order. They run in this order too: the probes share torch's RNG, so the order is part of the
# result.
PROBES: tuple[Probe, ...] = (
    Probe(LINEAR, lambda d, cfg: linear_probe(d.train_x, d.train_y, d.val_x, d.val_y, cfg)),
    Probe(MLP, lambda d, cfg: mlp_probe(d.train_x, d.train_y, d.val_x, d.val_y, cfg)
          if cfg.mlp_epochs else None),
    Probe(KNN, lambda d, cfg: knn_accuracy(d.train_x, d.train_y, d.val_x, d.val_y, cfg.knn_k,
                                           cfg.knn_temperature)),
    Probe(BINARY, lambda d, cfg: linear_probe(binarize(d.train_x), d.train_y, binarize(d.val_x), d.val_y,
                                              cfg)),
)


def probe_layer(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    cfg: ProbeConfig,
    *,
    train_t: dict[str, Tensor] | None = None,
    val_t: dict[str, Tensor] | None = None,
) -> ProbeRow:
    """Every probe of one layer: the accuracies of PROBES, sparsity, RankMe, factor R²."""
    split = Split(train_x, train_y, val_x, val_y)
    accuracies = {probe.metric.key: probe.measure(split, cfg) for probe in PROBES}
    factor_r2 = factor_ridge = None
    if train_t is not None and val_t is not None:
        factor_ridge = {}
        factor_r2 = factor_probe(
            train_x, train_t, val_x, val_t, cfg.ridge, cfg.ridge_holdout, chosen=factor_ridge
        )
    return ProbeRow(
        dim=int(train_x.shape[1]), accuracies={k: v for k, v in accuracies.items() if v is not None},
        sparsity=sparsity(val_x), rankme=rankme(train_x[: cfg.rankme_n]), factor_r2=factor_r2,
        factor_ridge=factor_ridge,
    )


def probe_layers(
    train_feats: dict[str, Tensor],
    train_y: Tensor,
    val_feats: dict[str, Tensor],
    val_y: Tensor,
    cfg: ProbeConfig,
    *,
    progress: bool = False,
    train_t: dict[str, Tensor] | None = None,
    val_t: dict[str, Tensor] | None = None,
) -> dict[str, ProbeRow]:
    """``probe_layer`` for every layer of ``train_feats``: layer -> its row."""
    results = {}
    for name in tqdm(list(train_feats), desc="probes", disable=not progress, leave=False):
        results[name] = probe_layer(train_feats[name], train_y, val_feats[name], val_y, cfg, train_t=train_t,
                                    val_t=val_t)
    return results
