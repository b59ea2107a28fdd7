"""PGD (Madry et al. 2018), l-inf or l2, random start, through torchattacks' PGD and PGDL2."""
import torchattacks

from attacks.vision.common import check_budget, model_device, run_torchattack
from benchmark.registry import register_attack


@register_attack("pgd", modality="image", threat="lp")
class PGD:
    # step_size None means Madry's rule, 2.5 * eps / steps.
    defaults = {"norm": "linf", "eps": 0.1, "steps": 10, "step_size": None, "random_start": True}

    def __init__(self, config: dict):
        check_budget("pgd", config)
        self.config = config
        self.threat = config["norm"]
        self.step_size = config["step_size"] or 2.5 * config["eps"] / config["steps"]

    def describe(self) -> str:
        c = self.config
        start = "random start" if c["random_start"] else "no random start"
        return (f"PGD-{c['steps']}, {c['norm']} eps={c['eps']:g}, step {self.step_size:.4g}, "
                f"{start}, white-box")

    def run(self, model, xs, ys, seed):
        c = self.config
        attack_class = torchattacks.PGD if c["norm"] == "linf" else torchattacks.PGDL2
        return run_torchattack(attack_class, model, xs, ys, c["norm"], c["steps"], model_device(model),
                               eps=c["eps"], alpha=self.step_size, steps=c["steps"],
                               random_start=c["random_start"])
