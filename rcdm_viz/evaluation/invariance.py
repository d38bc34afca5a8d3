"""Encoder invariance per layer x augmentation (docs/DESIGN.md, "Invariance scores").

    score(layer, a) = (E cos(h(x), h(a(x))) - E cos(h(x), h(x'))) / (1 - E cos(h(x), h(x')))

with x' another image of the set: 1 = h does not move under a at all, 0 = a moves h as far as swapping
the image for a random other one. Each augmentation is applied alone, to every image, at its default
strength, from a fixed generator (``rcdm_viz.data.views.apply_augmentation``), so scores are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.functional import cosine_similarity

from rcdm_viz.data.views import Augmentation, apply_augmentation, parse_augmentation
from rcdm_viz.features import encode_batches


def normalized_similarity(same: float, baseline: float) -> float:
    """(same - baseline) / (1 - baseline): 1 when ``same`` is 1, 0 when it is no better than ``baseline``."""
    return (same - baseline) / max(1.0 - baseline, 1e-8)


def other_image_similarity(h: Tensor) -> float:
    """E cos(h(x), h(x')) over all ordered pairs of different images; h [N, D] with N >= 2."""
    hn = nn.functional.normalize(h.double(), dim=1)
    n = hn.shape[0]
    total = hn.sum(0)
    pair_sum = float(total @ total) - float((hn * hn).sum())  # sum over i != j of cos(h_i, h_j)
    return pair_sum / (n * (n - 1))


def encoder_invariance(
    encoder: nn.Module,
    images: Tensor,
    augmentations: Sequence[Augmentation | str] | None = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Invariance score of every layer to every augmentation: layer -> {augmentation: score}.

    ``encoder``: any module whose forward returns a dict layer -> features (called as ``encoder(x)``, or
    ``encoder(x, layers=layers)`` when ``layers`` is given); ``images`` float [N, 3, H, W] in [0, 1],
    N >= 2; ``augmentations``: names from ``Augmentation`` (all of them when None), each applied alone
    with a generator seeded by ``seed``.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 2:
        raise ValueError(f"encoder_invariance needs >= 2 images [N, 3, H, W], got {list(images.shape)}")
    augs = [parse_augmentation(a) for a in (augmentations if augmentations is not None else Augmentation)]
    was_training = encoder.training
    encoder.eval()
    try:
        clean = encode_batches(encoder, images, layers, batch_size)
        baseline = {name: other_image_similarity(h) for name, h in clean.items()}
        scores: dict[str, dict[str, float]] = {name: {} for name in clean}
        for aug in augs:
            gen = torch.Generator().manual_seed(seed)
            moved = encode_batches(encoder, apply_augmentation(aug, images.float(), gen), layers, batch_size)
            for name, h in clean.items():
                same = float(cosine_similarity(h.double(), moved[name].double(), dim=1).mean())
                scores[name][aug.value] = normalized_similarity(same, baseline[name])
    finally:
        encoder.train(was_training)
    return scores
