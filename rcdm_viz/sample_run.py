"""Sampling a run's decoders into ``samples/<image-id>/``: encode an image, sample each layer's decoder,
write the layer grid, one strip per layer, meta.json and (optionally) scores.json."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from rcdm_viz.config import Config, SampleConfig
from rcdm_viz.data.images import fit, image_id, image_ids, read_image
from rcdm_viz.data.sources import load_images
from rcdm_viz.decoder.grids import interpolation_grid, png_bytes, sample_grid, tensor_to_pil
from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.sampling import sample
from rcdm_viz.encoders import Encoder, load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation.gather import decoder_scores
from rcdm_viz.evaluation.probes import LINEAR
from rcdm_viz.evaluation.scores import build_gallery, score_image
from rcdm_viz.records import CONSISTENCY, SHAPE_KEPT, ImageScores, LayerScores, SampleMeta
from rcdm_viz.runs import RunDir, atomic_write_bytes, fill_and_replace_dir, sweep_temp, write_json


def _check_decoder(decoder: RCDMDecoder, path: Path, layer: str, encoder: Encoder, fingerprint: str) -> None:
    """One-line errors when the decoder at ``path`` was not trained on ``encoder``'s ``layer``."""
    if layer not in decoder.layers:
        raise RcdmVizError(f"the decoder '{path}' has no layer '{layer}' (it has {decoder.layers})")
    want, have = encoder.layer_dims[layer], decoder.config.layer_dims[layer]
    if have != want:
        raise RcdmVizError(
            f"decoder '{path}' expects {have}-d representations of '{layer}' but the encoder gives {want}"
        )
    trained_on = decoder.config.encoder_fingerprint
    if trained_on is not None and trained_on != fingerprint:
        raise RcdmVizError(
            f"decoder '{path}' was trained on encoder {trained_on}, not on this run's encoder {fingerprint}; "
            "retrain it with `rcdm-viz train-decoder`"
        )


def load_decoders(run: RunDir, layers: Sequence[str], encoder: Encoder) -> dict[str, RCDMDecoder]:
    """The run's decoder for each layer (``decoders/<layer>/``, else the shared ``decoders/all/``), checked
    against the encoder they must match.  Layers served by the same decoder share one object."""
    fingerprint = encoder.fingerprint()
    loaded: dict[Path, RCDMDecoder] = {}
    decoders: dict[str, RCDMDecoder] = {}
    for layer in layers:
        path = run.decoder_for(layer)
        if path is None:
            raise RcdmVizError(
                f"no decoder for layer '{layer}' in '{run.root}'; run `rcdm-viz train-decoder --layer "
                f"{layer}` (or `--layer all`) first"
            )
        if path not in loaded:
            loaded[path] = load_decoder(path)
        decoders[layer] = loaded[path]
        _check_decoder(decoders[layer], path, layer, encoder, fingerprint)
    return decoders


def layer_notes(
    run: RunDir, scores: dict[str, LayerScores] | None = None, factors: Sequence[str] = ()
) -> dict[str, str]:
    """Per-layer notes for the grid's row labels: linear-probe accuracy (``encoder/probes.json``), the
    decoder samples' retention of each of ``factors`` (the factors the SSL views redrew) and their
    representation consistency, from ``scores`` (one image's scores per layer; else the mean over the run's
    ``samples/*/scores.json``), e.g. "acc 91%\nfloor hue kept 0.82\nshape kept 0.75\ncons 0.83"."""
    notes: dict[str, list[str]] = {}
    report = run.read_probes()
    for name, row in (report.layers if report is not None else {}).items():
        if (linear := row.accuracy(LINEAR)) is not None:
            notes.setdefault(name, []).append(f"acc {100 * linear:.0f}%")
    per_layer = decoder_scores(run)[0] if scores is None else scores
    for name, row in per_layer.items():
        kept = row.factor_retention or {}
        for factor in factors:
            if factor in kept and math.isfinite(kept[factor]):
                notes.setdefault(name, []).append(f"{factor.replace('_', ' ')} kept {kept[factor]:.2f}")
        for metric in (SHAPE_KEPT, CONSISTENCY):
            value = getattr(row, metric.key)
            if value is not None and math.isfinite(value):
                notes.setdefault(name, []).append(f"{metric.short} {value:.2f}")
    return {name: "\n".join(lines) for name, lines in notes.items()}


@torch.inference_mode()
def sample_layers(
    encoder: Encoder,
    decoders: dict[str, RCDMDecoder],
    image: Tensor,
    cfg: SampleConfig,
    progress: bool = False,
) -> dict[str, Tensor]:
    """For one image [3,H,W] in [0,1]: layer -> n samples [n,3,h,w] decoded from its representation."""
    res = encoder.config["resolution"]
    reps = encoder(fit(image, res)[None], layers=list(decoders))
    return {layer: _sample_with(dec, reps[layer], layer, cfg, progress)[0] for layer, dec in decoders.items()}


def _sample_with(dec: RCDMDecoder, reps: Tensor, layer: str, cfg: SampleConfig, progress: bool) -> Tensor:
    """``sample`` with every setting taken from ``cfg``: reps [m,D] -> [m,n,3,h,w]."""
    return sample(
        dec,
        reps,
        n=cfg.n,
        steps=cfg.steps,
        sampler=cfg.sampler.value,
        guidance=cfg.guidance,
        seed=cfg.seed,
        layer=layer,
        batch_size=cfg.batch_size,
        progress=progress,
    )


@torch.inference_mode()
def interpolate_layers(
    encoder: Encoder,
    decoders: dict[str, RCDMDecoder],
    image_a: Tensor,
    image_b: Tensor,
    *,
    columns: int,
    cfg: SampleConfig,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Decode linear interpolations between two images' representations.

    Column c decodes h_c = (1 - a_c) h(A) + a_c h(B), a_c = c / (columns - 1); sample j of every column
    starts from the same noise (seeded by (seed, j)), so a row shows only what the representation changes.
    image_a, image_b: [3,H,W] in [0,1].  Returns layer -> [n, columns, 3, h, w].
    """
    if columns < 2:
        raise RcdmVizError(f"an interpolation needs at least 2 columns, got {columns}")
    res = encoder.config["resolution"]
    reps = encoder(torch.stack([fit(image_a, res), fit(image_b, res)]), layers=list(decoders))
    alpha = torch.linspace(0, 1, columns).unsqueeze(1)
    rows = {}
    for layer, dec in decoders.items():
        h = (1 - alpha) * reps[layer][0].float() + alpha * reps[layer][1].float()  # [columns, D]
        rows[layer] = _sample_with(dec, h, layer, cfg, progress).transpose(0, 1)
    return rows


def write_interpolation_dir(
    out_dir: Path, image_a: Tensor, image_b: Tensor, rows: dict[str, Tensor], cfg: SampleConfig
) -> Path:
    """Write grid.png (rows = layer x sample, columns = A, interpolations, B) and meta.json."""
    res = next(iter(rows.values())).shape[-1]
    grid = interpolation_grid(fit(image_a, res), fit(image_b, res), rows, scale=max(1, 64 // res))
    atomic_write_bytes(out_dir / "grid.png", png_bytes(grid))
    columns = next(iter(rows.values())).shape[1]
    alpha = tuple(torch.linspace(0, 1, columns).tolist())
    meta = dataclasses.replace(_sampling_meta(rows, cfg, res), columns=columns, alpha=alpha)
    write_json(out_dir / "meta.json", meta.to_json())
    return out_dir / "grid.png"


def write_sample_dir(
    out_dir: Path, image: Tensor, rows: dict[str, Tensor], notes: dict[str, str], cfg: SampleConfig,
    scores: ImageScores | None = None,
) -> Path:
    """Write grid.png, one strip per layer, meta.json and (given ``scores``) scores.json into ``out_dir``,
    swapped in as one folder (a killed sampling leaves the previous folder whole); returns the grid's
    path."""
    sweep_temp(out_dir)  # what a killed sampling of this image left
    res = next(iter(rows.values())).shape[-1]
    shown = fit(image, res)
    grid = sample_grid(shown, rows, notes=notes, scale=max(1, 128 // res))

    def fill(new: Path) -> None:
        atomic_write_bytes(new / "grid.png", png_bytes(grid))
        atomic_write_bytes(new / "input.png", png_bytes(tensor_to_pil(shown)))
        for layer, samples in rows.items():
            atomic_write_bytes(
                new / f"{layer}.png",
                png_bytes(tensor_to_pil(make_grid(samples, nrow=len(samples), padding=1))),
            )
        write_json(new / "meta.json", _sampling_meta(rows, cfg, res).to_json())
        if scores is not None:
            write_json(new / "scores.json", scores.to_json())

    fill_and_replace_dir(out_dir, fill)
    return out_dir / "grid.png"


def _sampling_meta(rows: dict[str, Tensor], cfg: SampleConfig, resolution: int) -> SampleMeta:
    """What a grid's meta.json records: its layers and every setting that decides its pixels."""
    return SampleMeta(layers=tuple(rows), n=cfg.n, sampler=cfg.sampler.value, steps=cfg.steps,
                      guidance=cfg.guidance, seed=cfg.seed, resolution=resolution)


def sample_heldout(
    cfg: Config, run: RunDir, layers: list[str], progress: bool = True, scores: bool = True
) -> list[Path]:
    """Grids for the first ``quickstart.n_images`` validation scenes (``samples/val-<index>/``), each scored
    (``scores.json``) and labelled with its own scores unless ``scores`` is False."""
    encoder = load_encoder(run.require_encoder())
    decoders = load_decoders(run, layers, encoder)
    res = max(cfg.decoder.resolution, encoder.config["resolution"])
    val = load_images(cfg.data, "val", n=cfg.quickstart.n_images, resolution=res, progress=False)
    named = [(f"val-{i:05d}", val.batch(torch.tensor([i]))[0]) for i in range(len(val))]
    return _sample_each(cfg, run, encoder, decoders, named, scores=scores, progress=progress)


def _sample_each(
    cfg: Config, run: RunDir, encoder: Encoder, decoders: dict[str, RCDMDecoder],
    named: Sequence[tuple[str, Tensor]], *, scores: bool, progress: bool,
) -> list[Path]:
    """The one per-image loop of every layer grid: sample each layer, score the samples against the
    gallery (with ``scores``), label the rows and write ``samples/<id>/``; returns the grids' paths."""
    gallery = None
    if scores:
        side = next(iter(decoders.values())).config.resolution
        gallery = build_gallery(cfg, run, encoder, list(decoders), side, progress=progress)
    paths = []
    for ident, image in named:
        rows = sample_layers(encoder, decoders, image, cfg.sample, progress=progress)
        result = None if gallery is None else score_image(encoder, image, rows, gallery, cfg.scores.distance)
        notes = layer_notes(run, None if result is None else result.layers, cfg.views.redraw_factors)
        paths.append(write_sample_dir(run.samples(ident), image, rows, notes, cfg.sample, result))
    return paths


def sample_images(
    cfg: Config,
    run: RunDir,
    images: Sequence[str],
    layers: str,
    *,
    progress: bool = False,
    interpolate: int | None = None,
    scores: bool = False,
) -> list[Path]:
    """``rcdm-viz sample``: the layer grid of every image file (with ``scores``, scores.json too), or with
    ``interpolate`` K the interpolation grid between exactly two images; returns the grids' paths."""
    if interpolate is not None and len(images) != 2:
        raise RcdmVizError(f"an interpolation needs exactly 2 images, got {len(images)}")
    inputs = [(path, read_image(path)) for path in images]  # all unreadable files fail before sampling
    encoder = load_encoder(run.require_encoder())
    decoders = load_decoders(run, encoder.select_layers(layers), encoder)
    if interpolate is not None:
        (path_a, a), (path_b, b) = inputs
        rows = interpolate_layers(encoder, decoders, a, b, columns=interpolate, cfg=cfg.sample,
                                  progress=progress)
        out = run.samples(f"{image_id(path_a)}-to-{image_id(path_b)}")
        return [write_interpolation_dir(out, a, b, rows, cfg.sample)]
    named = list(zip(image_ids([p for p, _ in inputs]), [image for _, image in inputs], strict=True))
    return _sample_each(cfg, run, encoder, decoders, named, scores=scores, progress=progress)


def sample_across_runs(
    cfg: Config, runs: Sequence[RunDir], images: Sequence[str], layers: str, out: Path, progress: bool = False
) -> list[Path]:
    """``rcdm-viz sample --runs``: one grid per image whose rows are each of ``layers`` in each run, in the
    order given (e.g. runs of one encoder at successive SSL epochs, or different encoders), labelled
    "<run> <layer>" with the run's probe accuracy; written to ``out/<image-id>/``. The samples of every row
    use the same settings and seeds (``cfg.sample``), so rows differ only by what the runs' layers hold."""
    if not runs:
        raise RcdmVizError("no runs to compare: name at least one run directory")
    inputs = [(path, read_image(path)) for path in images]
    rows_of: list[dict[str, Tensor]] = [{} for _ in inputs]
    notes: dict[str, str] = {}
    for run in runs:
        encoder = load_encoder(run.require_encoder())
        decoders = load_decoders(run, encoder.select_layers(layers), encoder)
        run_notes = layer_notes(run)
        for rows, (_, image) in zip(rows_of, inputs, strict=True):
            for layer, samples in sample_layers(encoder, decoders, image, cfg.sample, progress).items():
                label = f"{run.root.name} {layer}"
                if label in rows:
                    raise RcdmVizError(f"two runs named {run.root.name!r}: give the runs distinct names")
                rows[label] = samples
                notes[label] = run_notes.get(layer, "")
    sizes = {s.shape[-1] for s in rows_of[0].values()}
    if len(sizes) > 1:
        raise RcdmVizError(f"the runs' decoders draw different sizes ({sorted(sizes)} px); "
                           "compare runs of one size")
    ids = image_ids([p for p, _ in inputs])
    return [write_sample_dir(out / ident, image, rows, notes, cfg.sample)
            for ident, (_, image), rows in zip(ids, inputs, rows_of, strict=True)]
