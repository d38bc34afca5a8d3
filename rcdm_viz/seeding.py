"""The one seed derivation: every seed of the package is a 63-bit hash of the parts that identify a draw.

Hashes, not sums, so that nearby user seeds never share a stream; stable across machines and Python runs
(blake2b, not Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

import torch


def _hash63(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across machines and Python runs)."""
    return _hash63(repr(parts))


def generator_for(*parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded by ``derive_seed(*parts)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


def sample_seed(seed: int, j: int) -> int:
    """The 63-bit seed of sample ``j`` under the user's ``seed`` (a hash, so nearby seeds do not overlap)."""
    return _hash63(f"rcdm-viz:{int(seed)}:{int(j)}")
