"""Positive pairs beyond augmentations (GR §4, Figure 6): same-class images and nearest neighbours.

A pairing maps the global indices of a batch to the indices of the images their second view shows.
Both pairings are pure functions of (data, seed, step), so resuming replays them exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.encoders import load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.features import encode_batches
from rcdm_viz.seeding import generator_for
from rcdm_viz.ssl.methods import Pairing

PairFn = Callable[[Tensor, int], Tensor]


def class_partners(labels: Tensor, idx: Tensor, generator: torch.Generator) -> Tensor:
    """For each index in ``idx`` a uniformly drawn *other* image of the same class (itself if alone).

    labels: long [N] of the whole set; idx: long [B] -> long [B].
    """
    order = torch.argsort(labels, stable=True)  # images grouped by class, ascending index within a class
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(len(labels)) - starts[labels[order]]
    c = labels[idx]
    n_other = counts[c] - 1
    # Draw among the n_other others, then skip over the anchor itself.
    r = (torch.rand(len(idx), generator=generator) * n_other.clamp(min=1)).long()
    r = torch.where((r >= rank_in_class[idx]) & (n_other > 0), r + 1, r)  # a lone image keeps r = 0: itself
    return order[starts[c] + r]


@torch.no_grad()
def nearest_neighbours(features: Tensor, chunk: int = 4096) -> Tensor:
    """Index of each row's nearest other row under cosine similarity: features [N, D] -> long [N]."""
    if features.shape[0] < 2:
        raise RcdmVizError("neighbour positives need at least 2 training images")
    z = F.normalize(features.float(), dim=1)
    out = torch.empty(z.shape[0], dtype=torch.long)
    for start in range(0, z.shape[0], chunk):
        sim = z[start : start + chunk] @ z.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = float("-inf")  # exclude self
        out[start : start + chunk] = sim.argmax(1).cpu()
    return out


def trunk_features(bundle: str, images: ImageSet, device: torch.device, batch_size: int = 256) -> Tensor:
    """Trunk features [N, D] of every image under the encoder bundle at ``bundle`` (eval mode)."""
    if not bundle:
        raise RcdmVizError("method 'simclr_neighbour' needs ssl.reference_encoder (an encoder bundle path)")
    encoder = load_encoder(bundle).to(device)
    return encode_batches(encoder, images, ["trunk"], batch_size)["trunk"]


def make_pairing(
    pairing: Pairing, train: ImageSet, seed: int, reference: str, device: torch.device
) -> PairFn:
    """The function (global batch indices, step) -> partner indices for ``pairing``.

    For neighbours, the reference encoder embeds the whole training set once, here.
    """
    if pairing is Pairing.AUGMENT:
        return lambda idx, step: idx
    if pairing is Pairing.CLASS:
        labels = train.labels.long()

        def same_class(idx: Tensor, step: int) -> Tensor:
            return class_partners(labels, idx, generator_for(seed, "class-pairs", step))

        return same_class
    neighbours = nearest_neighbours(trunk_features(reference, train, device))
    return lambda idx, step: neighbours[idx]
