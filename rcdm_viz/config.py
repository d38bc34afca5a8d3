"""Every default of rcdm-viz, in one typed place.

Defaults follow the papers (E/N = Expand or Narrow, GR = Guillotine Regularization, RCDM = Bordes et al.
2022). YAML presets in ``rcdm_viz/presets/`` hold only differences from these; an override ``a.b=c``
changes a single field. Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rcdm_viz.choices import (
    BetaSchedule,
    DataSource,
    Distance,
    Method,
    Optimizer,
    Precision,
    PredictionType,
    ProbeSolver,
    SamplerName,
    parse_enum,
)
from rcdm_viz.errors import RcdmVizError, shown
from rcdm_viz.field_rules import above, at_least, between, check_fields, each, finite_number
from rcdm_viz.layers import LayerVocabulary

__all__ = [  # the choices live in rcdm_viz.choices; importing them from here keeps working
    "BetaSchedule", "DataSource", "Distance", "Method", "Optimizer", "Precision", "PredictionType",
    "ProbeSolver", "SamplerName", "parse_enum",
]

# Package data, found through importlib.resources so that every install (editable or a wheel) has them.
PRESETS_DIR = Path(str(resources.files("rcdm_viz").joinpath("presets")))


@dataclass(frozen=True)
class DataConfig:
    """Training/validation images."""

    source: DataSource = DataSource.SYNTHETIC  # the embedded synthetic scenes need no download
    resolution: int = 64  # image side in pixels the encoder sees
    n_train: int = 50_000  # number of training images
    n_val: int = 5_000  # number of validation images (probes, held-out samples)
    seed: int = 0  # dataset seed: image i is a pure function of (seed, split, i, resolution)
    root: str = ""  # image folder (source folder) or cache directory (source cache)
    decode_workers: int = 0  # threads decoding an image folder (0 = one per CPU core)

    def __post_init__(self) -> None:
        check_fields("data", self, {
            "resolution": at_least(8), "n_train": at_least(1), "n_val": at_least(1), "seed": at_least(0),
            "decode_workers": at_least(0),
        })


@dataclass(frozen=True)
class EncoderConfig:
    """Trunk + projector (docs/DESIGN.md, "Definitions": "Widened trunk", "Projector")."""

    arch: str = "resnet50"  # resnet50 (papers) or resnet18 (small CPU trunk)
    width: int = 2048  # D, channels of the trunk's last block (E/N: 512 .. 32768)
    head: str = "8192-8192-8192"  # projector dims (E/N, VICReg); "linear:K" or "none" also accepted
    base_width: int = 64  # width of the first stage; 64 = torchvision, smaller for CPU work
    small_input: bool = False  # CIFAR-style stem (3x3 conv, no max-pool) for 32-64 px inputs

    def __post_init__(self) -> None:
        check_fields("encoder", self, {"width": at_least(1), "base_width": at_least(1)})


@dataclass(frozen=True)
class ViewsConfig:
    """SSL augmentations (BYOL/VICReg recipe; E/N: crop, flip, colour jitter, grayscale, solarize)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range
    size: int | None = None  # output side in pixels; None keeps the input size
    flip_p: float = 0.5  # horizontal flip probability
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8  # colour jitter probability
    jitter_random_order: bool = True  # per-sample random order of the jitter parts (as torchvision)
    gray_p: float = 0.2  # grayscale probability
    blur_p: tuple[float, float] = (1.0, 0.1)  # Gaussian blur probability, view 1 and view 2
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels
    blur_reference_side: int | None = None  # if set, blur_sigma is meant at this side and scales with it
    solarize_p: tuple[float, float] = (0.0, 0.2)  # solarize probability, view 1 and view 2
    # synthetic scenes: factors the second view re-renders with fresh values (docs/DESIGN.md "Factor views")
    redraw_factors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def need(ok: bool, name: str) -> None:
            if not ok:
                raise RcdmVizError(f"bad value {getattr(self, name)!r} for 'views.{name}'")

        need(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale")
        need(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio")
        need(self.size is None or self.size >= 1, "size")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            need(all(0.0 <= v <= 1.0 for v in (value if isinstance(value, tuple) else (value,))), name)
        need(all(v >= 0 for v in self.jitter) and self.jitter[3] <= 0.5, "jitter")
        need(0 < self.blur_sigma[0] <= self.blur_sigma[1], "blur_sigma")
        need(self.blur_reference_side is None or self.blur_reference_side >= 1, "blur_reference_side")


@dataclass(frozen=True)
class SSLConfig:
    """Encoder training (E/N appendix: batch 512, 100 epochs)."""

    method: Method = Method.SIMCLR  # SSL objective
    temperature: float = 0.15  # SimCLR temperature (E/N)
    sim_coeff: float = 25.0  # VICReg invariance coefficient
    std_coeff: float = 25.0  # VICReg variance coefficient
    cov_coeff: float = 1.0  # VICReg covariance coefficient
    barlow_lambda: float = 0.0051  # Barlow Twins off-diagonal weight (Zbontar et al.)
    byol_momentum: float = 0.996  # BYOL target EMA momentum at step 0, raised to 1 by a cosine (Grill et al.)
    byol_predictor_hidden: int = 4096  # BYOL predictor MLP hidden width (Grill et al.)
    reference_encoder: str = ""  # encoder bundle whose trunk defines neighbour positives (simclr_neighbour)
    batch_size: int = 512  # global batch size (images; each gives two views)
    epochs: int = 100  # passes over the training set
    optimizer: Optimizer = Optimizer.ADAMW  # adamw (GR) or lars (E/N presets)
    lr: float = 1e-3  # peak learning rate after warm-up, scaled linearly with batch/256 (E/N LARS: 0.5)
    weight_decay: float = 1e-6  # weight decay (E/N: 1e-6 SimCLR and supervised, 1e-4 VICReg)
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017; VICReg/Barlow Twins code)
    lars_momentum: float = 0.9  # LARS (SGD) momentum
    warmup_epochs: float = 10.0  # linear warm-up, then cosine decay to 0
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch when several GPUs train
    online_probes: bool = True  # linear classifier per layer on detached features, logged as probe/<layer>
    probe_lr: float = 1e-3  # AdamW learning rate of the online probes (no weight decay)
    precision: Precision = Precision.AUTO  # autocast dtype; auto = bf16 where native, else fp32
    seed: int = 0  # seed of initialisation, data order and views
    log_every: int = 20  # steps between metrics.jsonl records
    checkpoint_every: int = 1000  # steps between resumable checkpoints
    keep_checkpoints: int = 2  # how many checkpoints to keep

    def __post_init__(self) -> None:
        check_fields("ssl", self, {
            "temperature": above(0), "sim_coeff": at_least(0), "std_coeff": at_least(0),
            "cov_coeff": at_least(0), "barlow_lambda": at_least(0), "byol_momentum": between(0, 1),
            "byol_predictor_hidden": at_least(1), "batch_size": at_least(2), "epochs": at_least(1),
            "lr": above(0), "weight_decay": at_least(0), "lars_eta": above(0), "lars_momentum": between(0, 1),
            "warmup_epochs": at_least(0), "probe_lr": above(0), "seed": at_least(0), "log_every": at_least(1),
            "checkpoint_every": at_least(1), "keep_checkpoints": at_least(1),
        })


@dataclass(frozen=True)
class ProbeConfig:
    """Probes on frozen features (E/N: linear probe by AdamW, lr 1e-4, wd 0.04, batch 1024, 100 epochs)."""

    solver: ProbeSolver = ProbeSolver.LBFGS  # linear-probe solver; lbfgs >= adamw measured (docs/RESULTS.md)
    epochs: int = 100  # adamw: passes over the cached training features
    lr: float = 1e-4  # adamw: learning rate
    weight_decay: float = 0.04  # adamw: weight decay
    batch_size: int = 1024  # adamw: probe batch size
    l2: float = 1e-2  # lbfgs: L2 penalty (l2 / 2) * |W|^2 on the mean cross-entropy (docs/RESULTS.md)
    lbfgs_steps: int = 100  # lbfgs: maximum iterations (full batch, strong-Wolfe); 200 gave the same acc
    mlp_hidden: int = 512  # MLP probe (E/N Figure 8: 3 layers): hidden width (E/N do not give it)
    mlp_epochs: int = 10  # MLP probe: AdamW epochs, cosine decay (0 skips the MLP probe)
    mlp_lr: float = 1e-3  # MLP probe: AdamW learning rate
    knn_k: int = 20  # kNN probe: neighbours (Wu et al. 2018, DINO: 20)
    knn_temperature: float = 0.07  # kNN probe: vote weight exp(cos / T) (Wu et al. 2018, DINO)
    # factor regression (GR Figure 2): ridge penalties on standardized features, one chosen per factor on
    # held-out training images (a single value fixes it)
    ridge: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    ridge_holdout: float = 0.2  # factor regression: fraction of the training images that chooses the penalty
    rankme_n: int = 4096  # RankMe (Garrido et al. 2023): training images used (rank <= min(n, D))
    invariance_images: int = 256  # validation images of the encoder invariance scores (docs/DESIGN.md)
    n_train: int = 0  # training images for the probe (0 = all of data.n_train)

    def __post_init__(self) -> None:
        check_fields("probe", self, {
            "epochs": at_least(1), "lr": above(0), "weight_decay": at_least(0), "batch_size": at_least(1),
            "l2": at_least(0), "lbfgs_steps": at_least(1), "mlp_hidden": at_least(1),
            "mlp_epochs": at_least(0), "mlp_lr": above(0), "knn_k": at_least(1), "knn_temperature": above(0),
            "rankme_n": at_least(1), "invariance_images": at_least(2), "n_train": at_least(0),
        })
        if not self.ridge or not all(finite_number(r) and r > 0 for r in self.ridge):
            raise RcdmVizError(f"bad value {self.ridge!r} for 'probe.ridge' (one or more penalties > 0)")
        if not 0 < self.ridge_holdout < 1:
            raise RcdmVizError(f"bad value {self.ridge_holdout!r} for 'probe.ridge_holdout' (in (0, 1))")


@dataclass(frozen=True)
class DecoderConfig:
    """RCDM decoder (RCDM at 128 px: 256 channels, 2 res blocks, attention 32/16/8, 1000 linear steps)."""

    resolution: int = 128  # decoder image side (independent of the encoder's input size)
    block_out_channels: tuple[int, ...] = (256, 256, 512, 768, 1024)  # ADM 128-px channel_mult 1,1,2,3,4
    layers_per_block: int = 2  # res blocks per level
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes that get self-attention
    norm_num_groups: int = 32  # GroupNorm groups
    num_train_timesteps: int = 1000  # diffusion steps
    beta_schedule: BetaSchedule = BetaSchedule.LINEAR  # noise schedule (RCDM: linear)
    prediction_type: PredictionType = PredictionType.EPSILON  # what the UNet predicts (RCDM: epsilon)
    p_uncond: float = 0.1  # probability of the null embedding (classifier-free guidance)
    snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting (Hang et al. 2023 use 5); 0 = RCDM's plain MSE
    # b >= 0: training timesteps drawn with density ~ (t / T)^b, toward the noise levels where the condition
    # decides the image (docs/RESULTS.md "Decoder fidelity"); 0 = uniform, as RCDM
    timestep_bias: float = 0.0
    batch_size: int = 64  # images per step
    steps: int = 100_000  # optimisation steps
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_steps: int = 500  # linear learning-rate warm-up
    ema_decay: float = 0.9999  # EMA of the weights used for sampling
    ema_warmup: bool = True  # diffusers EMAModel warm-up (decay ramps up), useful for short runs
    precision: Precision = Precision.AUTO  # autocast dtype; auto = bf16 where native, else fp32
    seed: int = 0  # seed of initialisation, batches, timesteps and noise
    # where the UNet starts: "none" (from scratch, as RCDM), a shipped prior (scene-prior), or a decoder,
    # run or diffusers UNet2DModel directory (docs/DESIGN.md, "Decoder": warm start)
    init_from: str = "none"
    log_every: int = 50  # steps between metrics.jsonl records
    checkpoint_every: int = 2000  # steps between resumable checkpoints
    keep_checkpoints: int = 2  # how many checkpoints to keep
    feature_batch_size: int = 256  # batch size when caching the frozen encoder's features
    binarize: bool = False  # condition on 1[x > 0], cached as packed bits (E/N Fig. 9: wide trunks lose ~0)
    grad_accum_steps: int = 1  # micro-batches per optimisation step (batch_size is split among them)
    channels_last: bool = False  # NHWC UNet; no clear gain on this CPU (benchmarks/decoder_step.py (c))
    # torch.compile the UNet (minutes of compilation, then ~1.4x the steps/s of a small UNet on a CPU):
    # for long trainings such as a prior's
    compile: bool = False
    sample_every: int = 1000  # steps between progress samples in decoders/<layer>/progress/ (0 = never)
    progress_images: int = 4  # fixed validation images sampled for progress
    progress_steps: int = 25  # DDIM steps of the progress samples

    def __post_init__(self) -> None:
        check_fields("decoder", self, {
            "resolution": at_least(8), "block_out_channels": each(at_least(1), nonempty=True),
            "layers_per_block": at_least(1), "attention_resolutions": each(at_least(1)),
            "norm_num_groups": at_least(1), "num_train_timesteps": at_least(1), "p_uncond": between(0, 1),
            "snr_gamma": at_least(0), "timestep_bias": at_least(0), "batch_size": at_least(1),
            "steps": at_least(1), "lr": above(0), "weight_decay": at_least(0), "warmup_steps": at_least(0),
            "ema_decay": between(0, 1), "seed": at_least(0), "log_every": at_least(1),
            "checkpoint_every": at_least(1), "keep_checkpoints": at_least(1),
            "feature_batch_size": at_least(1), "grad_accum_steps": at_least(1), "sample_every": at_least(0),
            "progress_images": at_least(0), "progress_steps": at_least(1),
        })


@dataclass(frozen=True)
class SampleConfig:
    """Sampling grids."""

    n: int = 8  # samples per layer
    sampler: SamplerName = SamplerName.DDIM  # diffusers scheduler
    steps: int = 50  # sampling steps
    guidance: float = 1.0  # classifier-free guidance scale (1 = plain conditional sampling, as RCDM)
    seed: int = 0  # sample j of every row uses noise seeded by (seed, j)
    batch_size: int = 64  # UNet batch size while sampling

    def __post_init__(self) -> None:
        # guidance far outside [0, 100] only gives saturated (all-black) images
        check_fields("sample", self, {
            "n": at_least(1), "steps": at_least(1), "guidance": between(0, 100), "seed": at_least(0),
            "batch_size": at_least(1),
        })


@dataclass(frozen=True)
class ScoresConfig:
    """Decoder scores per layer (docs/DESIGN.md, "Invariance scores") and the factor oracle they use."""

    distance: Distance = Distance.AUTO  # perceptual distance; the output names the one used
    gallery: int = 256  # other (validation) images: retrieval gallery and the x' of the baselines
    oracle_n_train: int = 8192  # synthetic training images of the factor oracle
    oracle_steps: int = 1500  # oracle optimisation steps (AdamW, batch oracle_batch_size)
    oracle_batch_size: int = 128  # oracle batch size
    oracle_lr: float = 2e-3  # oracle AdamW learning rate (cosine decay)

    def __post_init__(self) -> None:
        check_fields("scores", self, {
            "gallery": at_least(2), "oracle_n_train": at_least(1), "oracle_steps": at_least(1),
            "oracle_batch_size": at_least(1), "oracle_lr": above(0),
        })


@dataclass(frozen=True)
class QuickstartConfig:
    """The one-command demo on synthetic scenes."""

    decoder_layers: tuple[str, ...] = tuple(LayerVocabulary(n_heads=3).guillotine)  # rows of the demo's grids
    shared_decoder: bool = True  # one decoder for all layers (`--layer all`) instead of one per layer
    n_images: int = 4  # held-out scenes sampled into grids

    def __post_init__(self) -> None:
        check_fields("quickstart", self, {"n_images": at_least(1)})


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)
    quickstart: QuickstartConfig = field(default_factory=QuickstartConfig)
    presets: tuple[str, ...] = ()  # the presets merged into this config, in order (a record, not a setting)


# ---------------------------------------------------------------------------------------------------------
# Loading, merging, dumping


def available_presets() -> list[str]:
    """Names of the YAML presets shipped in ``rcdm_viz/presets/``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_summary(path: Path) -> str:
    """A preset's first comment line: its one-sentence summary."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def presets_table() -> str:
    """Every shipped preset with its summary, one a line."""
    names = available_presets()
    width = max(map(len, names), default=0)
    return "\n".join(f"{name:<{width}}  {preset_summary(PRESETS_DIR / f'{name}.yaml')}" for name in names)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return parse_enum(tp, value, key)
    if origin is tuple:
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise RcdmVizError(f"'{key}' expects a list, got {shown(value)}")
        args = typing.get_args(tp)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise RcdmVizError(f"'{key}' expects {len(item_types)} values, got {shown(value)}")
        pairs = enumerate(zip(value, item_types, strict=True))
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in pairs)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RcdmVizError(f"'{key}' expects true/false, got {shown(value)}")
    if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            number = float(value)  # PyYAML (YAML 1.1) reads 1e-4 as a string
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):
            raise RcdmVizError(f"'{key}' expects a finite number, got {shown(value)}")
        if number is not None:
            return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise RcdmVizError(f"'{key}' expects {getattr(tp, '__name__', tp)}, got {shown(value)}")


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with ``updates`` applied; unknown keys are errors."""
    if not isinstance(updates, dict):
        raise RcdmVizError(f"'{prefix.rstrip('.') or 'config'}' expects a mapping, got {shown(updates)}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise RcdmVizError(f"unknown config key '{full}'; valid keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(obj, **changes)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"a.b=c"`` into ``{"a": {"b": <yaml value of c>}}``."""
    if "=" not in text:
        raise RcdmVizError(f"an override is key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an int of over 4300 digits
        raise RcdmVizError(f"override {key.strip()}: cannot parse the value {shown(raw)}") from None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:  # UnicodeDecodeError is a ValueError
        raise RcdmVizError(f"cannot read config file '{path}': {unreadable_reason(exc)}") from None
    if not isinstance(data, dict):
        raise RcdmVizError(f"config file '{path}' must hold a mapping")
    return data


def unreadable_reason(exc: BaseException) -> str:
    """Why a config file is unreadable, without quoting its content (a YAML error echoes the line)."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"invalid YAML at line {exc.problem_mark.line + 1}: {exc.problem}"
    if isinstance(exc, yaml.YAMLError | RecursionError | ValueError):
        return "invalid YAML" if isinstance(exc, yaml.YAMLError) else "nested too deeply or a number too long"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def read_config_file(path: Path) -> dict[str, Any]:
    """A config YAML file (a preset, or a run's config.yaml) as a dict, or a one-line error."""
    return _read_yaml(Path(path))


def preset_path(name: str) -> Path:
    """Path of a named preset, or a YAML file given by path."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        if not as_path.is_file():
            raise RcdmVizError(f"config file '{name}' does not exist")
        return as_path
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RcdmVizError(f"unknown preset '{name}'; available: {', '.join(available_presets())}")
    return path


def load_config(
    preset: str | list[str] | None = None, overrides: list[str] | None = None, base: Config | None = None
) -> Config:
    """Defaults (or ``base``) <- presets, merged left to right (names in rcdm_viz/presets/ or YAML paths)
    <- overrides ("a.b=c"); ``Config.presets`` records the presets merged."""
    cfg = base if base is not None else Config()
    for name in [preset] if isinstance(preset, str) else preset or []:
        data = _read_yaml(preset_path(name))
        if "presets" in data:
            raise RcdmVizError(f"preset '{name}': 'presets' is a record of the presets merged, not a setting")
        cfg = _merge(cfg, data)
        cfg = dataclasses.replace(cfg, presets=(*cfg.presets, name))
    for text in overrides or []:
        cfg = _merge(cfg, parse_override(text))
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. a run's config.yaml); unknown keys are errors."""
    return _merge(Config(), data)


def to_dict(obj: Any) -> Any:
    """A YAML/JSON-friendly dict of a config (enums as their values, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings joined into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
