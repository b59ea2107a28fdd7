"""The projected-gradient loop behind the CW, EOT and BPDA attacks: l-inf or l2 ball, [0, 1] box,
cross-entropy or CW margin loss, and gradients averaged over random draws of the defense (EOT)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def cw_margin_loss(logits: torch.Tensor, labels: torch.Tensor, confidence: float) -> torch.Tensor:
    """-max(z_y - max_{j != y} z_j + confidence, 0) per example (the CW loss of the CausalAdv
    reference code, confidence 50): maximising it pushes the true logit below the best other."""
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    real = (onehot * logits).sum(1)
    other = (logits - onehot * 1e4).max(1)[0]
    return -torch.clamp(real - other + confidence, min=0)


def _loss(logits, labels, loss: str, confidence: float) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="sum")
    return cw_margin_loss(logits, labels, confidence).sum()


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(adversarial, x, norm: str, eps: float) -> torch.Tensor:
    delta = adversarial - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _l2(delta), max=1.0)
    return (x + delta).clamp(0, 1)


def pgd(logit_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
        norm: str, eps: float, steps: int, step_size: float, random_start: bool = True,
        loss: str = "ce", confidence: float = 50.0, eot_samples: int = 1) -> torch.Tensor:
    """Maximise the loss over the eps-ball; each step's gradient is the mean over `eot_samples`
    calls of `logit_fn` (each a fresh random draw for a randomized defense)."""
    x = x.detach()
    adversarial = x.clone()
    if random_start and eps > 0:
        if norm == "linf":
            adversarial = adversarial + torch.empty_like(x).uniform_(-eps, eps)
        else:
            direction = torch.randn_like(x)
            radius = torch.rand(len(x), device=x.device).view(-1, *([1] * (x.dim() - 1)))
            adversarial = adversarial + direction / _l2(direction) * radius * eps
        adversarial = project(adversarial, x, norm, eps)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        grad = torch.zeros_like(x)
        for _ in range(eot_samples):
            with torch.enable_grad():
                value = _loss(logit_fn(adversarial), y, loss, confidence)
                grad += torch.autograd.grad(value, adversarial)[0]
        adversarial = adversarial.detach()
        if norm == "linf":
            adversarial = adversarial + step_size * grad.sign()
        else:
            adversarial = adversarial + step_size * grad / _l2(grad)
        adversarial = project(adversarial, x, norm, eps)
    return adversarial.detach()
