"""SSL encoders: widened ResNet trunk + projector, with every layer addressable by name."""

from __future__ import annotations

from collections.abc import Sequence

from rcdm_viz.encoders.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, load_encoder
from rcdm_viz.encoders.projector import HeadSpec, HeadStyle, parse_head
from rcdm_viz.encoders.resnet import Arch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Arch",
    "Encoder",
    "HeadSpec",
    "HeadStyle",
    "build_encoder",
    "load_encoder",
    "parse_head",
]


def build_encoder(
    arch: Arch | str = "resnet50",
    width: int = 2048,
    head: str | HeadSpec = "8192-8192-8192",
    base_width: int = 64,
    small_input: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resolution: int = 224,
) -> Encoder:
    """Build a freshly initialised Encoder (see ``Encoder`` for the arguments).

    The defaults are E/N's: ResNet-50 with D = 2048 and a VICReg-style 8192-8192-8192 projector.
    """
    return Encoder(
        arch=arch,
        width=width,
        head=head,
        base_width=base_width,
        small_input=small_input,
        mean=mean,
        std=std,
        resolution=resolution,
    )
