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
    with pytest.raises(RcdmVizError, match="at least 2"):
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
