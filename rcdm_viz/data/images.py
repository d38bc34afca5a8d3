"""Input images of a command: read a file as a float tensor, fit it to an encoder's or decoder's side, and
name it (the id of its sample folder)."""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

from rcdm_viz.data.folder import READ_SIDE, open_rgb
from rcdm_viz.errors import UNREADABLE_IMAGE, RcdmVizError


def read_image(path: str | Path) -> Tensor:
    """An image file as float [3,H,W] in [0,1] (RGB), or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RcdmVizError(f"image '{path}' does not exist")
    try:
        return pil_to_tensor(open_rgb(path, READ_SIDE)).float() / 255.0
    except UNREADABLE_IMAGE as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RcdmVizError(f"cannot read image '{path}': {reason}") from None


def fit(image: Tensor, resolution: int) -> Tensor:
    """Centre-crop to a square and resize to ``resolution`` (antialiased): [3,H,W] -> [3,r,r]."""
    side = min(image.shape[-2:])
    square = center_crop(image, [side, side])
    if side == resolution:
        return square
    return resize(square, [resolution, resolution], antialias=True).clamp(0, 1)


def image_id(path: str | Path) -> str:
    """A directory-safe id for an input image (its file stem). Leading dots go: a stem ``..`` or ``.``
    would name the run or the samples folder itself, and ``.png`` a hidden folder the browser never lists."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).lstrip(".") or "image"


def image_ids(paths: list[str | Path]) -> list[str]:
    """Distinct ids for the inputs of one command: the stem, with the extension where two inputs share a
    stem (``good.png``, ``good.jpg`` -> ``good_png``, ``good_jpg``), then ``-2``, ``-3``... if still shared
    (same name in two folders). The same command always gives the same ids."""
    stems = [image_id(p) for p in paths]
    ids = [
        s if stems.count(s) == 1 else re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{s}_{Path(p).suffix.lstrip('.')}")
        for s, p in zip(stems, paths, strict=True)
    ]
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}-{seen[i]}")
    return out
