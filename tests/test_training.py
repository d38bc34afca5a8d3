"""What both training loops share: counter-based seeds and data order, checkpoint bookkeeping."""

from __future__ import annotations

import hashlib

import torch

from rcdm_viz.seeding import derive_seed, generator_for, sample_seed
from rcdm_viz.training import batch_indices, checkpoint_dirs


def test_seeds_are_blake2b_of_their_parts_and_never_change():
    """A changed derivation would silently change every run's data order and samples."""
    def want(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1)

    assert derive_seed(0, "epoch", 3) == want(repr((0, "epoch", 3)))
    assert sample_seed(5, 2) == want("rcdm-viz:5:2")
    assert derive_seed(0, "epoch", 3) != derive_seed(0, "epoch", 4) != derive_seed(1, "epoch", 4)
    a = torch.rand(4, generator=generator_for(7, "x"))
    assert torch.equal(a, torch.rand(4, generator=generator_for(7, "x")))
    assert not torch.equal(a, torch.rand(4, generator=generator_for(7, "y")))


def test_batch_indices_walk_seeded_epoch_permutations_and_drop_the_tail():
    n, batch, seed = 10, 3, 0
    per_epoch = n // batch  # 3 full batches; 1 image dropped per epoch
    epoch0 = torch.cat([batch_indices(n, batch, s, seed) for s in range(per_epoch)])
    assert len(set(epoch0.tolist())) == 9 and set(epoch0.tolist()) <= set(range(n))
    assert torch.equal(epoch0, torch.randperm(n, generator=generator_for(seed, "epoch", 0))[:9])
    epoch1 = torch.cat([batch_indices(n, batch, s, seed) for s in range(per_epoch, 2 * per_epoch)])
    assert not torch.equal(epoch0, epoch1)  # a new permutation every epoch
    assert torch.equal(batch_indices(n, batch, 4, seed), batch_indices(n, batch, 4, seed))  # resume replays


def test_checkpoint_dirs_lists_complete_checkpoints_oldest_first(tmp_path):
    for step in (20, 3, 100):
        (tmp_path / f"step-{step:09d}").mkdir()
        (tmp_path / f"step-{step:09d}" / "state.json").write_text("{}")
    (tmp_path / "step-000000200").mkdir()  # interrupted: no state.json
    (tmp_path / ".tmp-step-000000300").mkdir()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == [f"step-{s:09d}" for s in (3, 20, 100)]
    assert checkpoint_dirs(tmp_path / "missing") == []
