"""Image sources behind one interface: a labelled uint8 image tensor (plus known factors, if any).

Images are held as uint8 [N,3,H,W] (4x smaller than float, converted per batch) so that a training step
only indexes memory; the synthetic scenes are rendered once, in chunks, when the set is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rcdm_viz.config import DataConfig, DataSource
from rcdm_viz.errors import RcdmVizError

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """A labelled image set held in memory.

    images: uint8 [N,3,H,W]; labels: long [N]; factors: name -> float [N] (None when unknown).
    """

    images: Tensor
    labels: Tensor
    factors: dict[str, Tensor] | None = None
    num_classes: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: Tensor) -> Tensor:
        """Float images [B,3,H,W] in [0,1] for the indices ``idx``."""
        return self.images[idx].float().div_(255.0)


def to_uint8(images: Tensor) -> Tensor:
    """float [N,3,H,W] in [0,1] -> uint8, rounding to nearest."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def load_images(
    data: DataConfig, split: str, n: int | None = None, resolution: int | None = None, progress: bool = True
) -> ImageSet:
    """Load ``n`` images of ``split`` at ``resolution`` (defaults: the config's) as an ImageSet."""
    if split not in SPLITS:
        raise RcdmVizError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    n = (data.n_train if split == "train" else data.n_val) if n is None else n
    resolution = resolution or data.resolution
    if n < 1:
        raise RcdmVizError(f"split '{split}' is empty (n = {n}); set data.n_train / data.n_val above 0")
    if data.source == DataSource.SYNTHETIC:
        return _synthetic(data.seed, split, n, resolution, progress)
    raise RcdmVizError(f"unsupported data source '{data.source}'")


def _synthetic(seed: int, split: str, n: int, resolution: int, progress: bool, chunk: int = 1024) -> ImageSet:
    from rcdm_viz.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(n, resolution=resolution, seed=seed, split=split)
    images = torch.empty((n, 3, resolution, resolution), dtype=torch.uint8)
    bar = tqdm(total=n, desc=f"render {split} {resolution}px", disable=not progress, leave=False)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk))
        batch, _, _ = scenes.render_batch(idx)
        images[start : start + len(idx)] = to_uint8(batch)
        bar.update(len(idx))
    bar.close()
    factors = {k: v.float() for k, v in scenes.factors.items()}
    return ImageSet(images, scenes.labels.long(), factors, num_classes=len(SyntheticScenes.SHAPES))
