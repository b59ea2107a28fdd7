"""What the image attack adapters share: a module view of a defended model and perturbation norms."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmark.errors import UsageError
from benchmark.interfaces import AttackOutcome


class DefendedLogits(nn.Module):
    """nn.Module view of a defended model's differentiable `logits`, the form torchattacks takes;
    with `bpda`, of its BPDA surrogate `bpda_logits` where it has one."""

    def __init__(self, defended, bpda: bool = False):
        super().__init__()
        if not hasattr(defended, "logits"):
            raise UsageError(f"{type(defended).__name__} has no differentiable logits(x); a white-box "
                             f"image attack needs one (or an explicit surrogate such as BPDA/EOT)")
        self.defended = defended
        # torchattacks reads the device from the parameters; register the network when there is one.
        if isinstance(getattr(defended, "module", None), nn.Module):
            self.network = defended.module
        self.surrogate = defended.bpda_logits if bpda and hasattr(defended, "bpda_logits") \
            else defended.logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate(x)


def perturbation_norm(adversarial: np.ndarray, original: np.ndarray, norm: str) -> np.ndarray:
    delta = (adversarial - original).reshape(len(original), -1)
    return np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)


def run_torchattack(attack_class, defended, xs: np.ndarray, ys: np.ndarray, norm: str,
                    queries: int, device: torch.device, targets: np.ndarray | None = None,
                    **kwargs) -> list[AttackOutcome]:
    """Run a torchattacks attack on the defended model's logits; with `targets` (one class per
    example) in torchattacks' targeted mode, each outcome recording its target."""
    model = DefendedLogits(defended)
    attack = attack_class(model, **kwargs)
    attack.set_device(device)
    images = torch.as_tensor(xs, device=device)
    labels = torch.as_tensor(ys, device=device)
    if targets is not None:
        target_labels = torch.as_tensor(targets, dtype=torch.long, device=device)
        attack.set_mode_targeted_by_function(lambda inputs, labels: target_labels, quiet=True)
    adversarial = attack(images, labels).detach().cpu().numpy().astype(np.float32)
    sizes = perturbation_norm(adversarial, xs, norm)
    extras = ([{"target": int(t)} for t in targets] if targets is not None
              else [{} for _ in ys])
    return [AttackOutcome(adversarial[i], queries, float(sizes[i]), extras[i])
            for i in range(len(ys))]


def check_budget(name: str, config: dict) -> None:
    if config["eps"] < 0:
        raise UsageError(f"attack '{name}': eps must be >= 0, got {config['eps']}")
    if config.get("steps", 1) < 1:
        raise UsageError(f"attack '{name}': steps must be >= 1, got {config['steps']}")
    if config.get("norm", "linf") not in ("linf", "l2"):
        raise UsageError(f"attack '{name}': norm must be 'linf' or 'l2', got {config['norm']!r}")


def model_device(defended) -> torch.device:
    module = getattr(defended, "module", None)
    if isinstance(module, nn.Module):
        return next(module.parameters()).device
    return torch.device("cpu")
