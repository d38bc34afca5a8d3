"""The synthetic scenes as a torch Dataset, and the renderer's throughput."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from rcdm_viz.data.synthetic.factors import CIRCULAR, FACTOR_RANGES, FACTORS, parse_split, sample_factors
from rcdm_viz.data.synthetic.renderer import check_resolution, render, resolve_supersample
from rcdm_viz.data.synthetic.shapes import SHAPES
from rcdm_viz.errors import RcdmVizError


class SyntheticScenes(Dataset):
    """n procedurally rendered scenes (one object on a floor under a spot light; GR appendix A.1).

    Item i: (image float32 [3, H, W] in [0, 1], label int = shape index, factors dict name -> float). Image i
    is a pure function of (seed, split, i, resolution); seeds are taken modulo 2^64. split is "train", "val"
    or "test" (independent streams). supersample: rays per pixel side (None: 2 up to 32 px, else 1).
    For speed use `render_batch` (or a DataLoader, which calls `__getitems__` with a whole batch of
    indices): per-item rendering pays Python overhead (~3 ms an image).
    """

    FACTORS: tuple[str, ...] = FACTORS
    FACTOR_RANGES: dict[str, tuple[float, float]] = FACTOR_RANGES
    CIRCULAR: tuple[str, ...] = CIRCULAR
    SHAPES: tuple[str, ...] = SHAPES

    def __init__(
        self,
        n: int,
        resolution: int = 32,
        seed: int = 0,
        split: str = "train",
        supersample: int | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RcdmVizError(f"number of scenes n must be an integer >= 0, got {n!r}")
        check_resolution(resolution)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RcdmVizError(f"seed must be an integer, got {seed!r}")
        self.n, self.resolution, self.seed = n, resolution, seed
        self.supersample = resolve_supersample(resolution, supersample)
        self.split = parse_split(split)
        self._labels: Tensor | None = None
        self._factors: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return self.n

    def _all(self) -> tuple[Tensor, dict[str, Tensor]]:
        if self._labels is None or self._factors is None:
            self._labels, self._factors = sample_factors(torch.arange(self.n), self.seed, self.split)
        return self._labels, self._factors

    @property
    def labels(self) -> Tensor:
        """Shape labels of all scenes, long [n], without rendering."""
        return self._all()[0]

    @property
    def factors(self) -> dict[str, Tensor]:
        """All factors, name -> float32 [n], without rendering."""
        return self._all()[1]

    def _indices(self, indices: Tensor | Sequence[int]) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
        bad = idx[(idx < 0) | (idx >= self.n)]
        if bad.numel():
            raise RcdmVizError(f"scene index {int(bad[0])} is out of range for {self.n} scenes")
        return idx

    def render_batch(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Render scenes by index: -> (images float32 [N, 3, H, W], labels long [N], factors name -> [N])."""
        idx = self._indices(indices)
        labels, factors = sample_factors(idx, self.seed, self.split)
        return render(factors, labels, self.resolution, self.supersample), labels, factors

    def __getitem__(self, i: int) -> tuple[Tensor, int, dict[str, float]]:
        if not -self.n <= i < self.n:
            raise IndexError(f"scene index {i} out of range for {self.n} scenes")
        return self.__getitems__([i % self.n])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int, dict[str, float]]]:
        """A whole batch rendered at once (torch's DataLoader uses this when present)."""
        images, labels, factors = self.render_batch(indices)
        return [(images[j], int(labels[j]), {k: float(v[j]) for k, v in factors.items()})
                for j in range(len(labels))]


def render_rate(resolution: int, n: int = 512, seed: int = 0, supersample: int | None = None) -> float:
    """Images per second of `render_batch` for n scenes at this resolution (the steady rate of a loader:
    after one warm-up call of the same size, which grows the heap to the working set of the batch)."""
    scenes = SyntheticScenes(n, resolution=resolution, seed=seed, supersample=supersample)
    idx = torch.arange(n)
    scenes.render_batch(idx)
    start = time.perf_counter()
    scenes.render_batch(idx)
    return n / (time.perf_counter() - start)
