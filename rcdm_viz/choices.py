"""The named choices of the config (an enum each) and the one way to parse them.

Every choice a user types (``ssl.method=vicreg``, ``--sampler ddim``) is a member of one of these enums;
``parse_enum`` turns a string into a member or into a one-line error naming the value and the choices.
``rcdm_viz.config`` re-exports all of them.
"""

from __future__ import annotations

import typing
from enum import Enum, StrEnum

from rcdm_viz.errors import RcdmVizError

E = typing.TypeVar("E", bound=Enum)


def parse_enum(
    enum: type[E],
    value: E | str,
    what: str,
    normalize: bool = False,
    choices: typing.Iterable[E] | None = None,
) -> E:
    """``value`` as a member of ``enum`` (a member, or its value), or a one-line error naming the value and
    the choices: "unknown <what> 'x'; choose one of: a, b". ``normalize`` strips and lower-cases a string
    first; ``choices`` narrows the accepted members (default: all of ``enum``)."""
    given = value.value if isinstance(value, Enum) else value
    raw = given.strip().lower() if normalize and isinstance(given, str) else given
    allowed = list(enum) if choices is None else list(choices)
    try:
        member = enum(raw)
    except ValueError:
        member = None
    if member is None or member not in allowed:
        names = ", ".join(str(m.value) for m in allowed)
        raise RcdmVizError(f"unknown {what} {given!r}; choose one of: {names}")
    return member



class DataSource(StrEnum):
    """Where training images come from."""

    SYNTHETIC = "synthetic"
    FOLDER = "folder"  # ImageNet layout: root/[train|val/]<class>/<image>, classes sorted by name
    CACHE = "cache"  # uint8 memory-mapped arrays written by `rcdm-viz cache`


class Method(StrEnum):
    """SSL methods (see ``rcdm_viz.ssl.methods`` for the registry)."""

    SIMCLR = "simclr"
    VICREG = "vicreg"
    BYOL = "byol"
    BARLOW_TWINS = "barlow_twins"
    SUPERVISED = "supervised"
    SIMCLR_CLASS = "simclr_class"  # SimCLR, positive = another image of the same class (GR §4)
    SIMCLR_NEIGHBOUR = "simclr_neighbour"  # SimCLR, positive = nearest neighbour under a reference encoder


class Optimizer(StrEnum):
    """Encoder optimisers: LARS (E/N) or AdamW (GR)."""

    LARS = "lars"
    ADAMW = "adamw"


class Precision(StrEnum):
    """Autocast precision. fp16 autocast is a no-op on CPU in accelerate, so bf16 is what is offered.

    ``auto`` = bf16 where the device computes it natively (recent GPUs; CPUs with AVX512-BF16/AMX), fp32
    elsewhere: on an AVX2-only CPU bf16 is emulated and measured ~35x slower than fp32.
    """

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"

    @property
    def accelerate_name(self) -> str:
        """The name accelerate's ``mixed_precision`` uses."""
        if self is Precision.AUTO:
            raise ValueError("resolve Precision.AUTO first (rcdm_viz.training.resolve_precision)")
        return "no" if self is Precision.FP32 else self.value


class SamplerName(StrEnum):
    """Diffusion samplers (diffusers schedulers built from the training schedule)."""

    DDPM = "ddpm"  # ancestral sampling (Ho et al. 2020); RCDM samples with 100 respaced steps
    DDIM = "ddim"  # deterministic DDIM (Song et al. 2021, eta = 0)
    DPMPP = "dpm++"  # DPM-Solver++(2M) (Lu et al. 2022), with thresholding


class PredictionType(StrEnum):
    """What the decoder predicts (diffusers' ``prediction_type``)."""

    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"


class BetaSchedule(StrEnum):
    """Noise schedules diffusers' DDPMScheduler implements."""

    LINEAR = "linear"
    SCALED_LINEAR = "scaled_linear"
    COSINE = "squaredcos_cap_v2"


class ProbeSolver(StrEnum):
    """How the linear classification probe is fitted."""

    LBFGS = "lbfgs"  # full-batch L-BFGS on the L2-penalised cross-entropy (seconds on a CPU)
    ADAMW = "adamw"  # E/N's minibatch AdamW protocol


class Distance(StrEnum):
    """Perceptual distance of the decoder scores: LPIPS when its weights are on disk (docs/DESIGN.md,
    "Invariance scores")."""

    AUTO = "auto"  # lpips-alex if `rcdm-viz weights lpips` put its weights on disk, else 1-ms-ssim or 1-ssim
    LPIPS_ALEX = "lpips-alex"  # LPIPS v0.1 on AlexNet (Zhang et al. 2018)
    MS_SSIM = "1-ms-ssim"  # 1 - MS-SSIM (Wang et al. 2003), weight-free; needs images > 160 px
    SSIM = "1-ssim"  # 1 - SSIM (Wang et al. 2004, 11-px Gaussian window), weight-free
