"""Representations of image sets: the one batch encoder, binarization, bit packing and the feature cache.

Every consumer of a frozen encoder's representations (probes, decoder scores, encoder invariance, neighbour
pairing, decoder training) encodes images through ``encode_batches``. Representations that are reused
(the probes' and the decoder's training images) live in the feature cache: one safetensors file per layer,
``<root>/<layer>.safetensors``, holding float16 [N, D], or, when the decoder is binarized
(``decoder.binarize``), the bits 1[x > 0] packed eight to a byte (uint8 [N, ceil(D / 8)], D in the
metadata): E/N §4.3 and Figure 9 show wide trunks keep their accuracy when binarized, and a D = 32768
trunk over ImageNet's 1.28 M images then takes ~5 GB instead of ~84 GB. The metadata names the encoder
fingerprint, the image set (``ImageSet.key``) and the storage kind; a file whose metadata does not match
(another encoder, other images, binarize switched) is recomputed. A decoder training step therefore never
runs the encoder.

At ImageNet scale these files are larger than memory (1.28 M images × trunk 2048 + three 8192-d heads is
~70 GB), so they are written batch by batch (``FeatureWriter``) and read as memory maps (``FeatureTable``):
a step reads only its batch's rows, and those pages are the kernel's reclaimable page cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.encoders import Encoder
from rcdm_viz.progress import tqdm

# ------------------------------------------------------------------------------------------ encoding


def _device(module: nn.Module) -> torch.device:
    param = next(iter(module.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def encode_batches(
    encoder: nn.Module,
    images: ImageSet | Tensor,
    layers: Sequence[str] | None,
    batch_size: int = 256,
    progress: bool = False,
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Representations of ``images`` (an ImageSet, or float [N, 3, H, W] in [0, 1]) per layer, batch by batch.

    ``encoder`` is any module whose forward returns a dict layer -> features; it is called as
    ``encoder(x, layers=layers)``, or ``encoder(x)`` when ``layers`` is None (then every layer it returns
    is kept). ``prepare`` transforms each batch before it is encoded (e.g. fitting it to the encoder's
    input side). The encoder's mode is left as it is. Returns layer -> float32 [N, D] on the CPU.
    """
    device = _device(encoder)
    n = len(images)
    parts: dict[str, list[Tensor]] = {}
    for start in tqdm(range(0, n, batch_size), desc="features", disable=not progress, leave=False):
        if isinstance(images, ImageSet):
            chunk = images.batch(torch.arange(start, min(n, start + batch_size)))
        else:
            chunk = images[start : start + batch_size]
        if prepare is not None:
            chunk = prepare(chunk)
        chunk = chunk.to(device)
        out = encoder(chunk) if layers is None else encoder(chunk, layers=list(layers))
        for name, feats in out.items():
            parts.setdefault(name, []).append(feats.float().flatten(1).cpu())
    return {name: torch.cat(p) for name, p in parts.items()}


def extract_features(
    encoder: nn.Module, images: ImageSet, layers: Sequence[str], batch_size: int = 256, progress: bool = False
) -> dict[str, Tensor]:
    """Features of every named layer in ONE pass over the images (eval mode, no augmentation).

    Returns layer -> float32 [N, D_layer] on the CPU.
    """
    encoder.eval()
    with torch.inference_mode():
        return encode_batches(encoder, images, layers, batch_size, progress)


# ------------------------------------------------------------------------------------ binarized bits


def binarize(x: Tensor) -> Tensor:
    """E/N §4.3: every non-zero (x > 0) activation set to one, the rest to zero."""
    return (x > 0).float()


def pack_bits(feats: Tensor) -> Tensor:
    """uint8 [N, ceil(D / 8)]: the bits 1[x > 0] of ``feats`` [N, D], eight per byte, first bit highest."""
    return torch.from_numpy(np.packbits(binarize(feats).to(torch.uint8).cpu().numpy(), axis=1))


def unpack_bits(packed: Tensor, dim: int) -> Tensor:
    """float16 {0, 1} [N, dim] from the bytes [N, ceil(dim / 8)] written by ``pack_bits``."""
    if dim < 0 or packed.ndim != 2 or packed.shape[1] != -(-dim // 8):
        raise ValueError(f"packed bits of shape {list(packed.shape)} cannot hold dimension {dim}")
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=dim)
    return torch.from_numpy(bits).to(torch.float16)


# ------------------------------------------------------------------------------------- feature cache


class Storage(StrEnum):
    """How a cache file stores its features (recorded in its metadata)."""

    FLOAT16 = "float16"  # the representation itself, [N, D] float16
    BITS = "bits"  # 1[x > 0] packed along D, [N, ceil(D / 8)] uint8 (E/N §4.3)


_DTYPES = {Storage.FLOAT16: ("F16", np.float16), Storage.BITS: ("U8", np.uint8)}


class FeatureTable:
    """Features [N, D] of one layer, read by rows: ``table[idx]`` is float16 [len(idx), D] on the CPU.

    float16 tables are a read-only memory map of the cache file, so only the pages a batch touches are
    read, and they are page cache (reclaimable), not the process's anonymous memory. Packed bits are small
    (D / 8 bytes a row) and stay packed in memory; ``table[idx]`` unpacks just those rows.
    """

    def __init__(self, rows: np.ndarray, dim: int, storage: Storage) -> None:
        self.rows, self.dim, self.storage = rows, dim, Storage(storage)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.shape[0], self.dim)

    dtype = torch.float16

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, idx: Tensor | slice | np.ndarray) -> Tensor:
        if isinstance(idx, Tensor):
            idx = idx.cpu().numpy()
        if isinstance(idx, np.ndarray) and idx.size > 1:
            # Sorted reads walk the file forwards (readahead helps); the order is restored after.
            order = np.argsort(idx, kind="stable")
            picked = np.empty((idx.size, self.rows.shape[1]), self.rows.dtype)
            picked[order] = self.rows[idx[order]]
        else:
            picked = np.array(self.rows[idx])
        if self.storage is Storage.BITS:
            return unpack_bits(torch.from_numpy(picked.reshape(-1, self.rows.shape[1])), self.dim)
        return torch.from_numpy(picked)

    def float(self, batch: int = 4096) -> Tensor:
        """Every row as float32 [N, D] in memory (only for small sets: the probes' own splits)."""
        out = torch.empty(self.shape)
        for start in range(0, len(self), batch):
            out[start : start + batch] = self[slice(start, start + batch)].float()
        return out


def _path(root: Path, layer: str) -> Path:
    return Path(root) / f"{layer}.safetensors"


def _header(path: Path) -> tuple[dict, int]:
    """The safetensors header of ``path`` and the file offset where its data begins."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(size)), 8 + size


def open_table(path: Path, meta: dict[str, str] | None = None) -> FeatureTable | None:
    """The cache file at ``path`` as a FeatureTable if its metadata matches ``meta`` (any when None)."""
    if not path.is_file():
        return None
    try:
        header, begin = _header(path)
        stored = header.get("__metadata__") or {}
        if meta is not None and {k: v for k, v in stored.items() if k != "dim"} != meta:
            return None
        storage = Storage(stored.get("storage", Storage.FLOAT16))
        entry, (tag, dtype) = header["features"], _DTYPES[storage]
        (n, width), (lo, hi) = entry["shape"], entry["data_offsets"]
        if entry["dtype"] != tag or hi - lo != n * width * np.dtype(dtype).itemsize:
            return None
        if path.stat().st_size < begin + hi:  # torn: the data stops short
            return None
        rows = np.memmap(path, dtype=dtype, mode="r", offset=begin + lo, shape=(n, width)) if n else \
            np.zeros((0, width), dtype)
        dim = int(stored.get("dim", width))
        if storage is Storage.BITS:
            rows = np.array(rows)  # packed bits are small: held in memory, unpacked per batch
        return FeatureTable(rows, dim, storage)
    except (OSError, ValueError, KeyError, TypeError):  # a torn or corrupt file is recomputed
        return None


class FeatureWriter:
    """Writes one layer's cache file batch by batch (a safetensors file, valid only once closed).

    The header needs N and D, both known before the first batch; rows are appended as they come, so
    writing never holds more than one batch. The file is written under a temporary name and renamed.
    """

    def __init__(self, path: Path, n: int, dim: int, meta: dict[str, str]) -> None:
        self.path, self.n, self.dim, self.meta = Path(path), n, dim, dict(meta)
        self.storage = Storage(meta["storage"])
        tag, dtype = _DTYPES[self.storage]
        width = -(-dim // 8) if self.storage is Storage.BITS else dim
        if self.storage is Storage.BITS:
            self.meta["dim"] = str(dim)
        nbytes = n * width * np.dtype(dtype).itemsize
        header = {"features": {"dtype": tag, "shape": [n, width], "data_offsets": [0, nbytes]},
                  "__metadata__": self.meta}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # one per writer
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed by close()
        self.fh.write(len(raw).to_bytes(8, "little") + raw)
        self.written = 0

    def add(self, feats: Tensor) -> None:
        """Append float rows [B, D]."""
        if self.storage is Storage.BITS:
            rows = pack_bits(feats).numpy()
        else:
            rows = feats.to(torch.float16).cpu().numpy()
        self.fh.write(np.ascontiguousarray(rows).tobytes())
        self.written += rows.shape[0]

    def close(self) -> None:
        if self.written != self.n:
            self.fh.close()
            raise RuntimeError(f"feature cache {self.path}: {self.written} rows written, {self.n} expected")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)


@torch.no_grad()
def _extract_to_files(
    encoder: Encoder, images: ImageSet, layers: Sequence[str], root: Path, *, meta: dict[str, str],
    batch_size: int, progress: bool,
) -> None:
    """One encoder pass over ``images`` (eval mode), each batch appended to every layer's cache file."""
    encoder.eval()
    device, n = _device(encoder), len(images)
    writers: dict[str, FeatureWriter] = {}
    for start in tqdm(range(0, n, batch_size), desc="features", disable=not progress, leave=False):
        chunk = images.batch(torch.arange(start, min(n, start + batch_size))).to(device)
        out = encoder(chunk, layers=list(layers))
        for name in layers:
            feats = out[name].float().flatten(1).cpu()
            if name not in writers:
                writers[name] = FeatureWriter(_path(root, name), n, feats.shape[1], meta)
            writers[name].add(feats)
    for writer in writers.values():
        writer.close()


def cached_features(
    encoder: Encoder,
    images: ImageSet,
    layers: Sequence[str],
    root: Path,
    *,
    images_key: str | None = None,
    batch_size: int = 256,
    progress: bool = False,
    binarize: bool = False,
) -> dict[str, FeatureTable]:
    """Features [N, D] of ``layers`` for ``images`` as FeatureTables (rows read per batch, float16), from
    the cache under ``root`` or computed in one pass (only the layers whose file is missing or stale).

    ``images_key`` identifies the image set (default: ``images.key``, set by ``load_images``): together with
    the encoder's fingerprint and the storage kind it decides whether a cached file is still valid. With
    ``binarize`` the features are 1[x > 0] in {0, 1}, stored as packed bits.
    """
    key = images.key if images_key is None else images_key
    storage = (Storage.BITS if binarize else Storage.FLOAT16).value
    meta = {"encoder": encoder.fingerprint(), "images": key, "n": str(len(images)), "storage": storage}
    found = {name: open_table(_path(root, name), meta) for name in layers}
    missing = [name for name, table in found.items() if table is None]
    if missing:
        _extract_to_files(encoder, images, missing, Path(root), meta=meta, batch_size=batch_size,
                          progress=progress)
        for name in missing:
            found[name] = open_table(_path(root, name), meta)
    return found  # type: ignore[return-value]
