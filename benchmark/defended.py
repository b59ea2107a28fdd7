"""The deployed form of an ordinary classifier: argmax of its logits, batched, without gradients."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from benchmark.train import device_of, model_logits


class ClassifierModel:
    """DefendedModel for a deterministic nn.Module classifier (text or image)."""

    def __init__(self, module: nn.Module, num_classes: int, batch_size: int = 256):
        self.module = module.eval()
        self.num_classes = num_classes
        self.batch_size = batch_size

    @torch.no_grad()
    def probs(self, xs: Sequence) -> np.ndarray:
        chunks = []
        for start in range(0, len(xs), self.batch_size):
            batch = xs[start:start + self.batch_size]
            chunks.append(torch.softmax(model_logits(self.module, batch), dim=1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_classes))

    def predict(self, xs: Sequence) -> np.ndarray:
        return self.probs(xs).argmax(axis=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable logits of an image batch (the white-box attack surface)."""
        return self.module(x.to(device_of(self.module)))
