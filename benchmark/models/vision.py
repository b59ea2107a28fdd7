"""Image classifiers: inputs are (N, C, H, W) float tensors in [0, 1]; outputs are logits.

Every architecture exposes `features(x)` (the penultimate representation) and `head` (the final
linear layer), which the causal defenses need, and `forward(x) = head(features(x))`.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.errors import UsageError
from benchmark.registry import register_model


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; sized for 8x8 digits and 16-32 pixel toy images."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("smallcnn", modality="image")
def smallcnn(task, width: int = 32, feature_dim: int = 128) -> SmallCNN:
    channels, height, _ = task.input_shape
    return SmallCNN(channels, task.num_classes, height, width, feature_dim)


class CarliniWagnerCNN(nn.Module):
    """The 4-convolution MNIST CNN of Carlini & Wagner (2017), TRADES' "SmallCNN" and CausalAdv's
    MNIST model: conv 32, 32, pool, conv 64, 64, pool, two 200-unit layers (dropout 0.5), head."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        size = ((image_size - 4) // 2 - 4) // 2  # two unpadded 3x3 convolutions, then a 2x2 pool, twice
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * size * size, 200), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(200, 200), nn.ReLU(),
        )
        self.head = nn.Linear(200, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cwcnn", modality="image")
def cwcnn(task) -> CarliniWagnerCNN:
    channels, height, _ = task.input_shape
    if height < 16:
        raise UsageError(f"cwcnn needs images of at least 16 x 16 pixels (MNIST is 28 x 28), got "
                         f"{height} x {height}; use smallcnn for smaller images")
    return CarliniWagnerCNN(channels, task.num_classes, height)
