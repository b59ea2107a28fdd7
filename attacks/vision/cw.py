"""CW-inf as in the CausalAdv tables ("CW-20"): PGD on the Carlini-Wagner margin loss
(confidence 50, as the reference code), l-inf ball, random start, 20 steps by default."""
import numpy as np
import torch

from attacks.vision.common import check_budget, model_device, perturbation_norm
from attacks.vision.perturb import pgd
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack


@register_attack("cw", modality="image", threat="lp")
class CWInf:
    """PGD on the CW margin loss ("CW-20" in the CausalAdv tables), l-inf by default."""

    # step_size None = 2.5 * eps / steps, as the project's PGD.
    defaults = {"norm": "linf", "eps": 0.1, "steps": 20, "step_size": None, "confidence": 50.0,
                "random_start": True}

    def __init__(self, config: dict):
        check_budget("cw", config)
        self.config = config
        self.threat = config["norm"]
        self.step_size = config["step_size"] or 2.5 * config["eps"] / config["steps"]

    def describe(self) -> str:
        c = self.config
        return (f"CW-{c['steps']} (PGD on the CW margin loss, confidence {c['confidence']:g}), "
                f"{c['norm']} eps={c['eps']:g}, step {self.step_size:.4g}, white-box")

    def run(self, model, xs, ys, seed):
        c = self.config
        device = model_device(model)
        x = torch.as_tensor(xs, device=device)
        y = torch.as_tensor(ys, device=device)
        adversarial = pgd(model.logits, x, y, norm=c["norm"], eps=c["eps"], steps=c["steps"],
                          step_size=self.step_size, random_start=c["random_start"], loss="cw",
                          confidence=c["confidence"]).cpu().numpy().astype(np.float32)
        sizes = perturbation_norm(adversarial, xs, c["norm"])
        return [AttackOutcome(adversarial[i], c["steps"], float(sizes[i])) for i in range(len(ys))]
