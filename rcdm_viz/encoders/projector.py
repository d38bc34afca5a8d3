"""Projector heads: an MLP (VICReg / E/N default "8192-8192-8192"), a single linear layer, or none.

The MLP follows VICReg's official ``Projector`` (facebookresearch/vicreg, main_vicreg.py): every hidden
layer is Linear -> BatchNorm1d -> ReLU, the last layer is a plain Linear without bias. A linear head
("linear:K", E/N §3.1 and Table 1) is that last layer alone; E/N's analysis omits its bias, so do we.

Public checkpoints (``rcdm_viz.encoders.zoo``) need the layer layouts of other official heads; a spec prefixed
by a ``HeadStyle`` ("barlowtwins:8192-8192-8192", "simclr:2048-128", "dino:4096-256-60000") selects one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from torch import Tensor, nn
from torch.nn import functional as F

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.layers import head_names

_MLP_RE = re.compile(r"[1-9][0-9]*(-[1-9][0-9]*)*")
_LINEAR_RE = re.compile(r"linear:([1-9][0-9]*)")
_STYLED_RE = re.compile(r"([a-z]+):(.*)")


class HeadStyle(StrEnum):
    """Layer layout of an MLP projector (hidden layers, then the last layer), after each official code.

    vicreg: Linear -> BN -> ReLU; last Linear without bias (facebookresearch/vicreg ``Projector``).
    barlowtwins: Linear without bias -> BN -> ReLU; last Linear without bias (facebookresearch/barlowtwins).
    simclr: Linear -> ReLU; last Linear with bias (VISSL's SimCLR head: two ``mlp`` heads).
    dino: Linear -> BN -> GELU; then the bottleneck Linear; then L2-normalise -> Linear without bias
        (facebookresearch/dino ``DINOHead`` with use_bn_in_head, as its released ResNet-50).
    """

    VICREG = "vicreg"
    BARLOW_TWINS = "barlowtwins"
    SIMCLR = "simclr"
    DINO = "dino"


@dataclass(frozen=True)
class HeadSpec:
    """A parsed projector specification.

    Attributes:
        dims: output dimension of each projector layer, in order (empty for "none").
        linear: True for a single linear layer ("linear:K"), False for an MLP or "none".
        style: layer layout of an MLP (ignored for "linear:K" and "none").
    """

    dims: tuple[int, ...]
    linear: bool = False
    style: HeadStyle = HeadStyle.VICREG

    @property
    def num_layers(self) -> int:
        """K, the number of projector layers (0 for "none")."""
        return len(self.dims)

    def to_string(self) -> str:
        """The canonical spec string, which ``parse_head`` maps back to this HeadSpec."""
        if not self.dims:
            return "none"
        if self.linear:
            return f"linear:{self.dims[0]}"
        dims = "-".join(str(d) for d in self.dims)
        return dims if self.style is HeadStyle.VICREG else f"{self.style.value}:{dims}"


def parse_head(spec: str) -> HeadSpec:
    """Parse "8192-8192-8192" (MLP), "linear:32" (one linear layer), "none" (no projector), or an MLP
    prefixed by a ``HeadStyle`` ("barlowtwins:8192-8192-8192"; "dino:" needs at least two layers).

    Raises RcdmVizError naming ``spec`` for anything else (empty, zero dims, malformed).
    """
    if not isinstance(spec, str):
        raise RcdmVizError(f"projector spec must be a string, got {spec!r}")
    text = spec.strip().lower()
    if text == "none":
        return HeadSpec(dims=(), linear=False)
    linear = _LINEAR_RE.fullmatch(text)
    if linear:
        return HeadSpec(dims=(int(linear.group(1)),), linear=True)
    style, dims = HeadStyle.VICREG, text
    styled = _STYLED_RE.fullmatch(text)
    if styled and styled.group(1) in {s.value for s in HeadStyle}:
        style, dims = HeadStyle(styled.group(1)), styled.group(2)
    if _MLP_RE.fullmatch(dims) and (style is not HeadStyle.DINO or "-" in dims):
        return HeadSpec(dims=tuple(int(d) for d in dims.split("-")), linear=False, style=style)
    raise RcdmVizError(
        f"invalid projector spec {spec!r}; expected dims like '8192-8192-8192', 'linear:32', 'none', "
        f"or an MLP prefixed by a style ({', '.join(s.value for s in HeadStyle)}), e.g. 'simclr:2048-128'"
    )


class L2Normalize(nn.Module):
    """Project each row onto the unit sphere, as DINO's head does before its last layer: [N, C] -> [N, C]."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, p=2)


def _mlp_layer(style: HeadStyle, in_dim: int, dim: int, position: int, depth: int) -> nn.Module:
    """Layer ``position`` (0-based) of a ``depth``-layer MLP projector in ``style`` (see HeadStyle)."""
    last = position == depth - 1
    if style is HeadStyle.DINO:
        if last:
            return nn.Sequential(L2Normalize(), nn.Linear(in_dim, dim, bias=False))
        if position == depth - 2:  # the bottleneck
            return nn.Linear(in_dim, dim)
        return nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.GELU())
    if style is HeadStyle.SIMCLR:
        return nn.Linear(in_dim, dim) if last else nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
    if last:
        return nn.Linear(in_dim, dim, bias=False)
    bias = style is not HeadStyle.BARLOW_TWINS
    return nn.Sequential(nn.Linear(in_dim, dim, bias=bias), nn.BatchNorm1d(dim), nn.ReLU())


class Projector(nn.Module):
    """The projector layers head1..headK on top of the pooled trunk.

    Args:
        in_dim: D, the trunk's output dimension.
        spec: a spec string (see ``parse_head``) or a HeadSpec.
    """

    def __init__(self, in_dim: int, spec: str | HeadSpec) -> None:
        super().__init__()
        self.spec = spec if isinstance(spec, HeadSpec) else parse_head(spec)
        self.in_dim = in_dim
        self.layers = nn.ModuleList()
        prev = in_dim
        for i, dim in enumerate(self.spec.dims):
            self.layers.append(_mlp_layer(self.spec.style, prev, dim, i, len(self.spec.dims)))
            prev = dim

    @property
    def layer_names(self) -> list[str]:
        """["head1", ..., "headK"] (empty for "none")."""
        return head_names(len(self.layers))

    @property
    def layer_dims(self) -> dict[str, int]:
        """Output dimension of each head layer."""
        return dict(zip(self.layer_names, self.spec.dims, strict=True))

    def forward(self, h: Tensor, layers: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Outputs of the requested head layers (all when None); stops after the deepest one requested.

        Args:
            h: pooled trunk features [N, D].
            layers: names among head1..headK.
        Returns:
            {name: [N, dim_name]} in depth order.
        """
        names = self.layer_names
        wanted = set(names if layers is None else layers)
        unknown = sorted(wanted - set(names))
        if unknown:
            valid = ", ".join(names)
            raise ValueError(f"unknown projector layer {unknown[0]!r}; this projector has: {valid}")
        out: dict[str, Tensor] = {}
        for name, layer in zip(names, self.layers, strict=True):
            if not wanted:
                break
            h = layer(h)
            if name in wanted:
                out[name] = h
                wanted.discard(name)
        return out
