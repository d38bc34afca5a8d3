"""Decoder training: an RCDM decoder learns to generate images from cached representations.

``--layer NAME`` trains one decoder for one layer (as RCDM does); ``--layer all`` trains one shared UNet for
every layer of ``Encoder.layer_names``: each sample of a batch is conditioned on a layer drawn uniformly,
through that layer's MLP plus a learned layer embedding, so a step costs as much as a single-layer step and
all layers cost about one training run.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image
from torch import Tensor

from rcdm_viz.config import Config, DataSource, DecoderConfig, to_dict
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.data.synthetic import SyntheticScenes
from rcdm_viz.decoder.grids import png_bytes, sample_grid, tensor_to_pil
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.sampling import sample
from rcdm_viz.decoder.schedule import RowGenerators, diffusion_loss
from rcdm_viz.decoder.warm_start import InitSource, build_warm_decoder, resolve_init
from rcdm_viz.encoders import Encoder, load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.features import cached_features
from rcdm_viz.records import StepRecord
from rcdm_viz.runs import (
    ALL_LAYERS,
    PRIOR_LAYER,
    TRAINING_CONFIG,
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    record_config,
    replace_dir,
    step_lock,
    sweep_temp,
    writing,
)
from rcdm_viz.seeding import generator_for
from rcdm_viz.training import (
    LoopSettings,
    RecordFn,
    Trainer,
    batch_indices,
    make_accelerator,
    shard,
)


def decoder_layers(encoder: Encoder, layer: str) -> list[str]:
    """The layers a ``--layer`` value trains: ``all`` -> ``encoder.layer_names``, else ``[layer]``."""
    if layer == ALL_LAYERS:
        return list(encoder.layer_names)
    return encoder.select_layers([layer])


def _encoder_view(cfg: Config, encoder: Encoder, split: str, n: int | None, dec_images: ImageSet) -> ImageSet:
    """The same images at the encoder's own input size (the decoder's set when the sizes agree)."""
    enc_res = encoder.config["resolution"]
    if enc_res == cfg.decoder.resolution:
        return dec_images
    return load_images(cfg.data, split, n=n, resolution=enc_res, progress=False)


def training_data(
    cfg: Config, encoder: Encoder, layers: list[str], run: RunDir, progress: bool
) -> tuple[ImageSet, dict[str, Tensor]]:
    """Decoder-resolution training images and the cached representations (float16 [N, D]; {0, 1} with
    ``decoder.binarize``) of each layer, all layers computed in one encoder pass at the encoder's size."""
    dec = cfg.decoder
    dec_images = load_images(cfg.data, "train", resolution=dec.resolution, progress=progress)
    enc_images = _encoder_view(cfg, encoder, "train", None, dec_images)
    feats = cached_features(encoder, enc_images, layers, run.features, batch_size=dec.feature_batch_size,
                            progress=progress, binarize=dec.binarize)
    return dec_images, feats


def draw_layers(n_layers: int, n: int, seed: int, step: int) -> Tensor:
    """Per-sample layer indices [n] of step ``step`` (uniform, counter-seeded so resume replays them)."""
    return torch.randint(0, n_layers, (n,), generator=generator_for(seed, "layers", step))


def pack_reps(feats: list[Tensor], idx: Tensor, layer_index: Tensor, width: int) -> Tensor:
    """Mixed-layer representations: row i = ``feats[layer_index[i]][idx[i]]``, zero-padded to ``width``.

    feats: per layer [N, D_l], in ``RCDMDecoder.layers`` order; idx, layer_index: long [n].
    Returns float [n, width].
    """
    out = torch.zeros(len(idx), width)
    for i, table in enumerate(feats):
        rows = (layer_index == i).nonzero(as_tuple=True)[0]
        out[rows, : table.shape[1]] = table[idx[rows]].float()
    return out


@dataclass(kw_only=True)
class DecoderStep:
    """One optimisation step of the decoder (objects prepared by accelerate).

    The batch is split into ``cfg.grad_accum_steps`` micro-batches whose gradients are summed (without a
    DDP all-reduce until the last one, accelerate's ``no_sync``) before one optimizer and EMA step.
    """

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    noise_scheduler: DDPMScheduler
    ema: EMAModel
    layers: list[str]
    cfg: DecoderConfig

    def __call__(
        self, x0: Tensor, reps: Tensor | None, step: int, layer_index: Tensor | None = None
    ) -> float:
        """x0: float [n,3,H,W] in [-1,1]; reps: [n,D] of ``layers[0]``, or packed [n, width] with
        ``layer_index`` [n] (shared decoder), or None (the prior). Returns the mean loss over the global
        batch."""
        acc, k = self.accelerator, self.cfg.grad_accum_steps
        device = acc.device
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        x0 = x0.to(device).contiguous(memory_format=fmt)
        reps = reps.to(device).float() if reps is not None else None
        layer = layer_index.to(device) if layer_index is not None else (self.layers or [PRIOR_LAYER])[0]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        first = acc.process_index * x0.shape[0]  # shards are equal (batch_size % processes == 0)
        for micro, rows in enumerate(torch.arange(x0.shape[0]).chunk(k)):
            gen = RowGenerators(self.cfg.seed, step, first + rows)
            last = micro == k - 1
            sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
            part = layer if isinstance(layer, str) else layer[rows]
            with sync:
                with acc.autocast():
                    loss = diffusion_loss(
                        self.model, x0[rows], None if reps is None else reps[rows], part,
                        self.noise_scheduler, gen, p_uncond=self.cfg.p_uncond,
                        snr_gamma=self.cfg.snr_gamma, timestep_bias=self.cfg.timestep_bias,
                    )
                acc.backward(loss / k)
            total += loss.detach().float() / k
        self.optimizer.step()
        self.lr_scheduler.step()
        self.ema.step(acc.unwrap_model(self.model).parameters())
        return float(acc.reduce(total, "mean"))  # the global batch's loss, the same on every rank

    def ema_decoder(self) -> RCDMDecoder:
        """The trained decoder with the EMA weights copied in (RCDM/ADM sample with them), in eval mode."""
        final = self.accelerator.unwrap_model(self.model)
        self.ema.copy_to(final.parameters())
        return final.eval()

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[RCDMDecoder]:
        """The training model with the EMA weights swapped in while the block runs (progress samples),
        its own weights restored after."""
        model = self.accelerator.unwrap_model(self.model)
        params = list(model.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield model
        finally:
            self.ema.restore(params)


def make_decoder_step(
    dec: DecoderConfig, layer_dims: dict[str, int], fingerprint: str | None, accelerator: Accelerator,
    init: InitSource | None = None,
) -> DecoderStep:
    """A fresh decoder for ``layer_dims`` (none: the prior) with its AdamW, warm-up schedule and EMA,
    prepared by ``accelerator`` (the EMA state is registered so that checkpoints hold it). With ``init``
    its UNet starts from that source (``rcdm_viz.decoder.warm_start``), else from RCDM's initialisation."""
    torch.manual_seed(dec.seed)
    if init is None:
        decoder = RCDMDecoder.from_decoder_config(dec, layer_dims, fingerprint)
    else:
        decoder = build_warm_decoder(dec, layer_dims, fingerprint, init)
    if dec.channels_last:
        decoder.to(memory_format=torch.channels_last)
    if dec.compile:
        decoder.unet.compile()  # in place: the state dict keeps its keys, checkpoints stay portable
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=dec.lr, weight_decay=dec.weight_decay)
    lr_scheduler = get_constant_schedule_with_warmup(optimizer, dec.warmup_steps)
    ema = EMAModel(decoder.parameters(), decay=dec.ema_decay, use_ema_warmup=dec.ema_warmup)
    model, optimizer, lr_scheduler = accelerator.prepare(decoder, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    noise = decoder.noise_scheduler()
    return DecoderStep(accelerator=accelerator, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                       noise_scheduler=noise, ema=ema, layers=decoder.layers, cfg=dec)


def _check_decoder_config(dec: DecoderConfig, processes: int) -> None:
    """What the config alone cannot check: the batch split over the processes of this launch."""
    if dec.batch_size % (dec.grad_accum_steps * processes):
        raise RcdmVizError(
            f"decoder.grad_accum_steps {dec.grad_accum_steps} must divide decoder.batch_size "
            f"{dec.batch_size} per process ({processes} processes)"
        )


# Fields a resume may change: bookkeeping, more steps (a constant-LR training continues), and the
# learning rate (resuming the last healthy checkpoint with a lower one after a divergence).
_BOOKKEEPING = ("steps", "lr", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                "progress_images", "progress_steps", "feature_batch_size", "compile")


def decoder_identity(
    cfg: Config, layer: str, encoder_fingerprint: str | None, init: InitSource | None = None
) -> dict:
    """What a decoder checkpoint must match to be resumed: the decoder's config (architecture included),
    its training images, the frozen encoder and the weights its UNet started from."""
    dec = {k: v for k, v in to_dict(cfg.decoder).items() if k not in _BOOKKEEPING}
    data = {k: v for k, v in to_dict(cfg.data).items() if k != "decode_workers"}
    start = init.record() if init is not None else None
    return {"layer": layer, "encoder": encoder_fingerprint, "decoder": dec, "data": data, "init": start}


def train_decoder(
    cfg: Config, run: RunDir, layer: str, resume: bool = False, progress: bool = True
) -> RCDMDecoder:
    """Train the decoder of ``layer`` (or the shared decoder of every layer, ``layer="all"``) on the frozen
    encoder's cached features; saves ``decoders/<layer>/`` (with the metrics of its training).
    ``layer="prior"`` trains the unconditional prior instead: no encoder, the images alone (fresh
    synthetic scenes every step, or the run's image set).

    One training per run and layer at a time (a lock naming the holder)."""
    encoder = None if layer == PRIOR_LAYER else load_encoder(run.require_encoder())
    layers = decoder_layers(encoder, layer) if encoder is not None else []
    init = resolve_init(cfg.decoder.init_from)
    accelerator = make_accelerator(cfg.decoder.precision)
    _check_decoder_config(cfg.decoder, accelerator.num_processes)
    with step_lock(run, f"decoder-{layer}", enabled=accelerator.is_main_process):
        return _train_locked(cfg, run, layer, layers=layers, encoder=encoder, accelerator=accelerator,
                             resume=resume, progress=progress, init=init)


def _train_locked(
    cfg: Config, run: RunDir, layer: str, *, layers: list[str], encoder: Encoder | None,
    accelerator: Accelerator, resume: bool, progress: bool, init: InitSource | None,
) -> RCDMDecoder:
    dec, main = cfg.decoder, accelerator.is_main_process
    if encoder is None:
        batches, dims, fingerprint = prior_batches(cfg, progress and main), {}, None
    else:
        with accelerator.main_process_first():  # one process writes the feature cache, the others read it
            images, feats = training_data(cfg, encoder, layers, run, progress and main)
        dims = {n: feats[n].shape[1] for n in layers}
        fingerprint = encoder.fingerprint()
        check_batch_fits(dec.batch_size, len(images))  # before any checkpoint or record changes

        def batches(step_fn: DecoderStep, step: int) -> Batch:
            return training_batch(step_fn, images, feats, step)

    step_fn = make_decoder_step(dec, dims, fingerprint, accelerator, init)
    if main:  # what a killed cache write of these layers left
        sweep_temp(run.features, [f"{name}.safetensors" for name in layers])
    shown = ALL_LAYERS if len(layers) > 1 else (layers or [PRIOR_LAYER])[0]
    settings = LoopSettings.of(dec, name=f"decoder {shown}", what="decoder", lr_key="decoder.lr",
                               identity=decoder_identity(cfg, layer, fingerprint, init), loss_digits=4)
    trainer = Trainer.for_run(run, f"decoder-{layer}", accelerator=accelerator, settings=settings,
                              steps=dec.steps, progress=progress)
    start = trainer.begin(resume=resume, schedulers=[step_fn.lr_scheduler])
    if main and start == 0 and init is not None:
        trainer.log.log(step=0, warm_start=init.record())
    snapshot = None
    if main and dec.sample_every > 0 and dec.progress_images > 0:
        out = run.decoder(layer) / "progress"
        snapshot = (progress_writer(cfg, encoder, step_fn, out) if encoder is not None
                    else prior_progress_writer(step_fn, out))

    def one_step(step: int) -> dict[str, float]:
        x0, reps, which = batches(step_fn, step)
        return {"loss": step_fn(x0, reps, step, which)}

    trainer.run(start=start, step=one_step, record=_record(step_fn), after_step=_sampling(dec, snapshot))
    final = step_fn.ema_decoder()
    if main:
        _save_atomic(final, run, layer, trainer.log.path, cfg=cfg)
        # recorded with the decoder it describes: a refused or killed training leaves config.yaml alone
        record_config(run, cfg, ("data", "decoder") if encoder is None else ("decoder",))
    accelerator.wait_for_everyone()
    return final


def check_batch_fits(batch_size: int, n_images: int) -> None:
    if batch_size > n_images:
        raise RcdmVizError(f"decoder.batch_size {batch_size} exceeds the {n_images} training images")


Batch = tuple[Tensor, Tensor | None, Tensor | None]  # images in [-1, 1], representations, layer indices


def prior_batches(cfg: Config, progress: bool) -> Callable[[DecoderStep, int], Batch]:
    """The prior's training images by step: on synthetic scenes a fresh batch every step (scenes
    step * B .. step * B + B - 1 of the training stream: the renderer makes unlimited scenes, so the prior
    never sees one twice), else seeded epochs over the run's image set."""
    dec = cfg.decoder
    if cfg.data.source is DataSource.SYNTHETIC:
        stream = SyntheticScenes(2**62, resolution=dec.resolution, seed=cfg.data.seed, split="train")

        def fresh(step_fn: DecoderStep, step: int) -> Batch:
            idx = shard(torch.arange(step * dec.batch_size, (step + 1) * dec.batch_size), step_fn.accelerator)
            return stream.render_batch(idx)[0] * 2 - 1, None, None

        return fresh
    images = load_images(cfg.data, "train", resolution=dec.resolution, progress=progress)
    check_batch_fits(dec.batch_size, len(images))

    def epochs(step_fn: DecoderStep, step: int) -> Batch:
        idx = shard(batch_indices(len(images), dec.batch_size, step, dec.seed), step_fn.accelerator)
        return images.batch(idx) * 2 - 1, None, None

    return epochs


def prior_progress_writer(step_fn: DecoderStep, out_dir: Path, n: int = 32) -> Callable[[int], Path]:
    """``step -> path`` writing ``out_dir/step-XXXXXXX.png``: ``n`` unconditional samples of the EMA
    weights (DDIM, fixed seeds, 4 rows), so successive files show the same noise decoded."""
    steps = step_fn.cfg.progress_steps

    def write(step: int) -> Path:
        with step_fn.ema_weights() as model:
            drawn = sample(model, None, n=n, steps=steps, seed=0)[0]  # [n, 3, H, W]
        rows = drawn.view(4, n // 4, *drawn.shape[1:]).permute(2, 0, 3, 1, 4).flatten(3, 4).flatten(1, 2)
        path = out_dir / f"step-{step:07d}.png"
        atomic_write_bytes(path, png_bytes(tensor_to_pil(rows, scale=2)))
        return path

    return write


def progress_writer(
    cfg: Config, encoder: Encoder, step_fn: DecoderStep, out_dir: Path
) -> Callable[[int], Path]:
    """A function ``step -> path`` writing ``out_dir/step-XXXXXXX.png``: for each of the first
    ``decoder.progress_images`` validation images, one grid row per layer (input, then 4 samples drawn
    with the EMA weights, DDIM, fixed seeds), so successive files show the same inputs and noise."""
    dec = cfg.decoder
    images = load_images(cfg.data, "val", n=dec.progress_images, resolution=dec.resolution, progress=False)
    enc_images = _encoder_view(cfg, encoder, "val", dec.progress_images, images)
    encoder.eval()
    with torch.inference_mode():
        reps = encoder(enc_images.batch(torch.arange(len(images))), layers=step_fn.layers)
    shown = images.batch(torch.arange(len(images)))
    order = [name for name in encoder.all_layer_names if name in step_fn.layers]  # trunk before heads

    def write(step: int) -> Path:
        with step_fn.ema_weights() as model:
            drawn = {  # layer -> [images, 4, 3, H, W]; sample j has the same noise for every image
                name: sample(model, reps[name], n=4, steps=dec.progress_steps, layer=name, seed=0)
                for name in order
            }
        scale = max(1, 64 // dec.resolution)
        grids = [
            sample_grid(shown[i], {f"val {i} {k}": v[i] for k, v in drawn.items()}, scale=scale)
            for i in range(len(images))
        ]
        sheet = Image.new("RGB", (max(g.width for g in grids), sum(g.height for g in grids)), "white")
        for i, grid in enumerate(grids):
            sheet.paste(grid, (0, sum(g.height for g in grids[:i])))
        path = out_dir / f"step-{step:07d}.png"
        atomic_write_bytes(path, png_bytes(sheet))
        return path

    return write


def training_batch(
    step_fn: DecoderStep, images: ImageSet, feats: dict[str, Tensor], step: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """This process's share of step ``step``: images in [-1, 1], representations, layer indices."""
    acc, dec, layers = step_fn.accelerator, step_fn.cfg, step_fn.layers
    global_idx = batch_indices(len(images), dec.batch_size, step, dec.seed)
    idx = shard(global_idx, acc)
    x0 = images.batch(idx) * 2 - 1
    if len(layers) == 1:
        return x0, feats[layers[0]][idx], None
    which = shard(draw_layers(len(layers), dec.batch_size, dec.seed, step), acc)
    width = max(feats[name].shape[1] for name in layers)
    return x0, pack_reps([feats[name] for name in layers], idx, which, width), which


def _record(step_fn: DecoderStep) -> RecordFn:
    """The metrics record of a decoder training: step, mean loss since the last record, lr, throughput."""

    def record(step: int, window: list[dict[str, float]], rate: float) -> StepRecord:
        mean = sum(w["loss"] for w in window) / len(window)
        lr = step_fn.lr_scheduler.get_last_lr()[0]
        processes = step_fn.accelerator.num_processes  # what the throughput was measured on
        return StepRecord(step=step, loss=mean, lr=lr, images_per_s=rate, processes=processes)

    return record


def _sampling(dec: DecoderConfig, snapshot: Callable[[int], Path] | None) -> Callable[[int], bool]:
    """After step s: progress samples every ``sample_every`` steps and at the last; True when it sampled
    (time that is not training throughput)."""

    def sample_progress(step: int) -> bool:
        if snapshot is None or (step % dec.sample_every and step != dec.steps):
            return False
        snapshot(step)
        return True

    return sample_progress


def _save_atomic(decoder: RCDMDecoder, run: RunDir, layer: str, metrics: Path, *, cfg: Config) -> None:
    """save_pretrained into a temporary directory with the metrics of this training, its resolved config
    (``training.yaml``: the data it trained on too) and the progress samples, then swap it in
    (``replace_dir``: the old decoder is set aside first, never deleted before the new one is in place).
    A failed save removes its temporary directory."""
    final = run.decoder(layer)
    tmp = final.with_name(f".tmp-{layer}")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(final, cleanup=(tmp,)):
        decoder.save_pretrained(tmp)
        if metrics.is_file():
            shutil.copy2(metrics, tmp / "metrics.jsonl")
        atomic_write_text(tmp / TRAINING_CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if (final / "progress").is_dir():
            shutil.copytree(final / "progress", tmp / "progress")
        replace_dir(tmp, final)
