"""Decoder training: an RCDM decoder learns to generate images from one layer's cached representations."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.optimization import get_constant_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch import Tensor
from tqdm.auto import tqdm

from rcdm_viz.config import Config, DataConfig, DecoderConfig
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.decoder.features import cached_features
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.schedule import diffusion_loss
from rcdm_viz.encoders import Encoder, load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import MetricsLog, RunDir, record_config
from rcdm_viz.training import (
    batch_indices,
    generator_for,
    load_latest_checkpoint,
    make_accelerator,
    save_checkpoint,
    shard,
)


def check_layer(encoder: Encoder, layer: str) -> None:
    """A one-line error when ``layer`` is not one of the encoder's layers."""
    if layer not in encoder.all_layer_names:
        raise RcdmVizError(f"unknown layer '{layer}'; this encoder has: {', '.join(encoder.all_layer_names)}")


def images_key(data: DataConfig, split: str, n: int, resolution: int) -> str:
    """Identity of an image set, for the feature cache."""
    return f"{data.source.value}:seed={data.seed}:split={split}:n={n}:res={resolution}"


def build_decoder(dec: DecoderConfig, layer_dims: dict[str, int], fingerprint: str) -> RCDMDecoder:
    """An untrained decoder for ``layer_dims`` with the config's UNet shape."""
    return RCDMDecoder(
        layer_dims=layer_dims,
        resolution=dec.resolution,
        block_out_channels=tuple(dec.block_out_channels),
        layers_per_block=dec.layers_per_block,
        attention_resolutions=tuple(dec.attention_resolutions),
        norm_num_groups=dec.norm_num_groups,
        encoder_fingerprint=fingerprint,
        num_train_timesteps=dec.num_train_timesteps,
        beta_schedule=dec.beta_schedule.value,
        prediction_type=dec.prediction_type.value,
    )


def training_data(
    cfg: Config, encoder: Encoder, layer: str, run: RunDir, progress: bool
) -> tuple[ImageSet, Tensor]:
    """Decoder-resolution images and the cached representations of the same images at ``layer``."""
    dec_images = load_images(cfg.data, "train", resolution=cfg.decoder.resolution, progress=progress)
    enc_res = encoder.config["resolution"]
    if enc_res == cfg.decoder.resolution:
        enc_images = dec_images
    else:  # the encoder sees the same scenes at its own input size
        enc_images = load_images(cfg.data, "train", resolution=enc_res, progress=progress)
    key = images_key(cfg.data, "train", len(enc_images), enc_res)
    feats = cached_features(
        encoder, enc_images, [layer], run.features, key, cfg.decoder.feature_batch_size, progress
    )
    return dec_images, feats[layer]


@dataclass
class DecoderStep:
    """One optimisation step of the decoder (objects prepared by accelerate)."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    noise_scheduler: DDPMScheduler
    ema: EMAModel
    layer: str
    cfg: DecoderConfig

    def __call__(self, x0: Tensor, reps: Tensor, step: int) -> float:
        """x0: float [n,3,H,W] in [-1,1]; reps: [n,D]. Returns the loss."""
        device = self.accelerator.device
        gen = generator_for(self.cfg.seed, "diffusion", step, self.accelerator.process_index)
        self.model.train()
        with self.accelerator.autocast():
            loss = diffusion_loss(
                self.model,
                x0.to(device),
                reps.to(device).float(),
                self.layer,
                self.noise_scheduler,
                gen,
                p_uncond=self.cfg.p_uncond,
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.ema.step(self.accelerator.unwrap_model(self.model).parameters())
        return float(loss.detach())


def train_decoder(
    cfg: Config, run: RunDir, layer: str, resume: bool = False, progress: bool = True
) -> RCDMDecoder:
    """Train the decoder of ``layer`` on the frozen encoder's cached features; saves ``decoders/<layer>/``."""
    encoder = load_encoder(run.require_encoder())
    check_layer(encoder, layer)
    dec = cfg.decoder
    if dec.batch_size < 1 or dec.steps < 1:
        raise RcdmVizError(
            f"decoder.batch_size ({dec.batch_size}) and decoder.steps ({dec.steps}) must be >= 1"
        )
    accelerator = make_accelerator(dec.precision)
    images, reps = training_data(cfg, encoder, layer, run, progress and accelerator.is_main_process)
    torch.manual_seed(dec.seed)
    decoder = build_decoder(dec, {layer: reps.shape[1]}, encoder.fingerprint())
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=dec.lr, weight_decay=dec.weight_decay)
    lr_scheduler = get_constant_schedule_with_warmup(optimizer, dec.warmup_steps)
    ema = EMAModel(decoder.parameters(), decay=dec.ema_decay, use_ema_warmup=dec.ema_warmup)
    model, optimizer, lr_scheduler = accelerator.prepare(decoder, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    noise = decoder.noise_scheduler()
    step_fn = DecoderStep(accelerator, model, optimizer, lr_scheduler, noise, ema, layer, dec)
    ckpt_root = run.checkpoints(f"decoder-{layer}")
    start = load_latest_checkpoint(accelerator, ckpt_root) if resume else 0
    log = MetricsLog(run.decoder(layer) / "metrics.jsonl", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        record_config(run, cfg, ("decoder",))
        log.truncate_after(start) if resume else log.path.unlink(missing_ok=True)
    _loop(step_fn, images, reps, start, ckpt_root, log, progress)
    final = accelerator.unwrap_model(model)
    ema.copy_to(final.parameters())  # sample with the EMA weights, as RCDM/ADM do
    final.eval()
    if accelerator.is_main_process:
        _save_atomic(final, run, layer)
    accelerator.wait_for_everyone()
    return final


def _loop(
    step_fn: DecoderStep,
    images: ImageSet,
    reps: Tensor,
    start: int,
    ckpt_root,
    log: MetricsLog,
    progress: bool,
) -> None:
    acc, dec = step_fn.accelerator, step_fn.cfg
    bar = tqdm(
        range(start, dec.steps),
        desc=f"decoder {step_fn.layer}",
        disable=not (progress and acc.is_main_process),
    )
    tick, seen, window = time.perf_counter(), 0, []
    for step in bar:
        idx = shard(batch_indices(len(images), dec.batch_size, step, dec.seed), acc)
        loss = step_fn(images.batch(idx) * 2 - 1, reps[idx], step)
        if not math.isfinite(loss):
            raise RcdmVizError(f"decoder loss became {loss} at step {step}; lower decoder.lr")
        window.append(loss)
        seen += dec.batch_size
        if (step + 1) % dec.log_every == 0 or step + 1 == dec.steps:
            rate = seen / (time.perf_counter() - tick)
            mean = sum(window) / len(window)
            log.log(step=step + 1, loss=mean, lr=step_fn.lr_scheduler.get_last_lr()[0], images_per_s=rate)
            bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.0f}")
            tick, seen, window = time.perf_counter(), 0, []
        if (step + 1) % dec.checkpoint_every == 0 and step + 1 < dec.steps:
            save_checkpoint(acc, ckpt_root, step + 1, dec.keep_checkpoints)


def _save_atomic(decoder: RCDMDecoder, run: RunDir, layer: str) -> None:
    """save_pretrained into a temporary directory, then swap it in."""
    final = run.decoder(layer)
    tmp = final.with_name(f".tmp-{layer}")
    shutil.rmtree(tmp, ignore_errors=True)
    decoder.save_pretrained(tmp)
    metrics = final / "metrics.jsonl"
    if metrics.is_file():
        shutil.copy2(metrics, tmp / "metrics.jsonl")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
