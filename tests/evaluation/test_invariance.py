"""Encoder invariance: an encoder blind to colour is invariant to colour jitter, a pixel encoder is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation.invariance import encoder_invariance, other_image_similarity


class ShapeOnly(nn.Module):
    """Ignores colour: a fixed random projection of the mask "pixel differs from the corner pixel".

    Every colour-jitter part and grayscale apply one injective colour map to all pixels of an image, so on
    two-colour images (floor + square) this mask, and the features, do not change.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16 * 16, 32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = ((x - x[:, :, :1, :1]).abs().sum(1) > 1e-3).float().flatten(1)
        return {"shape": self.proj(mask)}


class Pixels(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": x.flatten(1) - 0.5}


def _images(n: int = 24) -> torch.Tensor:
    """Two-colour images: a uniform square (values 0.55-0.7) on a uniform floor (values 0.2-0.3)."""
    gen = torch.Generator().manual_seed(0)
    x = (0.2 + 0.1 * torch.rand(n, 3, 1, 1, generator=gen)).expand(n, 3, 16, 16).clone()
    for i in range(n):
        r, c = torch.randint(1, 10, (2,), generator=gen).tolist()
        x[i, :, r : r + 6, c : c + 6] = 0.55 + 0.15 * torch.rand(3, 1, 1, generator=gen)
    return x


def test_colour_blind_encoder_is_invariant_to_colour_but_not_to_geometry():
    torch.manual_seed(0)
    colour = ["brightness", "contrast", "saturation", "hue", "grayscale"]
    scores = encoder_invariance(ShapeOnly(), _images(), colour + ["flip", "crop"])["shape"]
    for aug in colour:
        assert scores[aug] == pytest.approx(1.0, abs=1e-6), aug
    assert scores["flip"] < 0.8 and scores["crop"] < 0.9


def test_pixel_encoder_is_not_invariant_and_scores_are_reproducible():
    x = _images()
    a = encoder_invariance(Pixels(), x, ["solarize", "hue"])
    assert a == encoder_invariance(Pixels(), x, ["solarize", "hue"])
    assert a["pixels"]["solarize"] < 0.9


def test_other_image_similarity_matches_the_pairwise_mean():
    h = torch.randn(7, 5)
    hn = nn.functional.normalize(h, dim=1)
    sims = hn @ hn.T
    expected = (sims.sum() - sims.diagonal().sum()) / (7 * 6)
    assert other_image_similarity(h) == pytest.approx(float(expected), abs=1e-6)


def test_bad_inputs():
    with pytest.raises(RcdmVizError, match="zoom"):
        encoder_invariance(Pixels(), _images(), ["zoom"])
    with pytest.raises(ValueError, match=">= 2 images"):
        encoder_invariance(Pixels(), _images(1), None)
