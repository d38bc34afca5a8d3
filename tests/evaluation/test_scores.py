"""Decoder scores on hand-made inputs: consistency, retrieval, diversity, fidelity, the gallery."""

from __future__ import annotations

import pytest
import torch

from rcdm_viz.config import Distance
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation import scores
from rcdm_viz.evaluation.scores import (
    Gallery,
    consistency_and_retrieval,
    diversity,
    fidelity,
    resolve_distance,
)


def test_consistency_is_one_for_the_input_and_zero_at_the_gallery_baseline():
    h_x = torch.tensor([1.0, 0.0])
    gallery = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # mean cosine to x: 0
    cons, top1 = consistency_and_retrieval(h_x.repeat(3, 1), h_x, gallery)
    assert cons == pytest.approx(1.0) and top1 == 1.0
    cons, top1 = consistency_and_retrieval(gallery, h_x, gallery)  # samples that look like other images
    assert cons == pytest.approx(0.0) and top1 == 0.0
    mixed = torch.tensor([[1.0, 0.1], [0.1, 1.0]])  # one sample retrieves x, the other a gallery image
    assert consistency_and_retrieval(mixed, h_x, gallery)[1] == 0.5


def test_diversity_and_fidelity_average_the_pairs_they_name():
    pairs: list[tuple[float, float]] = []

    def distance(a, b):  # distance = difference of the images' means, recording the pairs asked for
        pairs.extend(zip(a.mean((1, 2, 3)).tolist(), b.mean((1, 2, 3)).tolist(), strict=True))
        return (a.mean((1, 2, 3)) - b.mean((1, 2, 3))).abs()

    samples = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 0.5, 1.0)])
    assert diversity(samples, distance) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert pairs == [(0.0, 0.5), (0.0, 1.0), (0.5, 1.0)]
    assert fidelity(samples, torch.full((3, 2, 2), 0.5), distance) == pytest.approx((0.5 + 0 + 0.5) / 3)


def test_gallery_without_drops_the_input_itself_up_to_uint8_rounding():
    images = torch.stack([torch.full((3, 2, 2), v) for v in (0.1, 0.5, 0.9)])
    gallery = Gallery(images, {})
    assert gallery.without(torch.full((3, 2, 2), 0.5 + 0.4 / 255)).tolist() == [0, 2]
    assert gallery.without(torch.full((3, 2, 2), 0.3)).tolist() == [0, 1, 2]


def test_distance_resolution_never_swaps_silently(monkeypatch):
    monkeypatch.setattr(scores, "lpips_available", lambda: False)  # as with no `rcdm-viz weights lpips`
    assert resolve_distance(Distance.AUTO, 32) is Distance.SSIM
    assert resolve_distance(Distance.AUTO, 256) is Distance.MS_SSIM
    with pytest.raises(RcdmVizError, match="needs the LPIPS weights"):
        resolve_distance(Distance.LPIPS_ALEX, 256)
    with pytest.raises(RcdmVizError, match=">= 161 px, got 32"):
        resolve_distance(Distance.MS_SSIM, 32)
