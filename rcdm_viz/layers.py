"""The one layer vocabulary: every encoder layer name is spelled here (docs/DESIGN.md, "Layer names").

Free of torch and below ``rcdm_viz.encoders``: the encoders, the browser, the app and the evaluation ask
this module for names, their order (stages before trunk before heads) and the last head.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STAGES: tuple[str, ...] = ("stage1", "stage2", "stage3")  # the early trunk stages, shallow to deep
TRUNK = "trunk"  # the trunk's pooled output (the representation)
_HEAD_PREFIX = "head"


def head_name(i: int) -> str:
    """The name of projector layer ``i`` (0-based): head_name(0) == "head1"."""
    if i < 0:
        raise ValueError(f"head index must be >= 0, got {i}")
    return f"{_HEAD_PREFIX}{i + 1}"


def head_names(n_heads: int) -> list[str]:
    """["head1", ..., "headK"] for K = n_heads (empty for 0)."""
    return [head_name(i) for i in range(n_heads)]


def is_head(name: str) -> bool:
    """Whether ``name`` names a projector layer ("head1", "head2", ...)."""
    suffix = name[len(_HEAD_PREFIX):]
    return name.startswith(_HEAD_PREFIX) and suffix.isdigit() and int(suffix) >= 1


def is_stage(name: str) -> bool:
    return name in STAGES


def order_key(name: str) -> tuple[int, int, str]:
    """Sort key: stages (shallow to deep), then trunk, then heads by number, then anything else by name."""
    if name in STAGES:
        return (0, STAGES.index(name), name)
    if name == TRUNK:
        return (1, 0, name)
    if is_head(name):
        return (2, int(name[len(_HEAD_PREFIX):]), name)
    return (3, 0, name)


def sort_layers(names: Iterable[str]) -> list[str]:
    """``names`` shallow to deep (see order_key)."""
    return sorted(names, key=order_key)


def last_head(names: Iterable[str]) -> str | None:
    """The deepest head among ``names`` (None when there is none)."""
    heads = [n for n in names if is_head(n)]
    return max(heads, key=order_key) if heads else None


@dataclass(frozen=True)
class LayerVocabulary:
    """The layers of one encoder: its early stages, the trunk and ``n_heads`` projector layers."""

    n_heads: int
    stages: tuple[str, ...] = STAGES

    def __post_init__(self) -> None:
        if self.n_heads < 0:
            raise ValueError(f"n_heads must be >= 0, got {self.n_heads}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")

    @classmethod
    def from_head_dims(cls, head_dims: Sequence[int], stages: Sequence[str] = STAGES) -> LayerVocabulary:
        """From a parsed head spec's dims (one per projector layer)."""
        return cls(n_heads=len(head_dims), stages=tuple(stages))

    @property
    def heads(self) -> list[str]:
        return head_names(self.n_heads)

    @property
    def guillotine(self) -> list[str]:
        """[trunk, head1, ..., headK]: the layers a decoder is trained on, shallow to deep."""
        return [TRUNK, *self.heads]

    @property
    def names(self) -> list[str]:
        """All layers, shallow to deep: stages, trunk, heads."""
        return [*self.stages, *self.guillotine]

    @property
    def last_head(self) -> str | None:
        return head_name(self.n_heads - 1) if self.n_heads else None

    def sort(self, names: Iterable[str]) -> list[str]:
        return sort_layers(names)
