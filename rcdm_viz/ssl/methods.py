"""Registry of SSL methods: each maps the two views' embeddings to a loss and values to log.

A new method is one pure loss in ``losses.py``, one entry here, one preset in ``configs/`` and one test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rcdm_viz.config import Method, SSLConfig
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.ssl import losses

LossFn = Callable[[Tensor, Tensor, SSLConfig], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class MethodSpec:
    """One SSL method: its name and its loss on the embeddings of two views ([N, K] each)."""

    name: Method
    loss: LossFn


def _simclr(z1: Tensor, z2: Tensor, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    loss = losses.simclr_loss(z1, z2, temperature=cfg.temperature)
    return loss, {}


def _vicreg(z1: Tensor, z2: Tensor, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    terms = losses.vicreg_terms(
        z1, z2, sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff, cov_coeff=cfg.cov_coeff
    )
    loss = terms.pop("loss")
    return loss, {k: float(v.detach()) for k, v in terms.items()}


METHODS: dict[Method, MethodSpec] = {
    Method.SIMCLR: MethodSpec(Method.SIMCLR, _simclr),
    Method.VICREG: MethodSpec(Method.VICREG, _vicreg),
}


def get_method(name: Method | str) -> MethodSpec:
    """The registered method ``name``, or an error listing the registered ones."""
    try:
        return METHODS[Method(name)]
    except ValueError:
        raise RcdmVizError(
            f"unknown SSL method '{name}'; choose one of: {', '.join(m.value for m in METHODS)}"
        ) from None
