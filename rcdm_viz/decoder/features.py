"""Feature cache: the frozen encoder's representations of the decoder's training images, computed once.

``features/<layer>.safetensors`` holds float16 [N, D], or, when the decoder is binarized
(``decoder.binarize``), the bits 1[x > 0] packed eight to a byte (uint8 [N, ceil(D / 8)], D in the
metadata): E/N §4.3 and Figure 9 show wide trunks keep their accuracy when binarized, and a D = 32768
trunk over ImageNet's 1.28 M images then takes ~5 GB instead of ~84 GB. The metadata names the encoder
fingerprint, the image set and the storage kind; a cache whose metadata does not match (another encoder,
other images, binarize switched) is recomputed. A decoder training step therefore never runs the encoder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.encoders import Encoder
from rcdm_viz.evaluation.probes import binarize, extract_features


class Storage(StrEnum):
    """How a cache file stores its features (recorded in its metadata)."""

    FLOAT16 = "float16"  # the representation itself, [N, D] float16
    BITS = "bits"  # 1[x > 0] packed along D, [N, ceil(D / 8)] uint8 (E/N §4.3)


def pack_bits(feats: Tensor) -> Tensor:
    """uint8 [N, ceil(D / 8)]: the bits 1[x > 0] of ``feats`` [N, D], eight per byte, first bit highest."""
    return torch.from_numpy(np.packbits(binarize(feats).to(torch.uint8).cpu().numpy(), axis=1))


def unpack_bits(packed: Tensor, dim: int) -> Tensor:
    """float16 {0, 1} [N, dim] from the bytes [N, ceil(dim / 8)] written by ``pack_bits``."""
    if dim < 0 or packed.ndim != 2 or packed.shape[1] != -(-dim // 8):
        raise ValueError(f"packed bits of shape {list(packed.shape)} cannot hold dimension {dim}")
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=dim)
    return torch.from_numpy(bits).to(torch.float16)


def _path(root: Path, layer: str) -> Path:
    return Path(root) / f"{layer}.safetensors"


def _read(path: Path, meta: dict[str, str]) -> Tensor | None:
    """The cached features at ``path`` (float16 [N, D]) if its metadata matches ``meta``, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            stored = fh.metadata() or {}
            if {k: v for k, v in stored.items() if k != "dim"} != meta:
                return None
            feats = fh.get_tensor("features")
        if meta["storage"] == Storage.BITS:
            return unpack_bits(feats, int(stored["dim"]))
        return feats
    except (OSError, ValueError, RuntimeError, KeyError):  # a torn or corrupt file is recomputed
        return None


def _write(path: Path, feats: Tensor, meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({"features": feats.contiguous()}, tmp, metadata=meta)
    os.replace(tmp, path)


def _store(path: Path, feats: Tensor, meta: dict[str, str]) -> Tensor:
    """Write ``feats`` [N, D] (float32) in the storage ``meta`` names; return what a later read returns."""
    if meta["storage"] == Storage.BITS:
        packed = pack_bits(feats)
        _write(path, packed, {**meta, "dim": str(feats.shape[1])})
        return unpack_bits(packed, feats.shape[1])
    half = feats.to(torch.float16)
    _write(path, half, meta)
    return half


def cached_features(
    encoder: Encoder,
    images: ImageSet,
    layers: Sequence[str],
    root: Path,
    images_key: str,
    batch_size: int = 256,
    progress: bool = False,
    binarize: bool = False,
) -> dict[str, Tensor]:
    """Features [N, D] (float16) of ``layers`` for ``images``, from the cache or computed in one pass.

    ``images_key`` identifies the image set (source, seed, split, n, resolution): together with the
    encoder's fingerprint and the storage kind it decides whether a cached file is still valid. With
    ``binarize`` the features are 1[x > 0] in {0, 1}, stored as packed bits.
    """
    storage = (Storage.BITS if binarize else Storage.FLOAT16).value
    meta = {"encoder": encoder.fingerprint(), "images": images_key, "n": str(len(images)), "storage": storage}
    found = {name: _read(_path(root, name), meta) for name in layers}
    missing = [name for name, feats in found.items() if feats is None]
    if missing:
        fresh = extract_features(encoder, images, missing, batch_size=batch_size, progress=progress)
        for name in missing:
            found[name] = _store(_path(root, name), fresh.pop(name), meta)
    return found  # type: ignore[return-value]
