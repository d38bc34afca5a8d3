"""Image sources behind one interface: a labelled uint8 image tensor (plus known factors, if any).

Images are held as uint8 [N,3,H,W] (4x smaller than float, converted per batch) so that a training step
only indexes memory; the synthetic scenes are rendered once, in chunks, when the set is loaded; an image
folder is decoded once (threads); a cache (``rcdm-viz cache``) is a memory map, read page by page.
Folders and caches give at most ``n`` images: all of them, or an evenly spread seeded subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rcdm_viz.config import DataConfig, DataSource
from rcdm_viz.data.cache import open_cache
from rcdm_viz.data.folder import index_folder, load_folder, split_dir
from rcdm_viz.data.synthetic import SyntheticScenes, parse_split
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.progress import tqdm
from rcdm_viz.seeding import derive_seed


@dataclass
class ImageSet:
    """A labelled image set held in memory.

    images: uint8 [N,3,H,W] (a tensor, a memory map, or ``MappedImages`` reading a cache on demand);
    labels: long [N]; factors: name -> float [N] (None when unknown).
    """

    images: Tensor
    labels: Tensor
    factors: dict[str, Tensor] | None = None
    num_classes: int = 0
    class_names: tuple[str, ...] = ()  # folder/cache class names, by label
    key: str = ""  # identity of the set (``images_key``), set by ``load_images``; keys feature caches

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: Tensor) -> Tensor:
        """Float images [B,3,H,W] in [0,1] for the indices ``idx``."""
        return self.images[idx].float().div_(255.0)


def to_uint8(images: Tensor) -> Tensor:
    """float [N,3,H,W] in [0,1] -> uint8, rounding to nearest."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def images_key(data: DataConfig, split: str, n: int, resolution: int) -> str:
    """Identity of an image set (source, root, seed, split, size, resolution), for the feature cache."""
    return f"{data.source.value}:root={data.root}:seed={data.seed}:split={split}:n={n}:res={resolution}"


def load_images(
    data: DataConfig, split: str, n: int | None = None, resolution: int | None = None, progress: bool = True
) -> ImageSet:
    """Load ``n`` images of ``split`` at ``resolution`` (defaults: the config's) as an ImageSet."""
    images = _load(data, split, n, resolution, progress)
    images.key = images_key(data, split, len(images), resolution or data.resolution)
    return images


def _load(data: DataConfig, split: str, n: int | None, resolution: int | None, progress: bool) -> ImageSet:
    split = parse_split(split).value
    n = (data.n_train if split == "train" else data.n_val) if n is None else n
    resolution = resolution or data.resolution
    if n < 1:
        raise RcdmVizError(f"split '{split}' is empty (n = {n}); set data.n_train / data.n_val above 0")
    if data.source == DataSource.SYNTHETIC:
        return _synthetic(data.seed, split, n, resolution, progress)
    if not data.root:
        raise RcdmVizError(f"data.source={data.source.value} needs data.root (the folder or cache directory)")
    if data.source == DataSource.FOLDER:
        return _folder(data, split, n, resolution, progress)
    if data.source == DataSource.CACHE:
        return _cache(data, split, n, resolution)
    raise RcdmVizError(f"unsupported data source '{data.source}'")


def subset(total: int, n: int, seed: int, split: str) -> Tensor | None:
    """Sorted seeded choice of ``n`` of ``total`` indices, or None when ``n >= total`` (take all)."""
    if n >= total:
        return None
    gen = torch.Generator().manual_seed(derive_seed(seed, "subset", split))
    return torch.randperm(total, generator=gen)[:n].sort().values


def resize_uint8(images: Tensor, resolution: int, chunk: int = 1024) -> Tensor:
    """uint8 [N,3,H,W] -> uint8 [N,3,R,R] (antialiased bilinear; square inputs stay square)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    out = torch.empty((images.shape[0], 3, resolution, resolution), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        batch = images[s : s + chunk].float().div_(255)
        out[s : s + chunk] = to_uint8(
            F.interpolate(
                batch, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            )
        )
    return out


def _folder(data: DataConfig, split: str, n: int, resolution: int, progress: bool) -> ImageSet:
    index = index_folder(split_dir(data.root, split))
    chosen = subset(len(index.files), n, data.seed, split)
    keep = range(len(index.files)) if chosen is None else chosen.tolist()
    files = [index.files[i] for i in keep]
    labels = [index.labels[i] for i in keep]
    images, labels_t = load_folder(files, labels, resolution, data.decode_workers, progress, str(index.root))
    return ImageSet(images, labels_t, None, num_classes=len(index.classes), class_names=tuple(index.classes))


class MappedImages:
    """uint8 images [n, 3, R, R] read on demand: rows ``rows`` of a memory-mapped cache ``source`` (all of
    them when None), resized to R = ``resolution`` as they are read. Indexing returns a uint8 tensor, so an
    ImageSet holds a subset or another resolution of a 1.28 M-image cache without copying it into memory.
    """

    def __init__(self, source: Tensor, rows: Tensor | None, resolution: int) -> None:
        self.source, self.rows, self.resolution = source, rows, resolution

    @property
    def shape(self) -> torch.Size:
        n = self.source.shape[0] if self.rows is None else len(self.rows)
        return torch.Size((n, 3, self.resolution, self.resolution))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Tensor | slice | int) -> Tensor:
        pos = torch.arange(len(self))[idx]
        if self.rows is not None:
            pos = self.rows[pos]
        return resize_uint8(self.source[pos], self.resolution)


def _cache(data: DataConfig, split: str, n: int, resolution: int) -> ImageSet:
    images, labels, classes = open_cache(data.root, split)
    chosen = subset(len(images), n, data.seed, split)
    if chosen is not None:
        labels = labels[chosen]
    if chosen is not None or images.shape[-1] != resolution:
        images = MappedImages(images, chosen, resolution)  # type: ignore[assignment]
    return ImageSet(images, labels, None, len(classes), tuple(classes))


def _synthetic(seed: int, split: str, n: int, resolution: int, progress: bool, chunk: int = 1024) -> ImageSet:
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
