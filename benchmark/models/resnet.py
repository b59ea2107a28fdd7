"""Residual networks for CIFAR-sized images, as the adversarial-training literature uses them.

ResNet-18 in its CIFAR form (He et al., 2016; 3x3 stem, no max-pooling), PreAct ResNet-18 (He et al.,
2016b; as in the Madry and TRADES code) and WideResNet (Zagoruyko & Komodakis, 2016; WRN-34-10 is
the TRADES default). Like every image model they expose `features(x)`, globally pooled and
flattened, and `head`, the final linear layer. `width` (base channels) shrinks the ResNets for
tests and CPU suites; the global pooling is adaptive, so any input size works.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.errors import UsageError
from benchmark.registry import register_model


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions around an identity shortcut (a 1x1 projection where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block (BN-ReLU before each convolution); also the WideResNet block, which adds
    dropout between the two convolutions."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        # A projection shortcut reads the activated input; an identity shortcut the raw one.
        shortcut = x if self.projection is None else self.projection(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + shortcut


def stage(block, in_channels: int, out_channels: int, num_blocks: int, stride: int,
          **block_options) -> nn.Sequential:
    """`num_blocks` blocks; the first changes the width and applies the stride."""
    blocks = [block(in_channels, out_channels, stride, **block_options)]
    blocks += [block(out_channels, out_channels, 1, **block_options) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResidualNetwork(nn.Module):
    """stem -> stages -> final layers (BN-ReLU for pre-activation nets) -> global average pool -> head."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, final: nn.Module, feature_dim: int,
                 num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.final = final
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.final(self.stages(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18_stages(block, width: int) -> nn.Sequential:
    return nn.Sequential(stage(block, width, width, 2, 1), stage(block, width, 2 * width, 2, 2),
                         stage(block, 2 * width, 4 * width, 2, 2),
                         stage(block, 4 * width, 8 * width, 2, 2))


@register_model("resnet18", modality="image")
def resnet18(task, width: int = 64) -> ResidualNetwork:
    """CIFAR ResNet-18 (3x3 stem, no max-pooling); `width` base channels."""
    channels = task.input_shape[0]
    stem = nn.Sequential(conv3x3(channels, width), nn.BatchNorm2d(width), nn.ReLU())
    return ResidualNetwork(stem, resnet18_stages(BasicBlock, width), nn.Identity(), 8 * width,
                           task.num_classes)


@register_model("preact_resnet18", modality="image")
def preact_resnet18(task, width: int = 64) -> ResidualNetwork:
    """PreAct ResNet-18 as in the Madry and TRADES code; `width` base channels."""
    channels = task.input_shape[0]
    final = nn.Sequential(nn.BatchNorm2d(8 * width), nn.ReLU())
    return ResidualNetwork(conv3x3(channels, width), resnet18_stages(PreActBlock, width), final,
                           8 * width, task.num_classes)


@register_model("wrn", modality="image")
def wrn(task, depth: int = 34, widen_factor: int = 10, dropout: float = 0.0) -> ResidualNetwork:
    """WRN-depth-widen_factor: three stages of (depth - 4) / 6 pre-activation blocks each."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UsageError(f"wrn depth must be 6n + 4 with n >= 1 (10, 16, 28, 34, ...), not {depth}")
    num_blocks = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    stages = nn.Sequential(
        stage(PreActBlock, widths[0], widths[1], num_blocks, 1, dropout=dropout),
        stage(PreActBlock, widths[1], widths[2], num_blocks, 2, dropout=dropout),
        stage(PreActBlock, widths[2], widths[3], num_blocks, 2, dropout=dropout))
    final = nn.Sequential(nn.BatchNorm2d(widths[3]), nn.ReLU())
    return ResidualNetwork(conv3x3(task.input_shape[0], widths[0]), stages, final, widths[3],
                           task.num_classes)
