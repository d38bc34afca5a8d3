"""Real weights and real photographs for the tests: the converted files of `rcdm-viz weights` (skip when
absent, fail under ``RCDM_VIZ_REQUIRE_WEIGHTS=1``, which ``make test`` sets) and scikit-image's photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rcdm_viz import weights


def real_weights(name: str) -> Path:
    """The converted file of ``name`` from the user's cache; skip (or fail, under make test) if absent."""
    path = weights.find_weights(name)
    if path is None:
        message = f"no {name} weights: run `rcdm-viz weights {name}` (make weights)"
        if os.environ.get("RCDM_VIZ_REQUIRE_WEIGHTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample photograph as float [1, 3, H, W] in [0, 1]."""
    from skimage import data

    return torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1).float()[None] / 255
