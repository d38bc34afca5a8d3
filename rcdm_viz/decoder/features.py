"""Feature cache: the frozen encoder's representations of the decoder's training images, computed once.

``features/<layer>.safetensors`` holds float16 [N, D] plus metadata naming the encoder fingerprint and the
image set; a cache whose metadata does not match (another encoder, other images) is recomputed. A
decoder training step therefore never runs the encoder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.encoders import Encoder
from rcdm_viz.evaluation.probes import extract_features


def _path(root: Path, layer: str) -> Path:
    return Path(root) / f"{layer}.safetensors"


def _read(path: Path, meta: dict[str, str]) -> Tensor | None:
    """The cached features at ``path`` if its metadata equals ``meta``, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            if fh.metadata() != meta:
                return None
            return fh.get_tensor("features")
    except (OSError, ValueError, RuntimeError):  # a torn or corrupt file is recomputed
        return None


def _write(path: Path, feats: Tensor, meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({"features": feats.contiguous()}, tmp, metadata=meta)
    os.replace(tmp, path)


def cached_features(
    encoder: Encoder,
    images: ImageSet,
    layers: Sequence[str],
    root: Path,
    images_key: str,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Features [N, D] (float16) of ``layers`` for ``images``, from the cache or computed in one pass.

    ``images_key`` identifies the image set (source, seed, split, n, resolution): together with the
    encoder's fingerprint it decides whether a cached file is still valid.
    """
    meta = {"encoder": encoder.fingerprint(), "images": images_key, "n": str(len(images))}
    found = {name: _read(_path(root, name), meta) for name in layers}
    missing = [name for name, feats in found.items() if feats is None]
    if missing:
        fresh = extract_features(encoder, images, missing, batch_size=batch_size, progress=progress)
        for name in missing:
            found[name] = fresh[name].to(torch.float16)
            _write(_path(root, name), found[name], meta)
    return found  # type: ignore[return-value]
