"""Warm starts: a decoder whose UNet starts from a trained one (``decoder.init_from``).

RCDM injects the representation through an MLP whose last layer is zero-initialised, so a decoder whose
UNet (and null embedding) come from a trained model begins as that model's unconditional sampler and
learns only what the representation adds. ``decoder.init_from`` names where the UNet comes from:

- ``none``: nothing, RCDM's training from scratch;
- a shipped prior (``rcdm_viz.decoder.priors``, e.g. ``scene-prior``), sha256-checked;
- a trained decoder directory (``decoders/<layer>/`` of any run), or a run directory (its ``decoders/prior``,
  else ``decoders/all``, else its only decoder);
- a diffusers ``UNet2DModel`` directory (``save_pretrained`` layout with safetensors weights, or a pipeline
  directory holding ``unet/``): the decoder then takes that UNet's shape.

The UNet weights and the null embedding are copied; the representation MLPs keep their zero last layer,
whose bias is set to the null embedding, and the layer embedding stays zero, so at step 0 every condition
equals the null embedding and the decoder samples exactly what its source samples unconditionally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from rcdm_viz.config import DecoderConfig
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.priors import PRIORS, WEIGHTS_FILE, file_sha256, verified_prior
from rcdm_viz.errors import RcdmVizError

NO_INIT = "none"
_PREFERRED = ("prior", "all")  # a run directory's decoders, in the order a warm start takes them
# RCDMDecoder config fields a warm start must agree on (shape and noise schedule), as DecoderConfig names them
_ARCH_FIELDS = ("resolution", "block_out_channels", "layers_per_block", "attention_resolutions",
                "norm_num_groups", "num_train_timesteps", "beta_schedule", "prediction_type")


@dataclass(frozen=True)
class InitSource:
    """Resolved ``decoder.init_from``: what the UNet starts from."""

    label: str  # as the user named it (a shipped prior's name, or the path given)
    root: Path  # the model directory (config.json + WEIGHTS_FILE)
    sha256: str  # of the weights file
    config: dict[str, Any]  # the model's config.json
    plain_unet: bool  # a diffusers UNet2DModel rather than an RCDMDecoder

    def record(self) -> dict[str, str]:
        """What a decoder records of its start (config.json ``warm_start``, metrics, checkpoints)."""
        return {"source": self.label, "sha256": self.sha256}


def _model_dir(path: Path) -> Path:
    """The model directory inside ``path``: itself, a pipeline's ``unet/``, or a run's decoder."""
    if (path / "config.json").is_file():
        return path
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    decoders = path / "decoders"
    found = sorted(p.name for p in decoders.iterdir() if (p / "config.json").is_file()) \
        if decoders.is_dir() else []
    for name in _PREFERRED:
        if name in found:
            return decoders / name
    if len(found) == 1:
        return decoders / found[0]
    if found:
        raise RcdmVizError(f"decoder.init_from: run {str(path)!r} has several decoders ({', '.join(found)}); "
                           "name one, e.g. its decoders/<layer>/")
    raise RcdmVizError(f"decoder.init_from: {str(path)!r} is no decoder, run or UNet2DModel directory "
                       f"(no config.json); shipped priors: {', '.join(sorted(PRIORS)) or 'none'}")


def resolve_init(value: str) -> InitSource | None:
    """``decoder.init_from`` -> its source (None for ``none``), checked before anything is trained."""
    if value == NO_INIT:
        return None
    if value in PRIORS:
        root, digest = verified_prior(value)
    else:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise RcdmVizError(f"decoder.init_from {value!r} is neither a shipped prior "
                               f"({', '.join(sorted(PRIORS)) or 'none'}), nor a directory, nor 'none'")
        root = _model_dir(path)
        if not (root / WEIGHTS_FILE).is_file():
            raise RcdmVizError(f"decoder.init_from: {str(root)!r} has no {WEIGHTS_FILE} (only safetensors "
                               "weights are loaded; convert a .bin with diffusers' save_pretrained)")
        digest = file_sha256(root / WEIGHTS_FILE)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RcdmVizError(f"decoder.init_from: cannot read {root / 'config.json'} ({exc})") from None
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind not in (RCDMDecoder.__name__, "UNet2DModel"):
        raise RcdmVizError(f"decoder.init_from: {str(root)!r} holds a {kind!r}, "
                           "not an RCDMDecoder or UNet2DModel")
    return InitSource(value, root, digest, config, plain_unet=kind == "UNet2DModel")


def _arch_of(dec: DecoderConfig) -> dict[str, Any]:
    return {name: getattr(dec, name) for name in _ARCH_FIELDS} | {
        "beta_schedule": dec.beta_schedule.value, "prediction_type": dec.prediction_type.value}


def _first_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    for name, value in ours.items():
        other = theirs.get(name)
        if (list(value) if isinstance(value, tuple) else value) != (
                list(other) if isinstance(other, tuple | list) else other):
            return f"decoder.{name} is {_show(value)} here but {_show(other)} in the source"
    return None


def _show(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def build_warm_decoder(
    dec: DecoderConfig, layer_dims: dict[str, int], fingerprint: str | None, source: InitSource
) -> RCDMDecoder:
    """An untrained decoder for ``layer_dims`` with ``source``'s UNet shape, weights copied in
    (``warm_start``). An RCDMDecoder source must have the configured shape and noise schedule (else a
    one-line error naming the first differing field); a plain UNet2DModel source gives its own shape."""
    unet_config = source.config.get("unet_config") if not source.plain_unet else _unet_kwargs(source.config)
    if unet_config is None:
        diff = _first_difference(_arch_of(dec), source.config)
    else:
        size = unet_config.get("sample_size")
        diff = _first_difference({"resolution": dec.resolution}, {"resolution": size})
    if diff:
        raise RcdmVizError(f"decoder.init_from {source.label!r} does not fit: {diff}")
    decoder = RCDMDecoder.from_decoder_config(dec, layer_dims, fingerprint, unet_config=unet_config)
    warm_start(decoder, source)
    return decoder


def _unet_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """A UNet2DModel config.json as constructor keyword arguments (diffusers' bookkeeping keys dropped)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def warm_start(decoder: RCDMDecoder, source: InitSource) -> None:
    """Copy ``source``'s UNet weights (and null embedding) into ``decoder``; set each representation MLP's
    last bias to the null embedding (its weight stays zero); record the source in the decoder's config."""
    state = {k: v.float() for k, v in load_file(source.root / WEIGHTS_FILE).items()}
    unet = state if source.plain_unet else {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
    try:
        missing, unexpected = decoder.unet.load_state_dict(unet, strict=False)
    except RuntimeError as exc:  # a shape mismatch: name the first tensor
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise RcdmVizError(f"decoder.init_from {source.label!r} does not fit: {detail[:200]}") from None
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise RcdmVizError(f"decoder.init_from {source.label!r} does not fit: UNet weight {name!r} is "
                           f"{'missing from the source' if missing else 'not in this decoder'}")
    with torch.no_grad():
        if "null_embedding" in state:
            decoder.null_embedding.copy_(state["null_embedding"])
        for mlp in decoder.rep_mlps.values():
            mlp[-1].bias.copy_(decoder.null_embedding)
    decoder.register_to_config(warm_start=source.record())
