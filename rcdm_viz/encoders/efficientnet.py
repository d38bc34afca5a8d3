"""EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``), an ImageNet classifier, as an rcdm-viz encoder.

Same interface as ``Encoder`` (named layers, ``config``, ``fingerprint``, bundle ``save``), so probes,
decoders and grids use it unchanged. Layers, shallow to deep (names as the ResNet encoder's):

- ``stage1..stage3``: pooled outputs of the blocks at strides 4, 8, 16 (24, 40, 112 channels);
- ``trunk``: pooled features after the 1x1 head convolution (1280), what the classifier reads;
- ``head1``: the 1000 ImageNet logits.

Inputs are in [0, 1]; ``forward`` scales them with the bundle's mean / std (0.5: inputs in [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcdm_viz.encoders.encoder import ARCH_CLASSES, Encoder, _channel_triple
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.layers import STAGES, TRUNK, LayerVocabulary

ARCH = "efficientnet-lite0"
_TIMM_NAME = "tf_efficientnet_lite0"
# stage name -> index of the last timm block group it includes (strides 4, 8, 16)
_STAGES = dict(zip(STAGES, (1, 2, 4), strict=True))
_VOCABULARY = LayerVocabulary(n_heads=1)
_STAGE_DIMS = dict(zip(STAGES, (24, 40, 112), strict=True))
WIDTH, CLASSES = 1280, 1000
_CHUNK = 16  # images per pass: measured 25 ms/img at 8-16 vs 44 at 64 (224 px, one CPU thread)


class EfficientNetEncoder(nn.Module):
    """timm ``tf_efficientnet_lite0`` with its layers addressable by name (see the module docstring)."""

    def __init__(
        self,
        arch: str = ARCH,
        width: int = WIDTH,
        head: str = f"linear:{CLASSES}",
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        resolution: int = 224,
    ) -> None:
        super().__init__()
        import timm

        if (arch, width, head) != (ARCH, WIDTH, f"linear:{CLASSES}"):
            got = f"{arch} {width} {head}"
            raise RcdmVizError(f"{ARCH} has width {WIDTH} and head linear:{CLASSES}, got {got!r}")
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 32:
            raise RcdmVizError(f"resolution must be an integer >= 32, got {resolution!r}")
        self.mean = _channel_triple(mean, "mean", positive=False)
        self.std = _channel_triple(std, "std", positive=True)
        self.resolution = resolution
        self.net = timm.create_model(_TIMM_NAME, pretrained=False, num_classes=CLASSES)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @property
    def layer_names(self) -> list[str]:
        return _VOCABULARY.guillotine

    @property
    def all_layer_names(self) -> list[str]:
        return _VOCABULARY.names

    @property
    def layer_dims(self) -> dict[str, int]:
        return {**_STAGE_DIMS, TRUNK: WIDTH, _VOCABULARY.last_head: CLASSES}

    @property
    def embedding_layer(self) -> str:
        return _VOCABULARY.last_head

    @property
    def config(self) -> dict[str, Any]:
        return {
            "arch": ARCH,
            "width": WIDTH,
            "head": f"linear:{CLASSES}",
            "mean": list(self.mean),
            "std": list(self.std),
            "resolution": self.resolution,
        }

    def forward(self, x: Tensor, layers: Sequence[str] | str | None = None) -> dict[str, Tensor]:
        """Named layer outputs {name: [N, dim]} of images [N, 3, H, W] in [0, 1], running only as deep
        as the deepest requested layer."""
        names = self.layer_names if layers is None else [layers] if isinstance(layers, str) else list(layers)
        self._check_names(names)
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"encoder input must be float images [N, 3, H, W] in [0, 1], got {tuple(x.shape)} {x.dtype}"
            )
        if len(x) > _CHUNK:  # large batches of 224-px images run several times slower per image on CPU
            parts = [self(chunk, names) for chunk in x.split(_CHUNK)]
            return {name: torch.cat([p[name] for p in parts]) for name in names}
        net, out = self.net, {}
        deep = any(n not in _STAGES for n in names)
        stop = len(net.blocks) - 1 if deep else max((_STAGES[n] for n in names), default=-1)
        h = net.bn1(net.conv_stem((x - self._mean.to(x.dtype)) / self._std.to(x.dtype))) if stop >= 0 else x
        for index, block in enumerate(net.blocks[: stop + 1]):
            h = block(h)
            out.update({s: h.mean(dim=(2, 3)) for s, last in _STAGES.items() if last == index and s in names})
        if deep:
            out[TRUNK] = net.global_pool(net.bn2(net.conv_head(h))).flatten(1)
            if _VOCABULARY.last_head in names:
                out[_VOCABULARY.last_head] = net.classifier(out[TRUNK])
        return {name: out[name] for name in names}

    @classmethod
    def from_state_dict(cls, config: dict[str, Any], state: dict[str, Tensor]) -> EfficientNetEncoder:
        """The encoder (eval, CPU) holding ``state``: timm's keys, or ours (``net.`` + timm's)."""
        encoder = cls(**config)
        if not any(k.startswith("net.") for k in state):
            state = {f"net.{k}": v for k, v in state.items()}
        encoder.load_state_dict(state, strict=True)
        return encoder.eval()

    # The layer vocabulary, bundles, fingerprints and sizes work exactly as for the ResNet encoder (they
    # read only the layer names, config and state).
    select_layers = Encoder.select_layers
    _check_names = Encoder._check_names
    num_params = Encoder.num_params
    _cpu_state = Encoder._cpu_state
    fingerprint = Encoder.fingerprint
    save = Encoder.save


ARCH_CLASSES[ARCH] = EfficientNetEncoder  # load_encoder builds bundles of this arch with it
