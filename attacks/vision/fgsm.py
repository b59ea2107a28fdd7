"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps, through torchattacks."""
import torchattacks

from attacks.vision.common import check_budget, model_device, run_torchattack
from benchmark.registry import register_attack


@register_attack("fgsm", modality="image", threat="linf")
class FGSM:
    defaults = {"eps": 0.1}
    threat = "linf"

    def __init__(self, config: dict):
        check_budget("fgsm", config)
        self.config = config

    def describe(self) -> str:
        return f"FGSM, l-inf eps={self.config['eps']:g}, single step, white-box"

    def run(self, model, xs, ys, seed):
        return run_torchattack(torchattacks.FGSM, model, xs, ys, "linf", 1, model_device(model),
                               eps=self.config["eps"])
