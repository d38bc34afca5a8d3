"""Factor views: the second SSL view of a synthetic scene is the same scene with named factors redrawn.

With ``views.redraw_factors = ("floor_hue",)`` the two views of a scene differ in the floor's colour (and in
the usual augmentations): the SSL objective then asks for invariance to exactly that factor. This makes GR's
Figure 2 question a controlled experiment: does the projector absorb an invariance that the trunk does not?
(docs/DESIGN.md "Factor views"). Only synthetic scenes know their factors, so only they can be re-rendered.

The redrawn values of step s are drawn for the whole global batch from a generator seeded by (seed, s), then
sharded like the batch: any number of processes, and a resumed run, see the same partner images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rcdm_viz.config import DataSource
from rcdm_viz.data.sources import ImageSet, to_uint8
from rcdm_viz.data.synthetic import FACTOR_RANGES, FACTORS, render
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.seeding import generator_for


def check_redraw_factors(names: Sequence[str], source: DataSource) -> tuple[str, ...]:
    """The factor names to redraw, validated: known factors, no repeats, synthetic data only."""
    names = tuple(names)
    if not names:
        return names
    if source is not DataSource.SYNTHETIC:
        raise RcdmVizError(
            f"views.redraw_factors {list(names)} needs data.source=synthetic (scenes with known factors), "
            f"got data.source={source.value}"
        )
    for name in names:
        if name not in FACTORS:
            valid = ", ".join(FACTORS)
            raise RcdmVizError(f"unknown factor '{name}' in views.redraw_factors; choose from: {valid}")
    if len(set(names)) != len(names):
        raise RcdmVizError(f"views.redraw_factors names a factor twice: {list(names)}")
    return names


def draw_factors(names: Sequence[str], n: int, seed: int, step: int) -> Tensor:
    """Fresh values of the factors ``names`` for a global batch of ``n`` scenes at ``step``: float32 [n, k].

    Uniform over each factor's range (as the dataset draws them), from a generator seeded by (seed, step).
    """
    gen = generator_for(seed, "redraw-factors", step)
    u = torch.rand(n, len(names), generator=gen, dtype=torch.float64)
    lo = torch.tensor([FACTOR_RANGES[k][0] for k in names], dtype=torch.float64)
    hi = torch.tensor([FACTOR_RANGES[k][1] for k in names], dtype=torch.float64)
    return (lo + (hi - lo) * u).to(torch.float32)


class FactorViews:
    """Re-renders scenes of a synthetic ImageSet with some factors replaced (the second SSL view)."""

    def __init__(self, images: ImageSet, names: Sequence[str]) -> None:
        if images.factors is None:
            raise RcdmVizError("views.redraw_factors needs images with known factors (synthetic scenes)")
        self.images, self.names = images, tuple(names)
        self.resolution = int(images.images.shape[-1])

    def factors(self, idx: Tensor, values: Tensor) -> dict[str, Tensor]:
        """Factors of scenes ``idx`` (long [B]) with ``names`` set to ``values`` ([B, k]): name -> [B]."""
        factors = {k: v[idx] for k, v in self.images.factors.items()}
        for j, name in enumerate(self.names):
            factors[name] = values[:, j]
        return factors

    def render(self, idx: Tensor, values: Tensor) -> Tensor:
        """Scenes ``idx`` re-rendered with ``self.factors(idx, values)``: float [B, 3, H, W] in [0, 1].

        Quantised to uint8 like the stored images, so that unchanged factors give the stored image exactly.
        """
        images = render(self.factors(idx, values), self.images.labels[idx], self.resolution)
        return to_uint8(images).float().div_(255.0)
