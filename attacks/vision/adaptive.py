"""Adaptive attacks for randomized and non-differentiable defenses (Athalye, Carlini and Wagner,
2018): EOT-PGD averages each step's gradient over random draws of the defense; BPDA-PGD
differentiates through the defense's `bpda_logits`, which replaces a non-differentiable (or
near-zero-gradient) step by a differentiable approximation in the backward pass.

A deterministic model gets one draw (more would repeat the same gradient), and a model without
`bpda_logits` is attacked through `logits` (BPDA with nothing to approximate is PGD), so both
attacks run on every image defense and equal PGD where there is nothing to adapt to."""
import numpy as np
import torch

from attacks.vision.common import DefendedLogits, check_budget, model_device, perturbation_norm
from attacks.vision.perturb import pgd
from benchmark.errors import UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack


class _AdaptivePGD:
    name = ""
    use_bpda = False
    defaults = {"norm": "linf", "eps": 0.1, "steps": 20, "step_size": None, "random_start": True,
                "eot_samples": 8, "loss": "ce"}

    def __init__(self, config: dict):
        check_budget(self.name, config)
        if config["eot_samples"] < 1:
            raise UsageError(f"attack '{self.name}': eot_samples must be >= 1")
        if config["loss"] not in ("ce", "cw"):
            raise UsageError(f"attack '{self.name}': loss must be 'ce' or 'cw'")
        self.config = config
        self.threat = config["norm"]
        self.step_size = config["step_size"] or 2.5 * config["eps"] / config["steps"]

    def surrogate(self, model):
        DefendedLogits(model)  # raises the usual error for a model without logits
        if self.use_bpda and hasattr(model, "bpda_logits"):
            return model.bpda_logits
        return model.logits

    def describe(self) -> str:
        c = self.config
        what = "BPDA" if self.use_bpda else "EOT"
        return (f"{what}-PGD-{c['steps']} ({c['eot_samples']} draws per step for randomized "
                f"defenses), {c['norm']} eps={c['eps']:g}, step {self.step_size:.4g}, "
                f"{c['loss']} loss, white-box adaptive")

    def run(self, model, xs, ys, seed):
        c = self.config
        device = model_device(model)
        samples = c["eot_samples"] if getattr(model, "randomized", False) else 1
        x = torch.as_tensor(xs, device=device)
        y = torch.as_tensor(ys, device=device)
        adversarial = pgd(self.surrogate(model), x, y, norm=c["norm"], eps=c["eps"],
                          steps=c["steps"], step_size=self.step_size,
                          random_start=c["random_start"], loss=c["loss"],
                          eot_samples=samples).cpu().numpy().astype(np.float32)
        sizes = perturbation_norm(adversarial, xs, c["norm"])
        return [AttackOutcome(adversarial[i], c["steps"] * samples, float(sizes[i]))
                for i in range(len(ys))]


@register_attack("eot-pgd", modality="image", threat="lp")
class EOTPGD(_AdaptivePGD):
    """EOT-PGD: PGD with each gradient averaged over eot_samples draws of a randomized defense."""

    name = "eot-pgd"


@register_attack("bpda-pgd", modality="image", threat="lp")
class BPDAPGD(_AdaptivePGD):
    """BPDA-PGD: PGD through the defense's BPDA surrogate (bpda_logits), EOT over its draws."""

    name = "bpda-pgd"
    use_bpda = True
    defaults = {**_AdaptivePGD.defaults, "eot_samples": 1}
