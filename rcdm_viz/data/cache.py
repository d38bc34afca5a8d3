"""uint8 image cache: an image folder decoded once into memory-mapped ``.npy`` arrays.

Layout of a cache directory (``rcdm-viz cache --data DIR --resolution R --out CACHE``)::

    CACHE/meta.json                 format, resolution, class names, images per split, skipped files
    CACHE/<split>.npy               uint8 [N, 3, R, R] (numpy format, opened with mmap)
    CACHE/<split>-labels.npy        int64 [N]

Training then only indexes pages of a memory map: loading never limits a GPU. Arrays are written under
temporary names and moved into place, so an interrupted run never leaves a cache that looks complete;
run again, it resumes from its last saved chunk (``_Partial``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from rcdm_viz.data.folder import Skipped, decode_many, index_folder, split_dir
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.progress import tqdm
from rcdm_viz.runs import atomic_write, read_json, write_json

FORMAT = "rcdm_viz.cache/1"
META = "meta.json"
CHUNK = 1024  # images decoded between two saved progress points (what a kill can cost)


def _splits(root: Path) -> list[str]:
    """The splits of an image folder: its train/val/test subfolders, or just "train" for a flat folder."""
    if (root / "train").is_dir():
        return [s for s in ("train", "val", "test") if (root / s).is_dir()]
    return ["train"]


def write_cache(
    data: str | Path,
    resolution: int,
    out: str | Path,
    workers: int = 0,
    progress: bool = True,
    chunk: int = CHUNK,
) -> dict:
    """Decode every split of the image folder ``data`` at ``resolution`` into the cache ``out``.

    Unreadable files are skipped, counted in meta.json and reported in one warning per split. Images are
    decoded by threads, ``chunk`` at a time, straight into a memory-mapped array on disk (memory holds one
    chunk); after each chunk the progress is saved, so a killed run started again with the same arguments
    resumes where it stopped and ends with the same bytes as an uninterrupted one.
    Returns the meta dict written.
    """
    if resolution < 1:
        raise RcdmVizError(f"the cache resolution must be >= 1, got {resolution}")
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
        n, skipped = _write_split(index.files, index.labels, resolution, out, split, workers=workers,
                                  progress=progress, chunk=chunk)
        skipped.warn(str(index.root))
        meta["splits"][split] = n
        meta["skipped"][split] = sorted(skipped.reasons)
    write_json(out / META, meta)
    for split in meta["splits"]:
        (out / f".{split}.done.json").unlink(missing_ok=True)
    return meta


def _job(files: list[Path], resolution: int) -> dict:
    """What a split's caching is: a partial or finished split of another job is not reused."""
    listing = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()
    return {"resolution": resolution, "files": len(files), "list": listing}


class _Partial:
    """The resumable state of one split being cached, next to the final files:

    ``.<split>.partial.npy`` uint8 [F,3,R,R] (image i of the F files at row i), ``.<split>.status.npy``
    uint8 [F] (0 = not yet, 1 = decoded, 2 = skipped), ``.<split>.skipped.jsonl`` (path and reason of each
    skipped file) and ``.<split>.job.json`` (what is being cached: a differing job starts afresh). A chunk's
    rows are flushed before its status, so a status byte never claims an image the file does not hold.
    """

    def __init__(self, out: Path, split: str, files: list[Path], resolution: int) -> None:
        self.paths = {
            k: out / f".{split}.{k}" for k in ("partial.npy", "status.npy", "skipped.jsonl", "job.json")
        }
        job = _job(files, resolution)
        fresh = not all(p.is_file() for p in self.paths.values()) or read_json(self.paths["job.json"]) != job
        if fresh:
            self.discard()
            write_json(self.paths["job.json"], job)
        mode, shape = ("w+" if fresh else "r+"), (len(files), 3, resolution, resolution)
        self.images = np.lib.format.open_memmap(
            self.paths["partial.npy"], mode=mode, dtype=np.uint8, shape=shape
        )
        self.status = np.lib.format.open_memmap(
            self.paths["status.npy"], mode=mode, dtype=np.uint8, shape=(len(files),)
        )
        if fresh:
            self.paths["skipped.jsonl"].write_text("")

    def skipped(self) -> Skipped:
        """Files skipped so far (a line of a chunk redone after a kill appears twice: same reason)."""
        out = Skipped()
        for line in self.paths["skipped.jsonl"].read_text().splitlines():
            if line.strip():
                path, reason = json.loads(line)
                out.reasons[path] = reason
        return out

    def commit(self, start: int, status: np.ndarray, reasons: dict[str, str]) -> None:
        """Make rows ``start..start+len(status)`` durable, then mark them done."""
        self.images.flush()
        if reasons:
            with open(self.paths["skipped.jsonl"], "a") as fh:
                fh.writelines(json.dumps([p, r]) + "\n" for p, r in reasons.items())
        self.status[start : start + len(status)] = status
        self.status.flush()

    def discard(self) -> None:
        for path in self.paths.values():
            path.unlink(missing_ok=True)


def _write_split(
    files: list[Path],
    labels: list[int],
    resolution: int,
    out: Path,
    split: str,
    *,
    workers: int,
    progress: bool,
    chunk: int = CHUNK,
) -> tuple[int, Skipped]:
    """Decode ``files`` chunk by chunk into the resumable partial array, then move the kept rows in place."""
    done = out / f".{split}.done.json"  # a split finished by a run that was killed in a later split
    finished = done.is_file() and (out / f"{split}.npy").is_file()
    if finished and (record := read_json(done))["job"] == _job(files, resolution):
        skipped = Skipped()
        skipped.reasons.update(record["skipped"])
        return record["n"], skipped
    part = _Partial(out, split, files, resolution)
    todo = [s for s in range(0, len(files), chunk) if not part.status[s : s + chunk].all()]
    for start in tqdm(todo, desc=f"cache {split}", unit="chunk", disable=not progress, leave=False):
        names = files[start : start + chunk]
        status, reasons = np.ones(len(names), np.uint8), {}
        for i, img in decode_many(names, resolution, workers):
            if isinstance(img, str):
                status[i], reasons[str(names[i])] = 2, img
            else:
                part.images[start + i] = img.numpy()
        part.commit(start, status, reasons)
    kept = np.flatnonzero(np.asarray(part.status) == 1)
    skipped = part.skipped()
    if not len(kept):
        raise RcdmVizError(f"no readable image in '{files[0].parent.parent}' ({len(files)} file(s) skipped)")
    tmp = out / f".{split}.tmp.npy"
    if len(kept) < len(files):  # compact to the readable images (rare: only when files were skipped)
        final = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(kept), 3, resolution, resolution)
        )
        for s in range(0, len(kept), 4096):
            final[s : s + 4096] = part.images[kept[s : s + 4096]]
        final.flush()
        del final
    else:
        part.images.flush()
        os.replace(part.paths["partial.npy"], tmp)
    kept_labels = np.asarray([labels[i] for i in kept], dtype=np.int64)
    atomic_write(out / f"{split}-labels.npy", lambda t: _save_npy(t, kept_labels))
    os.replace(tmp, out / f"{split}.npy")
    write_json(done, {"job": _job(files, resolution), "n": len(kept), "skipped": skipped.reasons})
    del part.images, part.status
    part.discard()
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
    images, labels = _load_split(root, split)
    classes = list(meta["classes"])
    expected = meta["splits"][split]
    square = images.ndim == 4 and images.shape[1] == 3 and images.shape[2] == images.shape[3]
    if not square or images.dtype != np.uint8 or len(images) != expected or labels.shape != (len(images),):
        raise RcdmVizError(
            f"cache '{root}' split '{split}' is inconsistent (images {tuple(images.shape)} {images.dtype}, "
            f"labels {tuple(labels.shape)}, {META} says {expected} images); rewrite it with `rcdm-viz cache`"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise RcdmVizError(f"cache '{root}' split '{split}' has labels outside its {len(classes)} classes")
    # Copy-on-write map: writable for torch, never writes back to the file.
    return torch.from_numpy(images), torch.from_numpy(labels).long(), classes


def _load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped images and the labels of one split, or one line when a file is torn or corrupt."""
    path = root / f"{split}.npy"
    try:
        images = np.load(path, mmap_mode="c")
        path = root / f"{split}-labels.npy"
        labels = np.load(path)
    except (OSError, ValueError, EOFError) as err:
        why = f"cache file '{path}' is truncated or corrupt ({err})"
        raise RcdmVizError(f"{why}; rewrite it with `rcdm-viz cache`") from None
    return images, labels
