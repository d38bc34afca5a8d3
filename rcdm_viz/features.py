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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.encoders import Encoder
from rcdm_viz.runs import atomic_write

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
    atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, str(tmp), metadata=meta))


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
    images_key: str | None = None,
    batch_size: int = 256,
    progress: bool = False,
    binarize: bool = False,
) -> dict[str, Tensor]:
    """Features [N, D] (float16) of ``layers`` for ``images``, from the cache under ``root`` or computed in
    one pass (only the layers whose file is missing or stale).

    ``images_key`` identifies the image set (default: ``images.key``, set by ``load_images``): together with
    the encoder's fingerprint and the storage kind it decides whether a cached file is still valid. With
    ``binarize`` the features are 1[x > 0] in {0, 1}, stored as packed bits.
    """
    key = images.key if images_key is None else images_key
    storage = (Storage.BITS if binarize else Storage.FLOAT16).value
    meta = {"encoder": encoder.fingerprint(), "images": key, "n": str(len(images)), "storage": storage}
    found = {name: _read(_path(root, name), meta) for name in layers}
    missing = [name for name, feats in found.items() if feats is None]
    if missing:
        fresh = extract_features(encoder, images, missing, batch_size=batch_size, progress=progress)
        for name in missing:
            found[name] = _store(_path(root, name), fresh.pop(name), meta)
    return found  # type: ignore[return-value]
