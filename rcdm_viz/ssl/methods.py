"""Registry of SSL methods: each declares what it needs and maps the views' embeddings to a loss.

A new method is one pure loss in ``losses.py``, one entry here, one preset in ``rcdm_viz/presets/``, one test.
A method declares its needs instead of the training step testing its name:

* ``pairing``: which image view 2 shows (the same image, another image of its class, its neighbour);
* ``target_network``: whether an EMA copy of the encoder embeds the views too (BYOL);
* ``extras``: trainable modules beyond the encoder (BYOL's predictor, the supervised classifier).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcdm_viz.config import Method, SSLConfig, parse_enum
from rcdm_viz.ssl import losses


class Pairing(StrEnum):
    """Which image the second view is drawn from (GR §4, Figure 6)."""

    AUGMENT = "augment"  # the same image (the usual SSL positive pair)
    CLASS = "class"  # another image of the same class
    NEIGHBOUR = "neighbour"  # the nearest neighbour in a reference encoder's trunk space


@dataclass
class Embedded:
    """What a loss sees: online embeddings of both views, target embeddings (BYOL), labels.

    z1, z2: [N, K] online embeddings; t1, t2: [N, K] target-network embeddings or None; labels: long [N].
    """

    z1: Tensor
    z2: Tensor
    labels: Tensor
    t1: Tensor | None = None
    t2: Tensor | None = None


LossFn = Callable[[Embedded, nn.ModuleDict, SSLConfig], tuple[Tensor, dict[str, float]]]
ExtrasFn = Callable[[int, SSLConfig, int], nn.ModuleDict]


def _no_extras(dim: int, cfg: SSLConfig, num_classes: int) -> nn.ModuleDict:
    return nn.ModuleDict()


@dataclass(frozen=True)
class MethodSpec:
    """One SSL method: its loss and what the training step must provide for it.

    ``extras(embedding_dim, cfg, num_classes)`` builds the method's own trainable modules.
    """

    name: Method
    loss: LossFn
    pairing: Pairing = Pairing.AUGMENT
    target_network: bool = False
    needs_labels: bool = False
    extras: ExtrasFn = _no_extras


def _simclr(e: Embedded, extras: nn.ModuleDict, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    return losses.simclr_loss(e.z1, e.z2, temperature=cfg.temperature), {}


def _vicreg(e: Embedded, extras: nn.ModuleDict, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    terms = losses.vicreg_terms(
        e.z1, e.z2, sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff, cov_coeff=cfg.cov_coeff
    )
    loss = terms.pop("loss")
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def _barlow(e: Embedded, extras: nn.ModuleDict, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    return losses.barlow_twins_loss(e.z1, e.z2, lambd=cfg.barlow_lambda), {}


def _byol_predictor(dim: int, cfg: SSLConfig, num_classes: int) -> nn.ModuleDict:
    """BYOL's predictor q: Linear -> BatchNorm1d -> ReLU -> Linear, back to the embedding dimension."""
    hidden = cfg.byol_predictor_hidden
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))
    return nn.ModuleDict({"predictor": mlp})


def _byol(e: Embedded, extras: nn.ModuleDict, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    """Symmetrised BYOL: q(z1) regresses the target's t2 and q(z2) regresses t1 (Grill et al., eq. 2-3)."""
    assert e.t1 is not None and e.t2 is not None  # guaranteed by target_network=True
    p1, p2 = extras["predictor"](torch.cat([e.z1, e.z2])).float().chunk(2)
    return losses.byol_loss(p1, e.t2) + losses.byol_loss(p2, e.t1), {}


def _classifier(dim: int, cfg: SSLConfig, num_classes: int) -> nn.ModuleDict:
    """The supervised baseline's linear classifier after the projector (E/N §4 "supervised")."""
    if num_classes < 2:
        raise ValueError(f"method 'supervised' needs labelled data with >= 2 classes, got {num_classes}")
    return nn.ModuleDict({"classifier": nn.Linear(dim, num_classes)})


def _supervised(e: Embedded, extras: nn.ModuleDict, cfg: SSLConfig) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of both augmented views' class predictions (mean over the 2n views)."""
    logits = extras["classifier"](torch.cat([e.z1, e.z2])).float()
    labels = torch.cat([e.labels, e.labels])
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(1) == labels).float().mean()
    return loss, {"train_accuracy": float(accuracy)}


METHODS: dict[Method, MethodSpec] = {
    Method.SIMCLR: MethodSpec(Method.SIMCLR, _simclr),
    Method.VICREG: MethodSpec(Method.VICREG, _vicreg),
    Method.BARLOW_TWINS: MethodSpec(Method.BARLOW_TWINS, _barlow),
    Method.BYOL: MethodSpec(Method.BYOL, _byol, target_network=True, extras=_byol_predictor),
    Method.SUPERVISED: MethodSpec(Method.SUPERVISED, _supervised, needs_labels=True, extras=_classifier),
    Method.SIMCLR_CLASS: MethodSpec(Method.SIMCLR_CLASS, _simclr, pairing=Pairing.CLASS, needs_labels=True),
    Method.SIMCLR_NEIGHBOUR: MethodSpec(Method.SIMCLR_NEIGHBOUR, _simclr, pairing=Pairing.NEIGHBOUR),
}


def get_method(name: Method | str) -> MethodSpec:
    """The registered method ``name``, or an error listing the registered ones."""
    return METHODS[parse_enum(Method, name, "SSL method", choices=METHODS)]


def byol_momentum(base: float, step: int, total: int) -> float:
    """BYOL's target momentum at ``step`` of ``total``: 1 - (1 - base) (cos(pi step / total) + 1) / 2."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total, 1)) + 1) / 2
