"""ResNet trunk whose very last block can be widened (or narrowed) to D output channels.

Expand or Narrow your representation (E/N, §3 and Figure 10) changes only the number of feature maps of
the last convolutional block of a ResNet-50, before pooling. Here the last block's last conv + BN produce
D channels and, when D differs from the stage's usual width, its identity shortcut becomes a 1x1 conv + BN
projection (the standard ResNet "option B" shortcut, He et al. 2016). With D = 2048 and the default
widths the trunk is exactly torchvision's ResNet-50 without ``fc`` (same state-dict keys and outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

from rcdm_viz.config import parse_enum
from rcdm_viz.layers import STAGES, TRUNK

# Trunk-level layer names, in depth order; each is the pooled output of one torchvision stage.
STAGE_NAMES: tuple[str, ...] = (*STAGES, TRUNK)
_STAGE_MODULES: dict[str, str] = dict(zip(STAGE_NAMES, ("layer1", "layer2", "layer3", "layer4"), strict=True))


class Arch(StrEnum):
    """Supported trunk architectures."""

    RESNET18 = "resnet18"
    RESNET50 = "resnet50"

    @classmethod
    def parse(cls, value: Arch | str) -> Arch:
        """Return the Arch named by ``value`` (case-insensitive); RcdmVizError listing valid ones."""
        return parse_enum(cls, value, "architecture", normalize=True)


@dataclass(frozen=True)
class _ArchSpec:
    block: type[BasicBlock] | type[Bottleneck]
    blocks_per_stage: tuple[int, int, int, int]


_ARCH_SPECS: dict[Arch, _ArchSpec] = {
    Arch.RESNET18: _ArchSpec(BasicBlock, (2, 2, 2, 2)),
    Arch.RESNET50: _ArchSpec(Bottleneck, (3, 4, 6, 3)),
}


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _widen_last_conv(block: nn.Module, width: int) -> None:
    """Make ``block``'s last conv + BN output ``width`` channels (attribute names as torchvision's)."""
    if isinstance(block, Bottleneck):
        block.conv3 = conv1x1(block.conv3.in_channels, width)
        block.bn3 = nn.BatchNorm2d(width)
    else:
        block.conv2 = conv3x3(block.conv2.in_channels, width)
        block.bn2 = nn.BatchNorm2d(width)


class ResNetTrunk(nn.Module):
    """ResNet-18/50 without ``fc``; the very last block outputs ``width`` (= D) channels.

    Args:
        arch: "resnet18" (BasicBlock [2,2,2,2]) or "resnet50" (Bottleneck [3,4,6,3]).
        width: D, the channels of the last block (the trunk's output dimension).
        base_width: channels of the stem; stage i has base_width * 2**i planes (64 = torchvision).
        small_input: CIFAR stem (3x3 conv, stride 1, no max-pool) for 32-64 px images.
    """

    def __init__(self, arch: Arch | str, width: int, base_width: int = 64, small_input: bool = False) -> None:
        super().__init__()
        self.arch = Arch.parse(arch)
        self.width = _check_positive_int(width, "width")
        self.base_width = _check_positive_int(base_width, "base_width")
        self.small_input = bool(small_input)
        spec = _ARCH_SPECS[self.arch]
        if self.small_input:
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if self.small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        self._inplanes = base_width
        self.stage_dims: dict[str, int] = {}
        for i, (name, n_blocks) in enumerate(zip(STAGE_NAMES, spec.blocks_per_stage, strict=True)):
            planes = base_width * 2**i
            last_width = width if name == TRUNK else None
            stride = 1 if i == 0 else 2
            stage = self._make_stage(spec.block, planes, n_blocks, stride, last_width=last_width)
            setattr(self, _STAGE_MODULES[name], stage)
            self.stage_dims[name] = self._inplanes
        self._init_weights()

    def _make_stage(
        self, block: type[nn.Module], planes: int, n_blocks: int, stride: int, last_width: int | None
    ) -> nn.Sequential:
        """One torchvision stage; if ``last_width`` differs from the usual width, widen its last block."""
        usual = planes * block.expansion
        layers: list[nn.Module] = []
        for j in range(n_blocks):
            inplanes = self._inplanes
            block_stride = stride if j == 0 else 1
            out = last_width if (j == n_blocks - 1 and last_width is not None) else usual
            downsample = None
            if block_stride != 1 or inplanes != out:
                downsample = nn.Sequential(conv1x1(inplanes, out, block_stride), nn.BatchNorm2d(out))
            blk = block(inplanes, planes, block_stride, downsample)
            if out != usual:
                _widen_last_conv(blk, out)
            layers.append(blk)
            self._inplanes = out
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # Same initialisation as torchvision.models.ResNet (zero_init_residual=False).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def out_dim(self) -> int:
        """D, the dimension of the pooled trunk output."""
        return self.width

    def forward_stages(self, x: Tensor, upto: str = TRUNK) -> dict[str, Tensor]:
        """Pooled outputs of every stage from stage1 to ``upto`` (inclusive); deeper stages are not run.

        Args:
            x: normalised images [N, 3, H, W].
            upto: one of stage1, stage2, stage3, trunk.
        Returns:
            {name: [N, C_name]} global-average-pooled, flattened (trunk after the final ReLU).
        """
        if upto not in _STAGE_MODULES:
            raise ValueError(f"unknown trunk stage {upto!r}; valid: {', '.join(STAGE_NAMES)}")
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, Tensor] = {}
        for name in STAGE_NAMES:
            h = getattr(self, _STAGE_MODULES[name])(h)
            # adaptive_avg_pool2d + flatten, as torchvision's ResNet, so outputs match it bit for bit.
            out[name] = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
            if name == upto:
                break
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Pooled trunk output: [N, 3, H, W] -> [N, D]."""
        return self.forward_stages(x, TRUNK)[TRUNK]
