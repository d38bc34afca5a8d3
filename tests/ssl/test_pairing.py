"""Positives other than the image itself: same-class partners (GR §4) and nearest neighbours."""

from __future__ import annotations

import pytest
import torch

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.ssl.methods import Pairing
from rcdm_viz.ssl.pairing import class_partners, make_pairing, nearest_neighbours


def test_class_partners_are_other_images_of_the_same_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1])  # class 2 has one image
    idx = torch.arange(len(labels)).repeat(50)
    partners = class_partners(labels, idx, torch.Generator().manual_seed(0))
    assert torch.equal(labels[partners], labels[idx])
    alone = idx == 3
    assert bool((partners[alone] == 3).all()) and bool((partners[~alone] != idx[~alone]).all())
    assert set(partners[idx == 0].tolist()) == {2, 5}  # every other image of the class gets drawn


def test_nearest_neighbours_exclude_the_image_itself():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0]])
    assert nearest_neighbours(feats, chunk=2).tolist() == [1, 0, 3, 2, 2]
    with pytest.raises(ValueError, match="at least 2"):
        nearest_neighbours(feats[:1])


def test_make_pairing_augment_is_the_image_and_class_pairs_replay_per_step():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    train = ImageSet(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), labels, num_classes=2)
    idx = torch.arange(6)
    same = make_pairing(Pairing.AUGMENT, train, seed=0, reference="", device=torch.device("cpu"))
    assert torch.equal(same(idx, 3), idx)
    pair = make_pairing(Pairing.CLASS, train, seed=0, reference="", device=torch.device("cpu"))
    assert torch.equal(pair(idx, 7), pair(idx, 7))  # a resumed step draws the same partners
    assert torch.equal(labels[pair(idx, 7)], labels) and not torch.equal(pair(idx, 7), idx)
    with pytest.raises(RcdmVizError, match="reference_encoder"):
        make_pairing(Pairing.NEIGHBOUR, train, seed=0, reference="", device=torch.device("cpu"))


def test_nearest_neighbours_read_a_memory_mapped_table_by_blocks(tmp_path):
    """Blocks of queries against blocks of keys, read from the feature cache's memory map: the brute-force
    answer (ties included: duplicated rows), never [N, D] or [N, N] in memory."""
    from rcdm_viz.features import FeatureWriter, open_table

    feats = torch.randn(23, 6, generator=torch.Generator().manual_seed(0))
    feats[7] = feats[2]  # a tie for whoever is nearest to row 2's twin
    meta = {"encoder": "e", "images": "i", "n": "23", "storage": "float16"}
    writer = FeatureWriter(tmp_path / "trunk.safetensors", 23, 6, meta)
    writer.add(feats[:10])
    writer.add(feats[10:])
    writer.close()
    table = open_table(tmp_path / "trunk.safetensors", meta)
    z = torch.nn.functional.normalize(feats.half().float(), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    assert nearest_neighbours(table, chunk=4).tolist() == sim.argmax(1).tolist()
