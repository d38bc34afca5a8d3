"""Priors shipped with the package: unconditional decoders that other decoders start from.

A prior is an ``RCDMDecoder`` without layers (``rcdm-viz train-decoder --layer prior``): a model of the
images alone. A decoder warm-started from it (``decoder.init_from``, ``rcdm_viz.decoder.warm_start``)
already draws the world at step 0 and spends its own training on what the representation adds, which is
why a short training can give grids whose samples look like the scenes (docs/RESULTS.md, "A prior that
draws the scenes").

Each shipped prior is package data under ``rcdm_viz/priors/<name>/`` (diffusers layout: ``config.json`` and
``diffusion_pytorch_model.safetensors``, stored in bfloat16), recorded here with the sha256 of its weights
file, the command that trained it and the commit that command ran on. Every load checks the sha256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rcdm_viz.errors import RcdmVizError

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers' name for a model's safetensors weights


@dataclass(frozen=True)
class ShippedPrior:
    """A prior that installs with the package, and how it was made."""

    name: str
    sha256: str  # of WEIGHTS_FILE
    command: str  # reproduces the weights (then `python scripts/ship_prior.py`, which casts to bf16)
    commit: str  # the commit the command ran on
    summary: str


PRIORS: dict[str, ShippedPrior] = {
    "scene-prior": ShippedPrior(
        "scene-prior",
        "eb568b900c679fd6624ec73a475bdde7f5491aff17f6ecb568e088845af3aecf",
        "rcdm-viz train-decoder --run runs/scene-prior --preset scene-prior --layer prior (stopped after "
        "its step-5000 checkpoint; commit 7ee805e0), then the same with --resume --set decoder.steps=14000 "
        "(stopped after its step-12000 checkpoint), then the same with --resume "
        "--set decoder.steps=12000 --set decoder.compile=false",
        "dd7b08392071a09c80454b2b972de3cc22159121",
        "Unconditional 32-px decoder of the synthetic scenes (UNet 32-64-64, one block a level, "
        "v-prediction): 12,000 steps of batch 32 on fresh scenes, EMA 0.9995.",
    ),
}


def shipped_prior(name: str) -> ShippedPrior:
    """The registry entry ``name``, or a one-line error listing the shipped priors."""
    if name not in PRIORS:
        raise RcdmVizError(f"unknown shipped prior {name!r}; shipped: {', '.join(sorted(PRIORS)) or 'none'}")
    return PRIORS[name]


def prior_dir(name: str) -> Path:
    """The installed directory of the shipped prior ``name`` (package data)."""
    shipped_prior(name)
    return Path(str(resources.files("rcdm_viz").joinpath("priors", name)))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_prior(name: str) -> tuple[Path, str]:
    """(directory, sha256) of the shipped prior ``name``, after checking its weights against the record."""
    entry, root = shipped_prior(name), prior_dir(name)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise RcdmVizError(f"shipped prior {name!r} is missing its weights ({weights}); reinstall rcdm-viz")
    digest = file_sha256(weights)
    if digest != entry.sha256:
        raise RcdmVizError(
            f"shipped prior {name!r} has sha256 {digest[:12]}..., not the recorded {entry.sha256[:12]}...: "
            f"the file {weights} is damaged or replaced; reinstall rcdm-viz"
        )
    return root, digest
