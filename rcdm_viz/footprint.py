"""The memory a configuration asks for, checked before anything is allocated or written.

A size typed by mistake (``data.resolution=99999999999``, ``encoder.width=100000000000``) would otherwise
end in a torch allocator traceback after the run's lock file exists. Each estimate below is a lower bound
of what the step really allocates (the largest tensors it holds at once), so a refusal is always right:
a config that passes may still run out of memory later, one that fails never could have run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rcdm_viz.config import Config
from rcdm_viz.encoders import Encoder
from rcdm_viz.errors import RcdmVizError

_FLOAT = 4  # bytes of one fp32 value


@dataclass(frozen=True)
class Need:
    """One block of memory a step holds at once: what it is, the fields that size it, its bytes."""

    what: str
    fields: str
    nbytes: int


def machine_memory() -> int:
    """Bytes of physical memory on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def encoder_parameters(cfg: Config) -> int:
    """Number of parameters of the encoder ``cfg`` describes, counted on the meta device (no memory)."""
    with torch.device("meta"):
        encoder = Encoder.from_config(cfg.encoder, cfg.data.resolution)
    return sum(p.numel() for p in encoder.parameters())


def needs(cfg: Config, command: str) -> list[Need]:
    """The blocks ``command`` holds for ``cfg`` (images as uint8, tensors in fp32)."""
    data, dec = cfg.data, cfg.decoder
    image = 3 * data.resolution**2
    out = []
    if command in ("train-encoder", "probe", "train-decoder", "quickstart"):
        out.append(Need("the image set", f"data.n_train={data.n_train}, data.resolution={data.resolution}",
                        (data.n_train + data.n_val) * image))
    if command in ("train-encoder", "quickstart"):
        side = cfg.views.size or data.resolution  # None keeps the input size
        view = 3 * side**2 * _FLOAT
        views = f"ssl.batch_size={cfg.ssl.batch_size}, views.size={side}"
        out.append(Need("one batch of views", views, 2 * cfg.ssl.batch_size * view))
        # weights, gradients and AdamW's two moments
        encoder = encoder_parameters(cfg) * _FLOAT * 4
        out.append(Need("the encoder being trained", _encoder_fields(cfg), encoder))
    if command in ("train-decoder", "quickstart"):
        out.append(Need("one batch of features", f"decoder.feature_batch_size={dec.feature_batch_size}",
                        dec.feature_batch_size * image * _FLOAT))
        batch = f"decoder.batch_size={dec.batch_size}, decoder.resolution={dec.resolution}"
        out.append(Need("one decoder batch", batch, dec.batch_size * 3 * dec.resolution**2 * _FLOAT))
    if command in ("sample", "quickstart"):
        out.append(Need("one sampling batch", f"sample.batch_size={cfg.sample.batch_size}, "
                        f"decoder.resolution={dec.resolution}",
                        cfg.sample.batch_size * 3 * dec.resolution**2 * _FLOAT))
    return out


def _encoder_fields(cfg: Config) -> str:
    enc = cfg.encoder
    return f"encoder.width={enc.width}, encoder.head={enc.head}, encoder.base_width={enc.base_width}"


def require_fits(cfg: Config, command: str, available: int | None = None) -> None:
    """One-line error naming the values and the memory when a block ``command`` needs exceeds the machine's
    memory (``available`` bytes; default: physical memory)."""
    available = machine_memory() if available is None else available
    for need in needs(cfg, command):
        if need.nbytes > available:
            raise RcdmVizError(
                f"{need.fields}: {need.what} alone would take {_human(need.nbytes)}, "
                f"more than this machine's {_human(available)} of memory"
            )


def _human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} EiB"
