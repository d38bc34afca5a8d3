"""uint8 image cache: an image folder decoded once into memory-mapped ``.npy`` arrays.

Layout of a cache directory (``rcdm-viz cache --data DIR --resolution R --out CACHE``)::

    CACHE/meta.json                 format, resolution, class names, images per split, skipped files
    CACHE/<split>.npy               uint8 [N, 3, R, R] (numpy format, opened with mmap)
    CACHE/<split>-labels.npy        int64 [N]

Training then only indexes pages of a memory map: loading never limits a GPU. Arrays are written under
temporary names and moved into place, so an interrupted run never leaves a cache that looks complete.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from rcdm_viz.data.folder import Skipped, decode_many, index_folder, split_dir
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import atomic_write, read_json, write_json

FORMAT = "rcdm_viz.cache/1"
META = "meta.json"


def _splits(root: Path) -> list[str]:
    """The splits of an image folder: its train/val/test subfolders, or just "train" for a flat folder."""
    if (root / "train").is_dir():
        return [s for s in ("train", "val", "test") if (root / s).is_dir()]
    return ["train"]


def write_cache(
    data: str | Path, resolution: int, out: str | Path, workers: int = 0, progress: bool = True
) -> dict:
    """Decode every split of the image folder ``data`` at ``resolution`` into the cache ``out``.

    Unreadable files are skipped, counted in meta.json and reported in one warning per split.
    Returns the meta dict written.
    """
    if resolution < 1:
        raise RcdmVizError(f"--resolution must be >= 1, got {resolution}")
    root, out = Path(data), Path(out)
    split_dir(root, "train")  # existence check with a clear error
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {
        "format": FORMAT,
        "resolution": resolution,
        "source": str(root),
        "splits": {},
        "skipped": {},
    }
    for split in _splits(root):
        index = index_folder(split_dir(root, split))
        if "classes" in meta and meta["classes"] != index.classes:
            raise RcdmVizError(f"'{index.root}' has different class subfolders from the train split")
        meta["classes"] = index.classes
        n, skipped = _write_split(index.files, index.labels, resolution, out, split, workers, progress)
        skipped.warn(str(index.root))
        meta["splits"][split] = n
        meta["skipped"][split] = sorted(skipped.reasons)
    write_json(out / META, meta)
    return meta


def _write_split(
    files: list[Path], labels: list[int], resolution: int, out: Path, split: str, workers: int, progress: bool
) -> tuple[int, Skipped]:
    tmp = out / f".{split}.tmp.npy"
    images = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, resolution, resolution)
    )
    kept: list[int] = []
    skipped = Skipped()
    for i, img in decode_many(files, resolution, workers, progress, desc=f"cache {split}"):
        if isinstance(img, str):
            skipped.reasons[str(files[i])] = img
        else:
            images[len(kept)] = img.numpy()
            kept.append(i)
    if not kept:
        raise RcdmVizError(f"no readable image in '{files[0].parent.parent}' ({len(files)} file(s) skipped)")
    if len(kept) < len(files):  # rewrite at the final size (rare: only when files were skipped)
        final = np.lib.format.open_memmap(
            out / f".{split}.tmp2.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(kept), 3, resolution, resolution),
        )
        for start in range(0, len(kept), 4096):
            stop = min(start + 4096, len(kept))
            final[start:stop] = images[start:stop]
        final.flush()
        del images
        os.replace(out / f".{split}.tmp2.npy", tmp)
    else:
        images.flush()
        del images
    kept_labels = np.asarray([labels[i] for i in kept], dtype=np.int64)
    atomic_write(out / f"{split}-labels.npy", lambda tmp: _save_npy(tmp, kept_labels))
    os.replace(tmp, out / f"{split}.npy")
    return len(kept), skipped


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to the temp file's name
        np.save(fh, array)


def open_cache(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Memory-mapped uint8 images [N,3,R,R], labels long [N] and class names of one cached split."""
    root = Path(root)
    if not (root / META).is_file():
        raise RcdmVizError(f"'{root}' is not an rcdm-viz cache (no {META}); write one with `rcdm-viz cache`")
    meta = read_json(root / META)
    if meta.get("format") != FORMAT:
        raise RcdmVizError(f"'{root / META}' has format {meta.get('format')!r}, expected {FORMAT!r}")
    if split not in meta["splits"] and list(meta["splits"]) == ["train"]:
        warnings.warn(f"cache '{root}' holds only a train split: {split} uses the same images", stacklevel=2)
        split = "train"
    if split not in meta["splits"]:
        raise RcdmVizError(f"cache '{root}' has no split '{split}'; it has: {', '.join(meta['splits'])}")
    # Copy-on-write map: writable for torch, never writes back to the file.
    images = torch.from_numpy(np.load(root / f"{split}.npy", mmap_mode="c"))
    labels = torch.from_numpy(np.load(root / f"{split}-labels.npy")).long()
    return images, labels, list(meta["classes"])
