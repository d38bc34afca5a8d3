"""The encoder: input normalisation + widened ResNet trunk + projector, with every layer addressable by name.

Layer names (docs/DESIGN.md, "Definitions", Layers): ``stage1..stage3`` (pooled earlier stages, GR
Figure 2), ``trunk`` (pooled trunk output, dimension D), ``head1..headK`` (projector layers; ``headK`` is
what the SSL loss sees).
Bundles are a directory with ``config.json`` + ``model.safetensors``; nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rcdm_viz.checks import require_finite
from rcdm_viz.config import EncoderConfig
from rcdm_viz.encoders.projector import HeadSpec, Projector, parse_head
from rcdm_viz.encoders.resnet import STAGE_NAMES, Arch, ResNetTrunk
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.layers import TRUNK, LayerVocabulary
from rcdm_viz.runs import atomic_write, atomic_write_text

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_BUNDLE_FORMAT = "rcdm_viz.encoder/1"
# Bundles of other architectures, by their config's "arch" (rcdm_viz.encoders.efficientnet adds its own);
# any other arch is the ResNet Encoder's.
ARCH_CLASSES: dict[str, Any] = {}


def _channel_triple(values: Sequence[float], name: str, positive: bool) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}") from None
    if len(triple) != 3 or (positive and min(triple) <= 0):
        raise ValueError(f"{name} must be 3 {'positive ' if positive else ''}numbers, got {values!r}")
    return triple  # type: ignore[return-value]


class Encoder(nn.Module):
    """Normalisation + ResNet trunk (last block D wide) + projector; forward returns named layers.

    Args:
        arch: "resnet18" or "resnet50".
        width: D, channels of the trunk's last block.
        head: projector spec ("8192-8192-8192", "linear:32", "none").
        base_width: stem channels; stage widths scale with it (64 = torchvision).
        small_input: CIFAR-style stem for 32-64 px images.
        mean, std: per-channel normalisation applied inside forward (inputs are in [0, 1]).
        resolution: the image side the encoder is meant for (recorded for users of the bundle).
    """

    def __init__(
        self,
        arch: Arch | str = "resnet50",
        width: int = 2048,
        head: str | HeadSpec = "8192-8192-8192",
        *,
        base_width: int = 64,
        small_input: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resolution: int = 224,
    ) -> None:
        super().__init__()
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        self.head_spec = head if isinstance(head, HeadSpec) else parse_head(head)
        self.mean = _channel_triple(mean, "mean", positive=False)
        self.std = _channel_triple(std, "std", positive=True)
        self.resolution = resolution
        self.trunk = ResNetTrunk(arch, width, base_width=base_width, small_input=small_input)
        self.projector = Projector(width, self.head_spec)
        # Non-persistent: they follow .to(device) but stay out of the weights file (they are config).
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    # ----------------------------------------------------------------------------------------- names
    @property
    def vocabulary(self) -> LayerVocabulary:
        """This encoder's layer names (rcdm_viz.layers): stages, trunk, one head per projector layer."""
        return LayerVocabulary(n_heads=len(self.projector.layer_names))

    @property
    def layer_names(self) -> list[str]:
        """["trunk", "head1", ..., "headK"]: the layers of the guillotine, shallow to deep."""
        return self.vocabulary.guillotine

    @property
    def all_layer_names(self) -> list[str]:
        """["stage1", "stage2", "stage3"] + layer_names."""
        return self.vocabulary.names

    @property
    def layer_dims(self) -> dict[str, int]:
        """Feature dimension of every name in ``all_layer_names``."""
        return {**self.trunk.stage_dims, **self.projector.layer_dims}

    @property
    def embedding_layer(self) -> str:
        """The layer the SSL loss sees (headK, or trunk when there is no projector)."""
        return self.layer_names[-1]

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``Encoder(**encoder.config)`` rebuilds the architecture."""
        return {
            "arch": self.trunk.arch.value,
            "width": self.trunk.width,
            "head": self.head_spec.to_string(),
            "base_width": self.trunk.base_width,
            "small_input": self.trunk.small_input,
            "mean": list(self.mean),
            "std": list(self.std),
            "resolution": self.resolution,
        }

    # --------------------------------------------------------------------------------------- names
    def select_layers(self, spec: str | Sequence[str] | None = "all", stages: bool = False) -> list[str]:
        """The layer vocabulary of every command: ``"all"`` (or None) -> ``layer_names``, with
        ``stage1..3`` in front when ``stages``; ``"trunk,head2"`` or a list of names -> those names,
        checked. An unknown name or an empty selection is a one-line error naming the valid layers."""
        if spec is None or spec == "all":
            return list(self.all_layer_names if stages else self.layer_names)
        names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        names = [n for n in names if n]
        if not names:
            raise RcdmVizError(f"no layers selected by {spec!r}")
        self._check_names(names)
        return names

    def _check_names(self, names: Sequence[str]) -> None:
        valid = self.all_layer_names
        for name in names:
            if name not in valid:
                raise RcdmVizError(f"unknown layer '{name}'; this encoder has: {', '.join(valid)}")

    # --------------------------------------------------------------------------------------- forward
    def _resolve(self, layers: Sequence[str] | str | None) -> list[str]:
        if layers is None:
            return self.layer_names
        names = [layers] if isinstance(layers, str) else list(layers)
        self._check_names(names)
        return names

    def forward(self, x: Tensor, layers: Sequence[str] | str | None = None) -> dict[str, Tensor]:
        """Named layer outputs of images ``x`` [N, 3, H, W] with values in [0, 1].

        Normalisation happens here. Only the modules the requested layers need are run (e.g. "trunk"
        never runs the projector; "stage1" never runs layer2..layer4).

        Args:
            layers: names from ``all_layer_names``; None means all of ``layer_names``.
        Returns:
            {name: [N, layer_dims[name]]} in the order requested.
        """
        names = self._resolve(layers)
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"encoder input must be float images [N, 3, H, W] in [0, 1], got {tuple(x.shape)} {x.dtype}"
            )
        x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        if not names:
            return {}
        heads = [n for n in names if n not in STAGE_NAMES]
        # Run the trunk only as deep as the deepest requested stage (all of it if any head is wanted).
        upto = TRUNK if heads else max(names, key=STAGE_NAMES.index)
        out = self.trunk.forward_stages(x, upto)
        if heads:
            out.update(self.projector(out[TRUNK], heads))
        return {name: out[name] for name in names}

    @classmethod
    def from_config(cls, enc: EncoderConfig, resolution: int) -> Encoder:
        """The (untrained) encoder ``enc`` describes, for inputs of ``resolution`` pixels."""
        return cls(
            arch=enc.arch,
            width=enc.width,
            head=enc.head,
            base_width=enc.base_width,
            small_input=enc.small_input,
            resolution=resolution,
        )

    @classmethod
    def from_state_dict(cls, config: dict[str, Any], state: dict[str, Tensor]) -> Encoder:
        """``Encoder(**config)`` holding exactly ``state`` (strict), in eval mode on CPU.

        The modules are built on the meta device and the tensors of ``state`` assigned to them, so large
        heads (e.g. 8192-wide) are never randomly initialised only to be overwritten.
        """
        with torch.device("meta"):
            encoder = cls(**config)
        encoder.load_state_dict(state, strict=True, assign=True)
        # The normalisation buffers are config, not weights: rebuild them on CPU.
        encoder._mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
        encoder._std = torch.tensor(encoder.std).view(1, 3, 1, 1)
        return encoder.eval()

    # ------------------------------------------------------------------------------------ utilities
    def num_params(self) -> int:
        """Number of parameters (trunk + projector)."""
        return sum(p.numel() for p in self.parameters())

    def _cpu_state(self) -> dict[str, Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

    def fingerprint(self) -> str:
        """Short sha256 (16 hex chars) over the config and every weight/buffer (name, dtype, shape, bytes).

        Feature caches and decoders store it to notice that the encoder behind them changed.
        """
        digest = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        for key, tensor in sorted(self._cpu_state().items()):
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle ``path/{config.json, model.safetensors}``; returns ``path``.

        Each file is written to a temporary name in ``path`` and moved into place with os.replace, so a
        reader never sees a half-written file. The weights go first and also carry the config in their
        metadata, so that ``load_encoder`` detects a pair left inconsistent by an interrupted save.
        Other files in ``path`` (metrics, probes) are left alone.
        """
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        config_text = json.dumps({"format": _BUNDLE_FORMAT, **self.config}, indent=2, sort_keys=True)
        state = self._cpu_state()
        atomic_write(target / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), {"config": config_text}))
        atomic_write_text(target / CONFIG_FILE, config_text + "\n")
        return target


def load_encoder(path: str | os.PathLike[str]) -> Encoder:
    """Load a bundle written by ``Encoder.save``; returns the encoder on CPU in eval mode.

    Raises RcdmVizError naming ``path`` if it is missing, incomplete, or inconsistent.
    """
    root = Path(path)
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not root.is_dir() or not config_path.is_file() or not weights_path.is_file():
        raise RcdmVizError(
            f"no encoder bundle at {str(root)!r} (expected a directory with {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        config_text = config_path.read_text().strip()
        config = json.loads(config_text)
        fmt = config.pop("format", None) if isinstance(config, dict) else None
        if fmt != _BUNDLE_FORMAT:
            raise RcdmVizError(f"{str(config_path)!r} has format {fmt!r}, expected {_BUNDLE_FORMAT!r}")
        encoder = ARCH_CLASSES.get(config.get("arch"), Encoder)(**config)
        state = load_file(weights_path, device="cpu")
        # Metadata is absent on files written by other tools; only a present, different config is an error.
        with safe_open(weights_path, framework="pt") as f:
            saved = (f.metadata() or {}).get("config")
        if saved is not None and json.loads(saved) != {"format": fmt, **config}:
            raise RcdmVizError(
                f"{str(root)!r}: {CONFIG_FILE} and {WEIGHTS_FILE} disagree (interrupted save?)"
            )
        encoder.load_state_dict(state, strict=True)
    except RcdmVizError:
        raise
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as err:
        raise RcdmVizError(f"cannot load encoder bundle {str(root)!r}: {err}") from None
    require_finite(encoder, f"the encoder bundle {str(root)!r}")
    return encoder.eval()
