"""Image folders with ImageNet's layout: ``root/[train|val/]<class>/<image>``, classes sorted by name.

Decoding is robust: a file that is not a readable image is skipped, counted, and reported in one warning
at the end (count and a few names); it never stops a run and is never silent. Images are resized so that
the shorter side is the target resolution (antialiased bicubic) and centre-cropped to a square.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.progress import tqdm

_SHOWN_NAMES = 5  # how many skipped files the warning names
# The most pixels an input may have: PIL's own decompression-bomb bound (a tiny PNG can claim 12000x12000).
MAX_PIXELS = 89_478_485
READ_SIDE = 512  # inputs to sample are downscaled (integer factor) toward this short side: far above 128 px
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}


@dataclass
class FolderIndex:
    """The files of one split: paths, their class indices, and the sorted class names."""

    root: Path
    files: list[Path]
    labels: list[int]
    classes: list[str]


@dataclass
class Skipped:
    """Files that could not be decoded (path -> reason)."""

    reasons: dict[str, str] = field(default_factory=dict)

    def warn(self, where: str) -> None:
        """One warning line naming the count and the first few files; nothing when none was skipped."""
        if not self.reasons:
            return
        names = ", ".join(Path(p).name for p in list(self.reasons)[:_SHOWN_NAMES])
        more = ", ..." if len(self.reasons) > _SHOWN_NAMES else ""
        warnings.warn(
            f"skipped {len(self.reasons)} unreadable file(s) in {where}: {names}{more}", stacklevel=3
        )


def split_dir(root: str | Path, split: str) -> Path:
    """``root/split`` when ``root`` has a ``train/`` subfolder (ImageNet layout), else ``root`` itself.

    Without split subfolders, every split reads the same images (a warning says so for non-train splits).
    """
    base = Path(root)
    if not base.is_dir():
        raise RcdmVizError(f"image folder '{base}' does not exist")
    if (base / "train").is_dir():
        path = base / split
        if not path.is_dir():
            raise RcdmVizError(f"image folder '{base}' has train/ but no {split}/ subfolder")
        return path
    if split != "train":
        warnings.warn(
            f"'{base}' has no train/ and {split}/ subfolders: {split} uses the same images", stacklevel=2
        )
    return base


def index_folder(path: str | Path) -> FolderIndex:
    """List ``path/<class>/<file>`` (hidden entries ignored); classes are the sorted subfolder names."""
    path = Path(path)
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise RcdmVizError(f"image folder '{path}' is empty")
    classes = sorted(p.name for p in entries if p.is_dir())
    if not classes:
        raise RcdmVizError(f"image folder '{path}' has no class subfolders (expected {path}/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                files.append(f)
                labels.append(label)
    if not files:
        raise RcdmVizError(f"image folder '{path}' has class subfolders but no files in them")
    return FolderIndex(path, files, labels, classes)


def _as_rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode: 16-bit and 32-bit integer images scaled from 0..65535, float images from 0..1
    (0..255 when they exceed 1); PIL's own convert would clip them to white or black."""
    if img.mode in _WIDE_MODES or img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        top = _WIDE_MODES.get(img.mode) or (1.0 if values.max(initial=0.0) <= 1.0 else 255.0)
        img = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def open_rgb(source: Path | BinaryIO, min_side: int, reduce: bool = True) -> Image.Image:
    """An image file as upright RGB (EXIF orientation applied), at least ``min_side`` on its short side.

    Bounded: more than ``MAX_PIXELS`` is refused (ValueError) before decoding; JPEGs decode at a reduced
    scale; with ``reduce`` an image over twice ``min_side`` is box-downscaled by an integer factor before
    anything else holds it. Raises OSError / ValueError / SyntaxError (PIL's errors) for unreadable files.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the numbers
        with Image.open(source) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels, more than the {MAX_PIXELS} allowed")
            img.draft("RGB", (min_side, min_side))  # JPEG: decode at a reduced scale >= min_side
            rgb = _as_rgb(ImageOps.exif_transpose(img))
    factor = min(rgb.size) // (2 * min_side)
    return rgb.reduce(factor) if reduce and factor >= 2 else rgb


def decode(path: Path, resolution: int) -> Tensor:
    """uint8 [3, R, R]: RGB, shorter side resized to R (antialiased bicubic), centre crop.

    Raises OSError / ValueError / SyntaxError (PIL's errors) for a file that is not a readable image.
    """
    rgb = open_rgb(path, resolution, reduce=False)
    rgb = TF.resize(rgb, resolution, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.pil_to_tensor(TF.center_crop(rgb, [resolution, resolution]))


def _try_decode(path: Path, resolution: int) -> Tensor | str:
    try:
        return decode(path, resolution)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"


def decode_many(
    files: Sequence[Path], resolution: int, workers: int = 0, progress: bool = False, desc: str = "decode"
) -> Iterator[tuple[int, Tensor | str]]:
    """Yield (position, uint8 [3,R,R] image or the error text) for every file, in order, decoded by threads.

    PIL releases the GIL while decoding, so threads scale with cores; ``workers`` 0 = one per core.
    """
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda f: _try_decode(f, resolution), files, chunksize=64)
        yield from enumerate(tqdm(results, total=len(files), desc=desc, disable=not progress, leave=False))


def load_folder(
    files: Sequence[Path], labels: Sequence[int], resolution: int, workers: int, progress: bool, where: str
) -> tuple[Tensor, Tensor]:
    """Decode ``files`` into uint8 [M,3,R,R] and long [M] labels, M = the readable ones (warned about)."""
    images = torch.empty((len(files), 3, resolution, resolution), dtype=torch.uint8)
    kept: list[int] = []
    skipped = Skipped()
    for i, out in decode_many(files, resolution, workers, progress, desc=f"decode {where}"):
        if isinstance(out, str):
            skipped.reasons[str(files[i])] = out
        else:
            images[len(kept)] = out
            kept.append(i)
    skipped.warn(where)
    if not kept:
        raise RcdmVizError(f"no readable image in {where} ({len(files)} file(s) skipped)")
    images = images[: len(kept)].clone() if len(kept) < len(files) else images
    return images, torch.tensor([labels[i] for i in kept], dtype=torch.long)
