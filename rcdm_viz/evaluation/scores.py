"""Decoder scores per layer, from the n samples a layer's decoder drew for one input image.

docs/DESIGN.md, "Invariance scores": diversity (mean pairwise perceptual distance between samples), fidelity
(mean perceptual distance between each sample and the input x), representation consistency (normalized
cosine between h(sample) and h(x)), retrieval top-1 (is x the nearest neighbour of h(sample) among x and
a gallery of other images) and, with a factor oracle, factor retention per factor. The perceptual distance
is LPIPS (AlexNet) when its weights are on disk (``rcdm-viz weights lpips``), otherwise a weight-free SSIM
distance; ``distance`` in the output always names the one used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from rcdm_viz.config import Config, Distance
from rcdm_viz.data.images import fit
from rcdm_viz.data.sources import load_images
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation.invariance import normalized_similarity
from rcdm_viz.evaluation.oracle import (
    FactorOracle,
    OracleQuality,
    factor_retention,
    load_or_train_oracle,
    shape_kept,
)
from rcdm_viz.evaluation.perceptual import LPIPS_MIN_SIDE, lpips_available, make_lpips_distance
from rcdm_viz.features import encode_batches
from rcdm_viz.records import ImageScores, LayerScores
from rcdm_viz.runs import RunDir
from rcdm_viz.weights import search_dirs

_MS_SSIM_MIN_SIDE = 161  # 5 scales of an 11-px window: the coarsest scale must still exceed the window

PairDistance = Callable[[Tensor, Tensor], Tensor]  # a [N, 3, H, W], b [N, 3, H, W] in [0, 1] -> [N]


def resolve_distance(kind: Distance, side: int) -> Distance:
    """``auto`` -> LPIPS if its converted weights are on disk (``rcdm-viz weights lpips``) and the images
    have >= 32 px, else 1-MS-SSIM (images > 160 px) or 1-SSIM."""
    kind = Distance(kind)
    if kind is Distance.AUTO:
        if lpips_available() and side >= LPIPS_MIN_SIDE:
            return Distance.LPIPS_ALEX
        return Distance.MS_SSIM if side >= _MS_SSIM_MIN_SIDE else Distance.SSIM
    if kind is Distance.LPIPS_ALEX and not lpips_available():
        dirs = ", ".join(str(d) for d in search_dirs())
        raise RcdmVizError(
            f"scores.distance={kind.value} needs the LPIPS weights (none in {dirs}); "
            "run `rcdm-viz weights lpips`, or use 1-ssim or auto"
        )
    if kind is Distance.LPIPS_ALEX and side < LPIPS_MIN_SIDE:
        raise RcdmVizError(f"scores.distance=lpips-alex needs images of >= {LPIPS_MIN_SIDE} px, got {side}")
    if kind is Distance.MS_SSIM and side < _MS_SSIM_MIN_SIDE:
        raise RcdmVizError(f"scores.distance=1-ms-ssim needs images of >= {_MS_SSIM_MIN_SIDE} px, got {side}")
    return kind


def make_distance(kind: Distance) -> PairDistance:
    """The per-pair perceptual distance ``kind`` (already resolved): (a, b) -> [N]."""
    if kind is Distance.LPIPS_ALEX:
        return make_lpips_distance()
    if kind is Distance.MS_SSIM:
        def ms_ssim_distance(a: Tensor, b: Tensor) -> Tensor:
            return 1 - multiscale_structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")

        return ms_ssim_distance
    if kind is Distance.SSIM:
        def ssim_distance(a: Tensor, b: Tensor) -> Tensor:
            return 1 - structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")

        return ssim_distance
    raise ValueError(f"resolve the distance before making it (got {kind.value})")


def diversity(samples: Tensor, distance: PairDistance) -> float:
    """Mean distance over all pairs i < j of samples [n, 3, H, W] (n >= 2)."""
    i, j = torch.triu_indices(len(samples), len(samples), offset=1)
    return float(distance(samples[i], samples[j]).mean())


def mean_abs_laplacian(images: Tensor) -> Tensor:
    """Mean |5-point Laplacian| per image [N, 3, H, W] in [0, 1] -> [N]: high-frequency energy."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=images.dtype)
    lap = nn.functional.conv2d(images.flatten(0, 1)[:, None], kernel[None, None])
    return lap.abs().flatten(1).mean(1).view(images.shape[0], -1).mean(1)


def grain(samples: Tensor, image: Tensor) -> float:
    """High-frequency energy of the samples [n, 3, H, W] over the input's [3, H, W] (mean absolute
    Laplacian): ~1 when the samples are as smooth as the input, > 1 for grain, < 1 for blur."""
    return float(mean_abs_laplacian(samples).mean() / mean_abs_laplacian(image[None]).clamp_min(1e-8)[0])


def fidelity(samples: Tensor, image: Tensor, distance: PairDistance) -> float:
    """Mean distance between each sample [n, 3, H, W] and the input image [3, H, W] (0 = identical)."""
    return float(distance(samples, image.expand_as(samples)).mean())


def consistency_and_retrieval(h_samples: Tensor, h_x: Tensor, h_gallery: Tensor) -> tuple[float, float]:
    """Representation consistency and retrieval top-1 of one layer.

    h_samples [n, D] = h(samples); h_x [D] = h(input); h_gallery [M, D] = h(other images).
    Consistency = (E cos(h(s), h(x)) - E cos(h(x), h(x'))) / (1 - E cos(h(x), h(x'))), x' in the gallery;
    retrieval = fraction of samples whose cosine-nearest among [h(x), h_gallery] is h(x).
    """
    s = nn.functional.normalize(h_samples.double(), dim=1)
    x = nn.functional.normalize(h_x.double(), dim=0)
    g = nn.functional.normalize(h_gallery.double(), dim=1)
    consistency = normalized_similarity(float((s @ x).mean()), float((g @ x).mean()))
    to_x, to_gallery = s @ x, (s @ g.T).max(dim=1).values
    return consistency, float((to_x > to_gallery).double().mean())


@dataclass
class Gallery:
    """Other images the scores compare against: images at the decoder's resolution [M, 3, h, w], their
    representations per layer [M, D], and (synthetic data) the oracle's readings of them."""

    images: Tensor
    reps: dict[str, Tensor]
    oracle: FactorOracle | None = None
    oracle_pred: dict[str, Tensor] | None = None
    oracle_quality: OracleQuality | None = None

    def without(self, image: Tensor) -> Tensor:
        """Indices of the gallery images other than ``image`` [3, h, w] itself (up to uint8 rounding)."""
        same = (self.images - image).abs().flatten(1).amax(1) < 1.5 / 255
        return (~same).nonzero().squeeze(1)


def encode(encoder: nn.Module, images: Tensor, layers: list[str], batch_size: int = 256) -> dict[str, Tensor]:
    """Representations of images [N, 3, h, w] (any size: fitted to the encoder's input side) per layer."""
    res = encoder.config["resolution"]
    return encode_batches(encoder, images, layers, batch_size, prepare=lambda chunk: fit(chunk, res))


def build_gallery(
    cfg: Config,
    run: RunDir,
    encoder: nn.Module,
    layers: list[str],
    resolution: int,
    progress: bool = False,
) -> Gallery:
    """The first ``cfg.scores.gallery`` validation images of the run's data, encoded; with the factor oracle
    (trained and cached in the run on first use) when the data are the synthetic scenes."""
    n = min(cfg.scores.gallery, cfg.data.n_val)
    images = load_images(cfg.data, "val", n=n, resolution=resolution, progress=progress)
    batch = images.batch(torch.arange(len(images)))
    gallery = Gallery(batch, encode(encoder, batch, layers))
    if images.factors:
        gallery.oracle, gallery.oracle_quality = load_or_train_oracle(cfg, run, resolution, progress)
        gallery.oracle_pred = gallery.oracle.predict(batch)
    return gallery


def layer_scores(
    samples: Tensor, image: Tensor, h_samples: Tensor, h_x: Tensor, h_gallery: Tensor, distance: PairDistance
) -> LayerScores:
    """Diversity, fidelity, consistency, retrieval and grain of one layer for one input.

    samples [n, 3, H, W] and image [3, H, W] at the decoder's resolution; h_* as in
    ``consistency_and_retrieval``.
    """
    consistency, retrieval = consistency_and_retrieval(h_samples, h_x, h_gallery)
    return LayerScores(
        fidelity=fidelity(samples, image, distance),
        consistency=consistency,
        retrieval_top1=retrieval,
        grain=grain(samples, image),
        diversity=diversity(samples, distance) if len(samples) >= 2 else None,
    )


def score_image(
    encoder: nn.Module, image: Tensor, rows: dict[str, Tensor], gallery: Gallery, distance: Distance
) -> ImageScores:
    """Scores of every layer's samples for one input image (any size; fitted like the grid's column 0).

    rows: layer -> samples [n, 3, h, w] in [0, 1]. Returns the record of ``scores.json``: per layer fidelity,
    diversity, consistency, retrieval top-1, grain, and with the oracle factor retention and shape kept.
    """
    side = next(iter(rows.values())).shape[-1]
    kind = resolve_distance(distance, side)
    dist = make_distance(kind)
    shown = fit(image, side)
    keep = gallery.without(shown)
    h_x = encode(encoder, image[None], list(rows))
    complete = gallery.oracle_pred is not None and gallery.oracle_quality is not None
    oracle = gallery.oracle if complete else None
    if oracle is not None:
        x_pred, x_shape = oracle.read(shown[None])
        others = {k: v[keep] for k, v in gallery.oracle_pred.items()}
    layers = {}
    for layer, samples in rows.items():
        h_s = encode(encoder, samples, [layer])[layer]
        row = layer_scores(samples, shown, h_s, h_x[layer][0], gallery.reps[layer][keep], dist)
        if oracle is not None:
            s_pred, s_shape = oracle.read(samples)
            row = dataclasses.replace(row, factor_retention=factor_retention(s_pred, x_pred, others),
                                      shape_kept=shape_kept(s_shape, x_shape))
        layers[layer] = row
    quality = gallery.oracle_quality if oracle is not None else None
    return ImageScores(
        distance=kind.value, n=len(next(iter(rows.values()))), gallery=len(keep), layers=layers,
        oracle_val_r2=None if quality is None else quality.r2,
        oracle_val_shape_accuracy=None if quality is None else quality.shape_accuracy,
    )
