"""rcdm-viz: what does each layer of a self-supervised image encoder keep?

Top-level shortcuts are imported lazily so that ``import rcdm_viz`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_encoder", "load_decoder", "build_encoder", "__version__"]

if TYPE_CHECKING:
    from rcdm_viz.decoder.model import load_decoder
    from rcdm_viz.encoders import build_encoder, load_encoder


def __getattr__(name: str) -> Any:
    if name in ("load_encoder", "build_encoder"):
        from rcdm_viz import encoders

        return getattr(encoders, name)
    if name == "load_decoder":
        from rcdm_viz.decoder.model import load_decoder

        return load_decoder
    raise AttributeError(f"module 'rcdm_viz' has no attribute {name!r}")
