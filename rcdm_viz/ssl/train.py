"""SSL encoder training through accelerate: one step function, one loop, resumable."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor, nn
from tqdm.auto import tqdm

from rcdm_viz.config import Config, EncoderConfig, SSLConfig
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.data.views import two_views
from rcdm_viz.encoders import Encoder, build_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import ALL_SECTIONS, MetricsLog, RunDir, record_config
from rcdm_viz.ssl.methods import MethodSpec, get_method
from rcdm_viz.training import (
    batch_indices,
    generator_for,
    load_latest_checkpoint,
    make_accelerator,
    save_checkpoint,
    shard,
)


def encoder_from_config(enc: EncoderConfig, resolution: int) -> Encoder:
    """Build the (untrained) encoder a config describes, for inputs of ``resolution`` pixels."""
    return build_encoder(
        arch=enc.arch,
        width=enc.width,
        head=enc.head,
        base_width=enc.base_width,
        small_input=enc.small_input,
        resolution=resolution,
    )


def total_steps(n_train: int, ssl: SSLConfig) -> int:
    """Optimisation steps of a run: ``epochs`` passes of full batches."""
    if ssl.batch_size < 2 or ssl.batch_size > n_train:
        raise RcdmVizError(f"ssl.batch_size {ssl.batch_size} must be between 2 and data.n_train ({n_train})")
    return max(1, ssl.epochs * (n_train // ssl.batch_size))


def make_optimizer(
    model: nn.Module, ssl: SSLConfig, steps: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (GR) with linear warm-up and cosine decay; lr scaled linearly with batch / 256.

    Biases and normalisation parameters get no weight decay, as usual for SSL recipes.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    lr = ssl.lr * ssl.batch_size / 256
    groups = [{"params": decay, "weight_decay": ssl.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = min(steps // 2, round(ssl.warmup_epochs * steps_per_epoch))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, steps)


@dataclass
class SSLStep:
    """Everything one SSL optimisation step needs (prepared by accelerate)."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    method: MethodSpec
    embedding_layer: str
    cfg: Config

    def __call__(self, images: Tensor, step: int) -> dict[str, float]:
        """One step on this process's share of the global batch: float images [n,3,H,W] in [0,1]."""
        gen = generator_for(self.cfg.ssl.seed, "views", step, self.accelerator.process_index)
        v1, v2 = two_views(images.to(self.accelerator.device), gen, self.cfg.views)
        self.model.train()
        out = self.model(torch.cat([v1, v2]), layers=[self.embedding_layer])[self.embedding_layer]
        z1, z2 = out.float().chunk(2)
        loss, logs = self.method.loss(z1, z2, self.cfg.ssl)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach()), **logs}


def train_encoder(cfg: Config, run: RunDir, resume: bool = False, progress: bool = True) -> Encoder:
    """Train an SSL encoder on ``cfg.data``; writes ``encoder/`` and metrics; returns the encoder (eval)."""
    accelerator = make_accelerator(cfg.ssl.precision)
    torch.manual_seed(cfg.ssl.seed)  # initialisation
    train = load_images(cfg.data, "train", progress=progress and accelerator.is_main_process)
    steps = total_steps(len(train), cfg.ssl)
    encoder = encoder_from_config(cfg.encoder, cfg.data.resolution)
    optimizer, scheduler = make_optimizer(encoder, cfg.ssl, steps, len(train) // cfg.ssl.batch_size)
    embedding_layer = encoder.embedding_layer
    model, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    step_fn = SSLStep(
        accelerator, model, optimizer, scheduler, get_method(cfg.ssl.method), embedding_layer, cfg
    )
    ckpt_root = run.checkpoints("encoder")
    start = load_latest_checkpoint(accelerator, ckpt_root) if resume else 0
    log = MetricsLog(run.encoder_metrics, enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        # Every section, so that later steps in this run (decoders, sampling) inherit the preset's choices.
        record_config(run, cfg, ALL_SECTIONS)
        log.truncate_after(start) if resume else log.path.unlink(missing_ok=True)
    _loop(step_fn, train, start, steps, ckpt_root, log, progress)
    encoder = accelerator.unwrap_model(model).eval()
    if accelerator.is_main_process:
        encoder.save(run.encoder)
    accelerator.wait_for_everyone()
    return encoder


def _loop(
    step_fn: SSLStep, train: ImageSet, start: int, steps: int, ckpt_root, log: MetricsLog, progress: bool
) -> None:
    acc, ssl = step_fn.accelerator, step_fn.cfg.ssl
    per_epoch = len(train) // ssl.batch_size
    bar = tqdm(range(start, steps), desc="encoder", disable=not (progress and acc.is_main_process))
    tick, seen = time.perf_counter(), 0
    for step in bar:
        idx = shard(batch_indices(len(train), ssl.batch_size, step, ssl.seed), acc)
        logs = step_fn(train.batch(idx), step)
        seen += ssl.batch_size
        if not math.isfinite(logs["loss"]):
            raise RcdmVizError(f"encoder loss became {logs['loss']} at step {step}; lower ssl.lr")
        if (step + 1) % ssl.log_every == 0 or step + 1 == steps:
            rate = seen / (time.perf_counter() - tick)
            lr = step_fn.scheduler.get_last_lr()[0]
            log.log(step=step + 1, epoch=(step + 1) / per_epoch, lr=lr, images_per_s=rate, **logs)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", img_s=f"{rate:.0f}")
            tick, seen = time.perf_counter(), 0
        if (step + 1) % ssl.checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(acc, ckpt_root, step + 1, ssl.keep_checkpoints)
