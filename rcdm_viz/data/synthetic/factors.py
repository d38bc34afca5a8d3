"""Factors, splits and counter-based hashing of the synthetic scenes: which scene index i is.

The factors come from a counter-based hash (splitmix64 of (seed, split, factor stream, index)), never from
a sequential RNG, so a scene is the same alone or in any batch, in any order, on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import Tensor

from rcdm_viz.config import parse_enum
from rcdm_viz.data.synthetic.shapes import Shape

# ---------------------------------------------------------------------------------------------------------
# Factors and splits
# ---------------------------------------------------------------------------------------------------------

FACTOR_RANGES: dict[str, tuple[float, float]] = {
    "object_yaw": (-math.pi / 2, math.pi / 2),
    "object_pitch": (-math.pi / 2, math.pi / 2),
    "object_roll": (-math.pi / 2, math.pi / 2),
    "object_hue": (0.0, 1.0),
    "floor_hue": (0.0, 1.0),
    "spot_theta": (0.0, math.pi / 4),
    "spot_phi": (0.0, 2 * math.pi),
    "spot_hue": (0.0, 1.0),
}
FACTORS: tuple[str, ...] = tuple(FACTOR_RANGES)
# Factors living on a circle (the ends of their range are the same scene): probes should regress sin/cos.
CIRCULAR: tuple[str, ...] = ("object_hue", "floor_hue", "spot_phi", "spot_hue")


class Split(StrEnum):
    """Dataset splits; each is an independent stream of scenes (its id enters the hash)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    @property
    def stream_id(self) -> int:
        return {Split.TRAIN: 1, Split.VAL: 2, Split.TEST: 3}[self]


def parse_split(split: str | Split) -> Split:
    return parse_enum(Split, split, "split")


# ---------------------------------------------------------------------------------------------------------
# Counter-based hashing (splitmix64, Steele et al. 2014) on int64 tensors
# ---------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    """The int64 with the same 64 bits as the unsigned integer v."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(x: Tensor, k: int) -> Tensor:
    # torch's >> on int64 is arithmetic; mask the sign-extended bits to get a logical shift.
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser of x + gamma, elementwise on int64 tensors (two's-complement wrap-around)."""
    z = x + _signed(_GAMMA)
    z = (z ^ _lsr(z, 30)) * _signed(_MIX1)
    z = (z ^ _lsr(z, 27)) * _signed(_MIX2)
    return z ^ _lsr(z, 31)


def splitmix64_int(x: int) -> int:
    """Reference splitmix64 on a Python integer (unsigned 64-bit result)."""
    z = (x + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def hash_uniform(seed: int, split_id: int, stream: int, indices: Tensor) -> Tensor:
    """Uniform float64 in [0, 1) for each index of one (seed, split, stream); indices: int64 [N] -> [N].

    The key is a hash chain of (seed, split, stream); the index is mixed in twice so that neighbouring
    indices decorrelate. 53 high bits give the mantissa exactly.
    """
    key = splitmix64_int(splitmix64_int(splitmix64_int(seed & _MASK64) ^ split_id) ^ stream)
    h = splitmix64(splitmix64(indices.to(torch.int64) ^ _signed(key)))
    return _lsr(h, 11).to(torch.float64) * 2.0**-53


def sample_factors(
    indices: Tensor | Sequence[int], seed: int = 0, split: str | Split = Split.TRAIN
) -> tuple[Tensor, dict[str, Tensor]]:
    """Labels (long [N]) and factors (name -> float32 [N]) of scenes `indices` (int64 [N]) of a split.

    Each value is its own hash stream (stream 0 = the label, 1.. = the factors in FACTORS order), so
    adding a factor or changing a range never moves the others.
    """
    sid = parse_split(split).stream_id
    idx = torch.as_tensor(indices, dtype=torch.int64)
    labels = torch.clamp((hash_uniform(seed, sid, 0, idx) * len(Shape)).long(), max=len(Shape) - 1)
    factors = {}
    for k, name in enumerate(FACTORS, start=1):
        lo, hi = FACTOR_RANGES[name]
        value = (lo + (hi - lo) * hash_uniform(seed, sid, k, idx)).to(torch.float32)
        factors[name] = torch.clamp(value, *_float32_inside(lo, hi))
    return labels, factors


def _float32_inside(lo: float, hi: float) -> tuple[float, float]:
    """The widest float32 interval inside [lo, hi] (rounding pi / 2 to float32 overshoots it)."""
    lo32, hi32 = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    if float(lo32) < lo:
        lo32 = torch.nextafter(lo32, torch.tensor(math.inf))
    if float(hi32) > hi:
        hi32 = torch.nextafter(hi32, torch.tensor(-math.inf))
    return float(lo32), float(hi32)
