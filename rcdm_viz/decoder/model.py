"""The representation-conditioned diffusion decoder (RCDM, Bordes et al., TMLR 2022).

RCDM is a fork of ADM (guided-diffusion, Dhariwal & Nichol 2021): a UNet whose residual blocks are
modulated by the sum of a timestep embedding and a conditioning embedding through adaptive GroupNorm
(``use_scale_shift_norm``: ``h = norm(h) * (1 + scale) + shift``).  RCDM replaces ADM's class embedding by
a projection of an SSL representation.  Here the UNet is diffusers' ``UNet2DModel`` with
``class_embed_type="identity"`` (the conditioning vector is added to the time embedding as is) and
``resnet_time_scale_shift="scale_shift"``; the projection, a null embedding for classifier-free guidance
(Ho & Salimans 2022) and, for the shared multi-layer decoder, a layer embedding live in this module.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import DDPMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from rcdm_viz.checks import require_finite
from rcdm_viz.config import DecoderConfig
from rcdm_viz.decoder.schedule import make_noise_scheduler
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.features import binarize as binarize_reps

# ADM (Dhariwal & Nichol 2021, Table 1 ablation) found 64 channels per attention head best.
_HEAD_CHANNELS = 64


def _unet_block_types(
    resolution: int, n_levels: int, attention_resolutions: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down/up block types: attention at a level iff its feature-map size is in ``attention_resolutions``.

    Resampling is done by residual blocks (ADM's ``resblock_updown=True``, which RCDM uses), hence the
    ``Resnet*`` block types for levels without attention and ``*_type="resnet"`` on the UNet.
    """
    level_res = [resolution // 2**i for i in range(n_levels)]
    attn = set(attention_resolutions)
    down = tuple("AttnDownBlock2D" if r in attn else "ResnetDownsampleBlock2D" for r in level_res)
    up = tuple("AttnUpBlock2D" if r in attn else "ResnetUpsampleBlock2D" for r in reversed(level_res))
    return down, up


def adm_unet_config(
    resolution: int, block_out_channels: tuple[int, ...], layers_per_block: int,
    attention_resolutions: tuple[int, ...], norm_num_groups: int, dropout: float = 0.0,
) -> dict:
    """``UNet2DModel`` keyword arguments of an ADM/RCDM UNet (scale-shift norm, resnet resampling)."""
    down, up = _unet_block_types(resolution, len(block_out_channels), attention_resolutions)
    return dict(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        downsample_type="resnet",
        upsample_type="resnet",
        dropout=dropout,
        attention_head_dim=math.gcd(_HEAD_CHANNELS, *block_out_channels),
        norm_num_groups=norm_num_groups,
        # diffusers drops the GroupNorm of the mid-block attention under scale_shift unless told;
        # ADM normalises before every attention block.
        attn_norm_num_groups=norm_num_groups,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )


def _check_config(
    layer_dims: dict[str, int], resolution: int, block_out_channels: tuple[int, ...], norm_num_groups: int
) -> None:
    """Raise RcdmVizError on a configuration the UNet cannot be built from (no layers = the prior)."""
    for name, dim in layer_dims.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"decoder layer name {name!r} must be a non-empty string without '.'")
        if int(dim) < 1:
            raise ValueError(f"decoder layer {name!r} has dimension {dim}; it must be >= 1")
    if not block_out_channels:
        raise ValueError("block_out_channels must name at least one level, got ()")
    factor = 2 ** (len(block_out_channels) - 1)
    if resolution < 1 or resolution % factor:
        raise ValueError(
            f"resolution {resolution} must be divisible by {factor} "
            f"({len(block_out_channels)} UNet levels, block_out_channels={tuple(block_out_channels)})"
        )
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ValueError(
            f"norm_num_groups {norm_num_groups} must divide every entry of block_out_channels "
            f"{tuple(block_out_channels)} (not {bad})"
        )


class RCDMDecoder(ModelMixin, ConfigMixin):
    """ADM-style UNet predicting the noise of ``x_t`` given a layer's representation of the clean image.

    ``layer_dims`` maps each layer the decoder is conditioned on to its representation dimension: one
    entry for a per-layer decoder, several for the shared decoder (which then adds a learned layer
    embedding), none for the *prior*, an unconditional model of the images (always the null embedding)
    that other decoders start from (``rcdm_viz.decoder.warm_start``).  ``unet_config`` builds the UNet
    from a given ``UNet2DModel`` config instead of the ADM shape; ``warm_start`` records what the weights
    started from (``{"source": ..., "sha256": ...}``).  ``encoder_fingerprint`` records which encoder
    produced the training representations; ``num_train_timesteps`` / ``beta_schedule`` /
    ``prediction_type`` record the noise schedule it was trained with, so that a saved decoder samples
    correctly on its own (``noise_scheduler()``).
    With ``binarize`` the decoder sees only 1[x > 0] of every representation (E/N §4.3, Figure 9), applied
    in ``condition``: callers pass raw representations and get what the decoder was trained on.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        layer_dims: dict[str, int],
        resolution: int = 32,
        *,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 2,
        attention_resolutions: tuple[int, ...] = (16, 8),
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        encoder_fingerprint: str | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        binarize: bool = False,
        unet_config: dict | None = None,
        warm_start: dict | None = None,
    ) -> None:
        super().__init__()
        if unet_config is None:
            block_out_channels = tuple(int(c) for c in block_out_channels)
            _check_config(layer_dims, resolution, block_out_channels, norm_num_groups)
            unet_config = adm_unet_config(resolution, block_out_channels, layers_per_block,
                                          tuple(attention_resolutions), norm_num_groups, dropout)
        else:  # a given UNet2DModel's shape (a warm start from a plain diffusers UNet)
            _check_config(layer_dims, 1, (1,), 1)
            if unet_config.get("sample_size") != resolution:
                raise ValueError(f"unet_config's sample_size {unet_config.get('sample_size')!r} is not the "
                                   f"decoder's resolution {resolution}")
            unet_config = {**unet_config, "class_embed_type": "identity", "num_class_embeds": None}
        self.unet = UNet2DModel(**unet_config)
        # The conditioning is added to the time embedding, so it has the width every resnet block reads.
        t_dim = self.time_embed_dim = self.unet.down_blocks[0].resnets[0].time_emb_proj.in_features
        self.rep_mlps = nn.ModuleDict(
            {name: self._make_mlp(int(dim), t_dim) for name, dim in layer_dims.items()}
        )
        self.null_embedding = nn.Parameter(torch.zeros(t_dim))
        # Layer-embedding rows follow the sorted names: config.json stores dict keys sorted, so creation
        # order does not survive save/load, and a row must mean the same layer after reloading.
        self._layer_index = {name: i for i, name in enumerate(sorted(layer_dims))}
        self.layer_embedding: nn.Embedding | None = None
        if len(layer_dims) > 1:
            self.layer_embedding = nn.Embedding(len(layer_dims), t_dim)
            nn.init.zeros_(self.layer_embedding.weight)

    @classmethod
    def from_decoder_config(
        cls, dec: DecoderConfig, layer_dims: dict[str, int], fingerprint: str | None,
        unet_config: dict | None = None,
    ) -> RCDMDecoder:
        """An untrained decoder for ``layer_dims`` with the UNet shape (or ``unet_config``) and noise
        schedule of ``dec``.

        (Not ``from_config``: diffusers' ``ConfigMixin.from_config`` is what ``from_pretrained`` calls.)
        """
        return cls(
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
            binarize=dec.binarize,
            unet_config=unet_config,
        )

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule this decoder was trained with (samplers are built from it)."""
        cfg = self.config
        return make_noise_scheduler(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type)

    @staticmethod
    def _make_mlp(dim: int, t_dim: int) -> nn.Sequential:
        """LayerNorm(dim) -> Linear(dim, T) -> SiLU -> Linear(T, T).

        The last Linear is zero-initialised so that training starts from the unconditional model and the
        conditioning grows from zero (as ADM zero-inits the output of every residual branch). The input
        LayerNorm (no affine) puts every layer's representation on one scale: post-ReLU trunk means and
        projector outputs differ by orders of magnitude, and short trainings ignored unnormalised inputs.
        """
        mlp = nn.Sequential(
            nn.LayerNorm(dim, elementwise_affine=False),
            nn.Linear(dim, t_dim),
            nn.SiLU(),
            nn.Linear(t_dim, t_dim),
        )
        nn.init.zeros_(mlp[-1].weight)
        nn.init.zeros_(mlp[-1].bias)
        return mlp

    @property
    def layers(self) -> list[str]:
        """The layer names this decoder is conditioned on, sorted (the order config.json keeps)."""
        return sorted(self.config.layer_dims)

    def layer_index(self, layer: str) -> int:
        """Row of ``layer`` in the layer embedding (its position in ``layers``)."""
        self._check_layer(layer)
        return self._layer_index[layer]

    @property
    def rep_width(self) -> int:
        """Width of packed mixed-layer representations: the largest layer dimension (0 for the prior)."""
        return max((int(d) for d in self.config.layer_dims.values()), default=0)

    @property
    def is_prior(self) -> bool:
        """Whether this is an unconditional model (no layers; samples from the null embedding)."""
        return not self.config.layer_dims

    def _check_layer(self, layer: str) -> None:
        if layer not in self._layer_index:
            raise ValueError(f"unknown decoder layer {layer!r}; this decoder has layers {self.layers}")

    def _single_condition(self, reps: torch.Tensor, layer: str, n: int) -> torch.Tensor:
        """[n, T] conditioning for ``reps`` [n, D] that all come from ``layer``."""
        dim = self.config.layer_dims[layer]
        if reps.ndim != 2 or reps.shape[1] != dim or reps.shape[0] != n:
            raise ValueError(
                f"reps for layer {layer!r} must have shape [{n}, {dim}], got {list(reps.shape)} "
                f"(representation dim {reps.shape[-1] if reps.ndim else 0} vs decoder dim {dim})"
            )
        mlp = self.rep_mlps[layer]
        cond = mlp(reps.to(dtype=mlp[-1].weight.dtype))
        if self.layer_embedding is not None:
            idx = torch.full((n,), self._layer_index[layer], dtype=torch.long, device=cond.device)
            cond = cond + self.layer_embedding(idx)
        return cond

    def _mixed_condition(self, reps: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
        """[n, T] conditioning when row i comes from layer ``layers[index[i]]``.

        ``reps`` [n, rep_width] is zero-padded: row i uses its first ``layer_dims[layers[index[i]]]``
        entries.  Every MLP runs (on possibly zero rows) so that all parameters take part in the graph,
        which DDP requires.
        """
        width = self.rep_width
        if index.shape != (n,) or index.dtype != torch.long:
            raise ValueError(f"layer index must be a long tensor of shape [{n}], got {list(index.shape)}")
        if reps.shape != (n, width):
            raise ValueError(f"packed reps must have shape [{n}, {width}], got {list(reps.shape)}")
        if n and (int(index.min()) < 0 or int(index.max()) >= len(self.layers)):
            raise ValueError(f"layer index out of range [0, {len(self.layers)}): {index.tolist()}")
        dtype = self.null_embedding.dtype
        cond = torch.zeros(n, self.time_embed_dim, device=reps.device, dtype=dtype)
        for i, name in enumerate(self.layers):
            rows = (index == i).nonzero(as_tuple=True)[0]
            part = self.rep_mlps[name](reps[rows, : self.config.layer_dims[name]].to(dtype))
            cond = cond.index_copy(0, rows, part.to(cond.dtype))
        if self.layer_embedding is not None:
            cond = cond + self.layer_embedding(index.to(cond.device))
        return cond

    def condition(
        self,
        reps: torch.Tensor | None,
        layer: str | torch.Tensor,
        n: int,
        uncond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditioning vectors [n, T] (null embedding where dropped).

        ``layer`` is one layer name (``reps`` [n, D] of that layer) or a long tensor [n] of per-sample
        indices into ``layers`` (``reps`` [n, rep_width], zero-padded, as the shared decoder trains).
        A ``binarize`` decoder replaces ``reps`` by 1[reps > 0] first (zero padding stays zero).
        """
        null = self.null_embedding.unsqueeze(0).expand(n, -1)
        if reps is None:
            return null
        if isinstance(layer, str):
            self._check_layer(layer)
        if self.config.binarize:  # idempotent: cached {0, 1} features pass unchanged
            reps = binarize_reps(reps)
        if isinstance(layer, str):
            cond = self._single_condition(reps, layer, n)
        else:
            cond = self._mixed_condition(reps, layer, n)
        if uncond is not None:
            if uncond.shape != (n,):
                raise ValueError(f"uncond mask must have shape [{n}], got {list(uncond.shape)}")
            cond = torch.where(uncond.to(device=cond.device, dtype=torch.bool).unsqueeze(1), null, cond)
        return cond

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        reps: torch.Tensor | None,
        layer: str | torch.Tensor,
        uncond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the model output (eps for the default schedule) for ``x_t`` [N,3,H,W] at steps ``t`` [N].

        ``reps`` [N, D] is the representation of ``layer``; or, with ``layer`` a long tensor [N] of
        per-sample layer indices (into ``layers``), ``reps`` [N, rep_width] packed as in ``condition``.
        Rows where ``uncond`` [N] (bool) is True, or all rows when ``reps`` is None (the prior: always),
        use the learned null embedding instead (classifier-free guidance).  Returns [N, 3, H, W].
        """
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t must have shape [N, 3, H, W], got {list(x_t.shape)}")
        cond = self.condition(reps, layer, x_t.shape[0], uncond)
        return self.unet(x_t, t, class_labels=cond).sample

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """``ModelMixin.save_pretrained`` that always writes safetensors (shared bundles hold no pickle)."""
        kwargs["safe_serialization"] = True
        # channels_last weights (DecoderConfig.channels_last) are not contiguous; safetensors needs them so
        self.to(memory_format=torch.contiguous_format)
        super().save_pretrained(save_directory, **kwargs)


def load_decoder(path: str | Path) -> RCDMDecoder:
    """Load a decoder saved with ``save_pretrained`` from the directory ``path``, in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RcdmVizError(f"no decoder at {str(path)!r} (expected a directory with config.json)")
    try:
        decoder = RCDMDecoder.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RcdmVizError(f"could not load the decoder at {str(path)!r}: {err}") from err
    require_finite(decoder, f"the decoder at {str(path)!r}")
    return decoder.eval()
