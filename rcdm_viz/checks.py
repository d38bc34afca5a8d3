"""Refusals on load: a model whose weights hold NaN or inf samples one flat colour and exits 0, so every
loaded model is checked here first and refused with one line."""

from __future__ import annotations

import torch

from rcdm_viz.errors import RcdmVizError


def require_finite(module: torch.nn.Module, what: str) -> None:
    """One-line error naming ``what`` and the first parameter or buffer holding a non-finite value."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise RcdmVizError(f"{what} holds non-finite weights ({name}); retrain it")
