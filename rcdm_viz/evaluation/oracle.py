"""The factor oracle: a small CNN that reads the synthetic scenes' latent factors and the object's shape
(its class) back from pixels.

Decoder scores use it to ask whether a sample kept a factor of its input, and its shape (docs/DESIGN.md,
"Invariance scores"). It is trained once per run on the synthetic training split at the decoder's
resolution and cached in ``<run>/oracle/`` (``config.json`` + ``model.safetensors``), with its own
validation R² per factor and shape accuracy, so that what it cannot read is visible next to the scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rcdm_viz.config import Config, ScoresConfig
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.data.synthetic import CIRCULAR, FACTOR_RANGES, FACTORS, SHAPES
from rcdm_viz.evaluation.probes import factor_targets, r2_score
from rcdm_viz.progress import tqdm
from rcdm_viz.records import OracleRecord
from rcdm_viz.runs import RunDir, atomic_write, atomic_write_text

_FORMAT = "rcdm_viz.oracle/2"  # 2: the shape head


def oracle_targets(factors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Targets on comparable scales: circular factors as (sin, cos), the others mapped to [-1, 1]."""
    out = factor_targets(factors, FACTOR_RANGES, CIRCULAR)
    for name, t in out.items():
        if name not in CIRCULAR:
            lo, hi = FACTOR_RANGES[name]
            out[name] = 2 * (t - lo) / (hi - lo) - 1
    return out


def _widths() -> dict[str, int]:
    return {name: 2 if name in CIRCULAR else 1 for name in FACTORS}


@dataclass(frozen=True)
class OracleQuality:
    """How well the oracle reads held-out scenes: R² per factor, top-1 accuracy of the shape."""

    r2: dict[str, float]
    shape_accuracy: float


class FactorOracle(nn.Module):
    """Conv net: images [N, 3, H, W] in [0, 1] -> concatenated factor targets [N, sum of widths] followed
    by the shape logits [N, len(SHAPES)]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            *block(width, 2 * width), *block(2 * width, 4 * width), *block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, sum(_widths().values()) + len(SHAPES)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 2 - 1)

    @torch.no_grad()
    def read(self, images: Tensor, batch_size: int = 256) -> tuple[dict[str, Tensor], Tensor]:
        """Readings of images [N, 3, H, W]: (factor name -> [N, width] on the scales of ``oracle_targets``,
        shape probabilities [N, len(SHAPES)])."""
        self.eval()
        out = torch.cat([self(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)])
        parts, col = {}, 0
        for name, w in _widths().items():
            parts[name] = out[:, col : col + w]
            col += w
        return parts, out[:, col:].softmax(dim=1)

    def predict(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Factor readings of images [N, 3, H, W]: name -> [N, width] (same scales as ``oracle_targets``)."""
        return self.read(images, batch_size)[0]


def _stack(targets: dict[str, Tensor]) -> Tensor:
    return torch.cat([targets[name] for name in FACTORS], dim=1)


def train_oracle(
    train: ImageSet, val: ImageSet, cfg: ScoresConfig, seed: int = 0, progress: bool = False
) -> tuple[FactorOracle, OracleQuality]:
    """Fit the oracle by MSE on the factors plus cross-entropy on the shape (AdamW, one-cycle lr) on
    ``train``; returns it and its validation R² per factor and shape accuracy."""
    if not train.factors or not val.factors:
        raise ValueError("the factor oracle needs images with known factors (the synthetic scenes)")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FactorOracle()
    y, n_out = _stack(oracle_targets(train.factors)), sum(_widths().values())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.oracle_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.oracle_lr, cfg.oracle_steps, pct_start=0.1)
    model.train()
    with torch.enable_grad():
        for _ in tqdm(range(cfg.oracle_steps), desc="oracle", disable=not progress, leave=False):
            idx = torch.randint(0, len(train), (min(cfg.oracle_batch_size, len(train)),), generator=gen)
            out = model(train.batch(idx))
            loss = nn.functional.mse_loss(out[:, :n_out], y[idx])
            loss = loss + nn.functional.cross_entropy(out[:, n_out:], train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    pred, probs = model.read(val.batch(torch.arange(len(val))))
    truth = oracle_targets(val.factors)
    accuracy = float((probs.argmax(dim=1) == val.labels).float().mean())
    return model, OracleQuality({name: r2_score(pred[name], truth[name]) for name in FACTORS}, accuracy)


def _key(cfg: Config, resolution: int) -> dict:
    s = cfg.scores
    return {
        "format": _FORMAT,
        "data_seed": cfg.data.seed,
        "resolution": resolution,
        "n_train": s.oracle_n_train,
        "steps": s.oracle_steps,
        "batch_size": s.oracle_batch_size,
        "lr": s.oracle_lr,
    }


def load_or_train_oracle(
    cfg: Config, run: RunDir, resolution: int, progress: bool = False
) -> tuple[FactorOracle, OracleQuality]:
    """The run's oracle for images of ``resolution`` px (trained and cached on first use).

    Returns (oracle, its validation R² per factor and shape accuracy).
    """
    root = Path(run.root) / "oracle" / f"{resolution}px"
    key = _key(cfg, resolution)
    config_path, weights = root / "config.json", root / "model.safetensors"
    saved = _saved_record(config_path) if weights.is_file() else None
    if saved is not None and saved.key == key:
        model = FactorOracle()
        model.load_state_dict(load_file(weights))
        return model.eval(), OracleQuality(saved.val_r2, saved.val_shape_accuracy)
    n_train, n_val = cfg.scores.oracle_n_train, min(cfg.data.n_val, 1024)
    train = load_images(cfg.data, "train", n=n_train, resolution=resolution, progress=progress)
    val = load_images(cfg.data, "val", n=n_val, resolution=resolution, progress=progress)
    model, quality = train_oracle(train, val, cfg.scores, seed=cfg.data.seed, progress=progress)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    record = OracleRecord(key=key, val_r2=quality.r2, val_shape_accuracy=quality.shape_accuracy)
    atomic_write_text(config_path, json.dumps(record.to_json(), indent=2) + "\n")
    return model.eval(), quality


def _saved_record(path: Path) -> OracleRecord | None:
    """The cached oracle's record; None when there is none or it cannot be read (the oracle is retrained:
    it is a cache, made again from the run's settings)."""
    try:
        return OracleRecord.from_json(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def factor_error(pred: Tensor, target: Tensor) -> Tensor:
    """Squared error per row, summed over a factor's columns (for (sin, cos): the squared chord)."""
    return (pred - target).pow(2).sum(dim=1)


def factor_value(name: str, reading: Tensor) -> Tensor:
    """The factor's value in a reading [n, w]: a circular factor's (sin, cos) put on the unit circle.

    A circular factor is its angle alone. The oracle shortens its (sin, cos) when an image shows no clear
    angle (a sample whose floor is grey or a blend of hues); compared as they are, such hedged readings
    sit at squared chord ~1 from every angle, half the chance error of 2, and would score retention ~0.5
    without keeping anything.
    """
    return nn.functional.normalize(reading, dim=1, eps=1e-12) if name in CIRCULAR else reading


def factor_retention(
    sample_pred: dict[str, Tensor], input_pred: dict[str, Tensor], other_pred: dict[str, Tensor]
) -> dict[str, float]:
    """1 - err(oracle(sample), f(x)) / err(oracle(x'), f(x)) per factor (docs/DESIGN.md, "Invariance scores").

    ``sample_pred``: oracle readings of the samples of ONE input, name -> [n, w]; ``input_pred``: of the
    input x, name -> [1, w] (f(x) is the oracle's reading of x, so a decoder that returns its input
    scores exactly 1 and the oracle's own error does not count against the decoder); ``other_pred``: of
    other images x', name -> [M, w]. Circular factors compare angles only (``factor_value``). 1 = kept,
    0 = no better than another image, < 0 = worse.
    """
    out = {}
    for name, target in input_pred.items():
        target = factor_value(name, target)
        err = factor_error(factor_value(name, sample_pred[name]), target).mean()
        chance = factor_error(factor_value(name, other_pred[name]), target).mean()
        out[name] = float(1 - err / chance.clamp_min(1e-12))
    return out


def shape_kept(sample_probs: Tensor, input_probs: Tensor) -> float:
    """Fraction of the samples the oracle reads as the input's shape: the argmax class of each sample's
    probabilities [n, C] against that of the input's [1, C] (the oracle's reading of x, as for the
    factors, so a decoder that returns its input keeps the shape exactly 1)."""
    return float((sample_probs.argmax(dim=1) == input_probs.argmax(dim=1)).float().mean())
