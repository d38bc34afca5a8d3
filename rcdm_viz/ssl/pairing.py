"""Positive pairs beyond augmentations (GR §4, Figure 6): same-class images and nearest neighbours.

A pairing maps the global indices of a batch to the indices of the images their second view shows.
Both pairings are pure functions of (data, seed, step), so resuming replays them exactly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rcdm_viz.data.sources import ImageSet
from rcdm_viz.encoders import load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.features import FeatureTable, cached_features
from rcdm_viz.layers import TRUNK
from rcdm_viz.runs import atomic_write, read_json, write_json
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
def nearest_neighbours(
    features: Tensor | FeatureTable, chunk: int = 4096, device: torch.device | str = "cpu"
) -> Tensor:
    """Index of each row's nearest other row under cosine similarity: features [N, D] -> long [N].

    Blocks of ``chunk`` queries against blocks of ``chunk`` keys, rows read per block (a FeatureTable is
    a memory map), so memory holds a few blocks, never [N, D] nor [N, N]. Ties go to the lowest index.
    """
    n = features.shape[0]
    if n < 2:
        raise ValueError("neighbour positives need at least 2 training images")

    def block(start: int) -> Tensor:
        return F.normalize(features[start : start + chunk].to(device).float(), dim=1)

    out = torch.empty(n, dtype=torch.long)
    for q in range(0, n, chunk):
        query = block(q)
        best = torch.full((query.shape[0],), float("-inf"), device=device)
        best_idx = torch.zeros(query.shape[0], dtype=torch.long, device=device)
        for k in range(0, n, chunk):
            sim = query @ block(k).T
            if k == q:
                rows = torch.arange(sim.shape[0], device=device)
                sim[rows, rows] = float("-inf")  # exclude self
            value, idx = sim.max(1)
            better = value > best  # strict: an earlier block keeps a tie, as one argmax over the row would
            best = torch.where(better, value, best)
            best_idx = torch.where(better, idx + k, best_idx)
        out[q : q + chunk] = best_idx.cpu()
    return out


def neighbour_table(
    bundle: str, images: ImageSet, device: torch.device, cache: Path, batch_size: int = 256
) -> Tensor:
    """Nearest neighbours (long [N]) of every image in the trunk space of the encoder bundle at ``bundle``.

    Trunk features go through the feature cache under ``cache`` (memory-mapped); the table itself is kept
    there too (``neighbours.npy``, with the encoder and image set it belongs to), so that it is computed
    once, not once per process or per run of the same data.
    """
    if not bundle:
        raise RcdmVizError("method 'simclr_neighbour' needs ssl.reference_encoder (an encoder bundle path)")
    encoder = load_encoder(bundle).to(device)
    meta = {"encoder": encoder.fingerprint(), "images": images.key, "n": len(images)}
    table, info = Path(cache) / "neighbours.npy", Path(cache) / "neighbours.json"
    if table.is_file() and info.is_file() and read_json(info) == meta:
        return torch.from_numpy(np.load(table))
    trunk = cached_features(encoder, images, [TRUNK], cache, batch_size=batch_size)[TRUNK]
    neighbours = nearest_neighbours(trunk, device=device)
    atomic_write(table, lambda tmp: _save_npy(tmp, neighbours.numpy()))
    write_json(info, meta)
    return neighbours


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to the temp file's name
        np.save(fh, array)


def make_pairing(
    pairing: Pairing,
    train: ImageSet,
    seed: int,
    reference: str,
    device: torch.device,
    cache: Path | None = None,
) -> PairFn:
    """The function (global batch indices, step) -> partner indices for ``pairing``.

    For neighbours, the reference encoder embeds the whole training set once, here (``neighbour_table``,
    kept under ``cache``; a temporary directory when None).
    """
    if pairing is Pairing.AUGMENT:
        return lambda idx, step: idx
    if pairing is Pairing.CLASS:
        labels = train.labels.long()

        def same_class(idx: Tensor, step: int) -> Tensor:
            return class_partners(labels, idx, generator_for(seed, "class-pairs", step))

        return same_class
    if cache is None:
        with tempfile.TemporaryDirectory() as tmp:
            neighbours = neighbour_table(reference, train, device, Path(tmp))
    else:
        neighbours = neighbour_table(reference, train, device, cache)
    return lambda idx, step: neighbours[idx]
