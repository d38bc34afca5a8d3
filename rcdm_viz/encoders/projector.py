"""Projector heads: an MLP (VICReg / E/N default "8192-8192-8192"), a single linear layer, or none.

The MLP follows VICReg's official ``Projector`` (facebookresearch/vicreg, main_vicreg.py): every hidden
layer is Linear -> BatchNorm1d -> ReLU, the last layer is a plain Linear without bias. A linear head
("linear:K", E/N §3.1 and Table 1) is that last layer alone; E/N's analysis omits its bias, so do we.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from rcdm_viz.errors import RcdmVizError

_MLP_RE = re.compile(r"[1-9][0-9]*(-[1-9][0-9]*)*")
_LINEAR_RE = re.compile(r"linear:([1-9][0-9]*)")


@dataclass(frozen=True)
class HeadSpec:
    """A parsed projector specification.

    Attributes:
        dims: output dimension of each projector layer, in order (empty for "none").
        linear: True for a single linear layer ("linear:K"), False for an MLP or "none".
    """

    dims: tuple[int, ...]
    linear: bool = False

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
        return "-".join(str(d) for d in self.dims)


def parse_head(spec: str) -> HeadSpec:
    """Parse "8192-8192-8192" (MLP), "linear:32" (one linear layer) or "none" (no projector).

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
    if _MLP_RE.fullmatch(text):
        return HeadSpec(dims=tuple(int(d) for d in text.split("-")), linear=False)
    raise RcdmVizError(
        f"invalid projector spec {spec!r}; expected dims like '8192-8192-8192', 'linear:32' or 'none'"
    )


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
            if i == len(self.spec.dims) - 1:
                self.layers.append(nn.Linear(prev, dim, bias=False))
            else:
                self.layers.append(nn.Sequential(nn.Linear(prev, dim), nn.BatchNorm1d(dim), nn.ReLU()))
            prev = dim

    @property
    def layer_names(self) -> list[str]:
        """["head1", ..., "headK"] (empty for "none")."""
        return [f"head{i + 1}" for i in range(len(self.layers))]

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
            raise RcdmVizError(f"unknown projector layer {unknown[0]!r}; this projector has: {valid}")
        out: dict[str, Tensor] = {}
        for name, layer in zip(names, self.layers, strict=True):
            if not wanted:
                break
            h = layer(h)
            if name in wanted:
                out[name] = h
                wanted.discard(name)
        return out
