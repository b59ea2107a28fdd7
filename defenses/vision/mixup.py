"""mixup (Zhang et al. 2018): train on convex combinations of pairs of inputs and of their labels,
lambda ~ Beta(alpha, alpha) per batch (alpha = 1: uniform), as the CiiV reference code does."""
import numpy as np
import torch
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from defenses.vision.common import TRAIN_OPTIONS, train_defended


def mix(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """(mixed inputs, labels a, labels b, lambda) for one batch."""
    lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
    index = torch.randperm(len(x), device=x.device)
    return lam * x + (1 - lam) * x[index], y, y[index], lam


def mixup_loss(alpha: float):
    def loss_fn(model, x, y):
        mixed, y_a, y_b, lam = mix(x, y, alpha)
        logits = model(mixed)
        return lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
    return loss_fn


@register_defense("mixup", modality="image")
class Mixup:
    """mixup training (Zhang et al. 2018), lambda ~ Beta(alpha, alpha), alpha = 1."""

    defaults = {**TRAIN_OPTIONS, "alpha": 1.0}

    def build(self, task, model_spec, config, context):
        module = train_defended(task, model_spec, config, context, mixup_loss(config["alpha"]),
                                f"mixup {task.name}")
        return ClassifierModel(module, task.num_classes)
