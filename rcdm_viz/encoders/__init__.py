"""SSL encoders: widened ResNet trunk + projector, with every layer addressable by name."""

from __future__ import annotations

from typing import Any

from rcdm_viz.encoders.efficientnet import EfficientNetEncoder  # registers its bundle arch for load_encoder
from rcdm_viz.encoders.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, load_encoder
from rcdm_viz.encoders.projector import HeadSpec, HeadStyle, parse_head
from rcdm_viz.encoders.resnet import Arch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Arch",
    "EfficientNetEncoder",
    "Encoder",
    "HeadSpec",
    "HeadStyle",
    "build_encoder",
    "load_encoder",
    "parse_head",
]


def build_encoder(*args: Any, **kwargs: Any) -> Encoder:
    """Build a freshly initialised ``Encoder(*args, **kwargs)`` (see ``Encoder`` for the arguments: arch,
    width, head, base_width, small_input, mean, std, resolution).

    The defaults are E/N's: ResNet-50 with D = 2048 and a VICReg-style 8192-8192-8192 projector.
    """
    return Encoder(*args, **kwargs)
