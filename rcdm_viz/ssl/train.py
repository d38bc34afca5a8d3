"""SSL encoder training through accelerate: one step function, one loop, online probes, resumable.

What a method needs (a pairing of images, an EMA target network, extra trainable modules, labels) is
declared in its ``MethodSpec``; the step only wires those parts, it never tests a method's name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from torch import Tensor, nn

from rcdm_viz.config import Config, SSLConfig, to_dict
from rcdm_viz.data.factor_views import FactorViews, check_redraw_factors, draw_factors
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.data.views import make_views
from rcdm_viz.encoders import Encoder, parse_head
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.footprint import require_fits
from rcdm_viz.records import StepRecord
from rcdm_viz.runs import (
    ALL_SECTIONS,
    ENCODER_DIR,
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    fill_and_replace_dir,
    record_config,
    step_lock,
    sweep_temp,
    tidy_swap,
    writing,
)
from rcdm_viz.seeding import generator_for
from rcdm_viz.ssl.batchnorm import convert_global_batchnorm
from rcdm_viz.ssl.methods import Embedded, MethodSpec, byol_momentum, get_method
from rcdm_viz.ssl.optim import make_optimizer
from rcdm_viz.ssl.pairing import PairFn, make_pairing
from rcdm_viz.training import (
    LoopSettings,
    RecordFn,
    StepFn,
    Trainer,
    batch_indices,
    make_accelerator,
    shard,
)

__all__ = ["SSLModel", "SSLStep", "build_ssl_step", "make_optimizer", "train_encoder"]


def total_steps(n_train: int, ssl: SSLConfig) -> int:
    """Optimisation steps of a run: ``epochs`` passes of full batches."""
    if ssl.batch_size < 2 or ssl.batch_size > n_train:
        raise RcdmVizError(f"ssl.batch_size {ssl.batch_size} must be between 2 and data.n_train ({n_train})")
    return max(1, ssl.epochs * (n_train // ssl.batch_size))


class SSLModel(nn.Module):
    """What the main optimiser trains: the encoder plus the method's extras; forward returns the loss.

    The whole loss is computed inside ``forward`` so that DDP sees every trainable parameter used there.
    """

    def __init__(self, encoder: Encoder, method: MethodSpec, ssl: SSLConfig, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.method, self.ssl = encoder, method, ssl
        dim = encoder.layer_dims[encoder.embedding_layer]
        self.extras = method.extras(dim, ssl, num_classes)

    def forward(
        self, v1: Tensor, v2: Tensor, labels: Tensor, targets: tuple[Tensor, Tensor] | None, layers: list[str]
    ) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """Views [n,3,h,w] each, labels long [n], target embeddings ([n,K], [n,K]) or None.

        Returns (loss, values to log, detached features of both views [2n, dim] for every name in
        ``layers``).
        """
        emb = self.encoder.embedding_layer
        out = self.encoder(torch.cat([v1, v2]), layers=list(dict.fromkeys([*layers, emb])))
        z1, z2 = out[emb].float().chunk(2)
        t1, t2 = targets if targets is not None else (None, None)
        loss, logs = self.method.loss(Embedded(z1, z2, labels, t1, t2), self.extras, self.ssl)
        return loss, logs, {name: out[name].detach() for name in layers}


class TargetNetwork(nn.Module):
    """BYOL's target: an EMA copy of the encoder (trunk + projector), never trained by gradients."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)

    @torch.no_grad()
    def embed(self, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
        """Target embeddings of both views: ([n, K], [n, K]) (BatchNorm on batch statistics, as BYOL)."""
        layer = self.encoder.embedding_layer
        self.encoder.train()
        z1, z2 = self.encoder(torch.cat([v1, v2]), layers=[layer])[layer].float().chunk(2)
        return z1, z2

    @torch.no_grad()
    def update(self, online: Encoder, momentum: float) -> None:
        """theta_target <- m * theta_target + (1 - m) * theta_online (parameters only; buffers are own)."""
        target = list(self.encoder.parameters())
        torch._foreach_lerp_(target, [p.detach() for p in online.parameters()], 1.0 - momentum)


class OnlineProbes(nn.Module):
    """One linear classifier per layer, trained on detached features while the encoder trains."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.layers = list(dims)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, num_classes) for name, dim in dims.items()})

    def forward(self, feats: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy over layers, and top-1 accuracy of each layer's probe [len(layers)]."""
        loss = torch.zeros((), device=labels.device)
        acc = []
        for name in self.layers:
            logits = self.heads[name](feats[name].float())
            loss = loss + F.cross_entropy(logits, labels)
            acc.append((logits.argmax(1) == labels).float().mean())
        return loss, torch.stack(acc).detach()


@dataclass(kw_only=True)
class SSLStep:
    """Everything one SSL optimisation step needs (model, probes prepared by accelerate)."""

    accelerator: Accelerator
    model: nn.Module  # prepared SSLModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: Config
    total_steps: int
    target: TargetNetwork | None = None
    probes: nn.Module | None = None  # prepared OnlineProbes
    probe_optimizer: torch.optim.Optimizer | None = None

    def __call__(
        self, images: Tensor, step: int, labels: Tensor, partners: Tensor | None = None
    ) -> dict[str, float]:
        """One step on this process's share of the global batch: float images [n,3,H,W] in [0,1].

        ``partners`` [n,3,H,W] are the images of the second views (default: ``images`` themselves).
        """
        dev = self.accelerator.device
        gen = generator_for(self.cfg.ssl.seed, "views", step, self.accelerator.process_index)
        v1 = make_views(images.to(dev), gen, self.cfg.views, 0)
        v2 = make_views((images if partners is None else partners).to(dev), gen, self.cfg.views, 1)
        return self.update(v1, v2, labels.to(dev), step)

    def update(self, v1: Tensor, v2: Tensor, labels: Tensor, step: int) -> dict[str, float]:
        """Loss, backward and optimiser step on given views [n,3,h,w]; then EMA target and probes."""
        self.model.train()
        targets = None
        if self.target is not None:
            with self.accelerator.autocast():
                targets = self.target.embed(v1, v2)
        layers = self.accelerator.unwrap_model(self.probes).layers if self.probes is not None else []
        loss, logs, feats = self.model(v1, v2, labels, targets, layers)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        if self.target is not None:
            online = self.accelerator.unwrap_model(self.model).encoder
            momentum = byol_momentum(self.cfg.ssl.byol_momentum, step, self.total_steps)
            self.target.update(online, momentum)
            logs["byol_momentum"] = momentum
        if self.probes is not None and self.probe_optimizer is not None:
            probe_loss, accuracy = self.probes(feats, torch.cat([labels, labels]))
            self.probe_optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(probe_loss)
            self.probe_optimizer.step()
            # Accuracy on this step's global batch (before the probes' update), logged as probe/<layer>.
            logs.update(
                zip([f"probe/{n}" for n in layers], self._mean_over_ranks(accuracy).tolist(), strict=True)
            )
        return {"loss": float(self._mean_over_ranks(loss.detach())), **logs}

    def _mean_over_ranks(self, value: Tensor) -> Tensor:
        """Mean of a per-rank value (a local loss, e.g. cross-entropy, gives the global batch's mean)."""
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value, reduction="mean")


def build_ssl_step(
    cfg: Config, accelerator: Accelerator, num_classes: int, steps: int, steps_per_epoch: int
) -> tuple[SSLStep, Encoder]:
    """Build, seed and ``prepare`` every part of an SSL step; returns it and the (unwrapped) encoder."""
    torch.manual_seed(cfg.ssl.seed)  # initialisation
    method = get_method(cfg.ssl.method)
    encoder = Encoder.from_config(cfg.encoder, cfg.data.resolution)
    module: nn.Module = SSLModel(encoder, method, cfg.ssl, num_classes)
    if accelerator.num_processes > 1 and cfg.ssl.sync_batchnorm:
        # Global-batch BatchNorm statistics, as SimCLR / VICReg / BYOL train on several devices.
        cuda = accelerator.device.type == "cuda"
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module) if cuda else convert_global_batchnorm(module)
    optimizer, scheduler = make_optimizer(module, cfg.ssl, steps, steps_per_epoch)
    target = TargetNetwork(module.encoder).to(accelerator.device) if method.target_network else None
    model, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    probes = probe_optimizer = None
    if cfg.ssl.online_probes and num_classes >= 2:
        dims = {name: encoder.layer_dims[name] for name in encoder.layer_names}
        probe_module = OnlineProbes(dims, num_classes)
        probe_opt = torch.optim.AdamW(probe_module.parameters(), lr=cfg.ssl.probe_lr, weight_decay=0.0)
        probes, probe_optimizer = accelerator.prepare(probe_module, probe_opt)
    if target is not None:
        accelerator.register_for_checkpointing(target)
    step = SSLStep(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, cfg=cfg,
                   total_steps=steps, target=target, probes=probes, probe_optimizer=probe_optimizer)
    return step, accelerator.unwrap_model(model).encoder


def encoder_identity(cfg: Config) -> dict:
    """What an encoder checkpoint must match to be resumed: data, architecture, views and SSL settings
    (not the logging and checkpoint cadence, nor the learning rate)."""
    full = to_dict(cfg)
    cadence = ("lr", "log_every", "checkpoint_every", "keep_checkpoints")
    ssl = {k: v for k, v in full["ssl"].items() if k not in cadence}
    data = {k: v for k, v in full["data"].items() if k != "decode_workers"}
    return {"data": data, "encoder": full["encoder"], "views": full["views"], "ssl": ssl}


def train_encoder(cfg: Config, run: RunDir, resume: bool = False, progress: bool = True) -> Encoder:
    """Train an SSL encoder on ``cfg.data``; writes ``encoder/`` with the metrics of this training;
    returns the encoder (eval). One training per run at a time (a lock naming the holder)."""
    # Every refusal comes before the lock file exists: a refused command leaves the run untouched.
    redraw = check_redraw_factors(cfg.views.redraw_factors, cfg.data.source)
    parse_head(cfg.encoder.head)
    require_fits(cfg, "train-encoder")
    total_steps(cfg.data.n_train, cfg.ssl)  # ssl.batch_size against the most images the data can give
    accelerator = make_accelerator(cfg.ssl.precision)
    method = get_method(cfg.ssl.method)
    train = load_images(cfg.data, "train", progress=progress and accelerator.is_main_process)
    if method.needs_labels and train.num_classes < 2:
        raise RcdmVizError(
            f"method '{method.name.value}' needs labelled images; data has {train.num_classes} class(es)"
        )
    total_steps(len(train), cfg.ssl)  # a folder may hold fewer images than data.n_train
    with step_lock(run, "encoder", enabled=accelerator.is_main_process):
        return _train_locked(cfg, run, train=train, method=method, redraw=redraw, accelerator=accelerator,
                             resume=resume, progress=progress)


def _train_locked(
    cfg: Config, run: RunDir, *, train: ImageSet, method: MethodSpec, redraw: tuple[str, ...],
    accelerator: Accelerator, resume: bool, progress: bool,
) -> Encoder:
    main = accelerator.is_main_process
    steps = total_steps(len(train), cfg.ssl)
    step_fn, encoder = build_ssl_step(
        cfg, accelerator, train.num_classes, steps, len(train) // cfg.ssl.batch_size
    )
    with accelerator.main_process_first():  # one process computes a neighbour table, the others read it
        pairing = make_pairing(method.pairing, train, cfg.ssl.seed, cfg.ssl.reference_encoder,
                               accelerator.device, run.features / "neighbour-reference")
    factor_views = FactorViews(train, redraw) if redraw else None
    if main:  # what a killed save of the encoder left
        tidy_swap(run.root / ENCODER_DIR)
        sweep_temp(run.encoder)
    settings = LoopSettings.of(cfg.ssl, name="encoder", what="encoder", lr_key="ssl.lr",
                               identity=encoder_identity(cfg))
    trainer = Trainer.for_run(run, "encoder", accelerator=accelerator, settings=settings, steps=steps,
                              progress=progress)
    start = trainer.begin(resume=resume, schedulers=[step_fn.scheduler])
    one_step = _step_on(step_fn, train, pairing, factor_views)
    trainer.run(start=start, step=one_step, record=_record(step_fn, len(train) // cfg.ssl.batch_size))
    encoder.eval()
    if main:
        save_bundle(run, cfg, encoder, trainer.log.path)
        # Every section, so that later steps in this run (decoders, sampling) inherit the preset's choices;
        # recorded once the encoder it describes is in place, so a killed training leaves the old record
        # (and a kill between the two leaves the bundle's training.yaml, which `read_run_config` prefers).
        record_config(run, cfg, ALL_SECTIONS)
    accelerator.wait_for_everyone()
    return encoder


def save_bundle(run: RunDir, cfg: Config, encoder: Encoder, metrics: Path) -> None:
    """Swap in ``encoder/`` as one folder: the model, this training's metrics and its resolved config
    (``training.yaml``). A kill at any instant leaves the previous bundle (its probes and the decoders trained
    on it still valid) or the new one; never the new model beside the old metrics."""

    def fill(folder: Path) -> None:
        encoder.save(folder)
        if metrics.is_file():
            atomic_write_bytes(folder / run.encoder_metrics.name, metrics.read_bytes())
        atomic_write_text(folder / run.encoder_training.name, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    with writing(run.root / ENCODER_DIR):
        fill_and_replace_dir(run.root / ENCODER_DIR, fill)


def _step_on(
    step_fn: SSLStep, train: ImageSet, pairing: PairFn, factor_views: FactorViews | None
) -> StepFn:
    """Step s of the training: its global batch and partners (sharded), views, one ``step_fn`` update."""
    acc, ssl = step_fn.accelerator, step_fn.cfg.ssl

    def one_step(step: int) -> dict[str, float]:
        global_idx = batch_indices(len(train), ssl.batch_size, step, ssl.seed)
        partner_idx = pairing(global_idx, step)  # on the global batch: the same for any number of ranks
        idx = shard(global_idx, acc)
        partners = None if partner_idx is global_idx else train.batch(shard(partner_idx, acc))
        if factor_views is not None:  # values drawn for the global batch, then sharded like it
            values = draw_factors(factor_views.names, len(global_idx), ssl.seed, step)
            partners = factor_views.render(shard(partner_idx, acc), shard(values, acc))
        return step_fn(train.batch(idx), step, train.labels[idx].long(), partners)

    return one_step


def _record(step_fn: SSLStep, per_epoch: int) -> RecordFn:
    """The metrics record of an encoder training: step, epoch, lr, throughput and the last step's logs."""

    def record(step: int, window: list[dict[str, float]], rate: float) -> StepRecord:
        lr = step_fn.scheduler.get_last_lr()[0]
        processes = step_fn.accelerator.num_processes  # what the throughput ran on
        terms = dict(window[-1])
        return StepRecord(step=step, epoch=step / per_epoch, lr=lr, images_per_s=rate, processes=processes,
                          loss=terms.pop("loss"), terms=terms)

    return record
