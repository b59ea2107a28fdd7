"""CiiV + adversarial training (CiiV, Tang et al. 2021, Table 1's CiiV+AT_FGSM and CiiV+AT_PGD-10):
CiiV's objective (defenses/vision/ciiv.py) on adversarial examples instead of clean images.

As the reference code trains it (train_ciiv with adv_train on): each batch's examples are crafted
against the CiiV network itself, in eval mode, through its forward with one retinotopic loop (the
first centre) and its own gradients, with no random start (get_adv_images' default): FGSM is one
step of eps from x, PGD-10 ten steps of 2/255 at eps 8/255 (the paper's threat models). The
exposure step's gradient is tiny but not zero, and the sign steps only need its sign.
"""
from __future__ import annotations

import torch.nn.functional as F

from benchmark.errors import UsageError
from benchmark.registry import register_defense
from defenses.vision.ciiv import CiiV, CiiVLoss, CiiVModel, CiiVNet, channel_statistics
from defenses.vision.common import eval_mode, pgd_linf, train_defended

TRAINING_ATTACKS = ("fgsm", "pgd")
PGD_STEPS = 10


class CiiVAdversarialLoss(CiiVLoss):
    """CiiV's loss (and trade-off schedule) on the training attack's examples."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.eps = config["eps"]
        if config["attack"] == "fgsm":
            self.steps, self.step_size = 1, config["eps"]
        else:
            self.steps = config["steps"]
            # The paper's PGD-10 step is 2/255 at eps 8/255.
            self.step_size = config["step_size"] if config["step_size"] is not None else self.eps / 4

    def adversarial(self, model, x, y):
        with eval_mode(model):
            return pgd_linf(lambda a: F.cross_entropy(model(a, loops=1)[0], y, reduction="sum"),
                            x, self.eps, self.step_size, self.steps, start="none")

    def __call__(self, model, x, y):
        return super().__call__(model, self.adversarial(model, x, y), y)


def check_training_attack(config: dict) -> None:
    if config["attack"] not in TRAINING_ATTACKS:
        raise UsageError(f"ciiv-at: attack must be one of {', '.join(TRAINING_ATTACKS)}, "
                         f"got {config['attack']!r}")
    if config["eps"] < 0 or config["steps"] < 1:
        raise UsageError(f"ciiv-at: need eps >= 0 and steps >= 1, got eps={config['eps']}, "
                         f"steps={config['steps']}")
    if config["attack"] == "fgsm" and (config["steps"] != PGD_STEPS or config["step_size"] is not None):
        raise UsageError("ciiv-at: steps and step_size apply to attack = 'pgd' only (FGSM is one "
                         "step of eps)")


@register_defense("ciiv-at", modality="image", randomized=True)
class CiiVAT:
    """CiiV trained on FGSM or PGD-10 examples of itself (the reference's CiiV + AT)."""

    # attack: "fgsm" or "pgd"; eps 8/255 and PGD's 10 steps (step_size None = eps / 4): the paper's.
    defaults = {**CiiV.defaults, "attack": "pgd", "eps": 8 / 255, "steps": PGD_STEPS,
                "step_size": None}

    def build(self, task, model_spec, config, context):
        check_training_attack(config)
        if config["loops"] < 2 or config["num_samples"] < 1 or not 0 < config["omega"]:
            raise UsageError("ciiv-at: need loops >= 2, num_samples >= 1 and omega > 0")
        base = context.build_model(model_spec, task)
        if not hasattr(base, "features") or not hasattr(base, "head"):
            raise UsageError("ciiv-at needs an image model exposing features(x) and head")
        mean, std = channel_statistics(task.train.xs, config["normalize"])
        net = CiiVNet(base, mean, std, config["num_samples"], config["omega"], config["centres"],
                      config["mask_alpha"]).to(context.device)
        loss = CiiVAdversarialLoss(config)
        net = train_defended(task, model_spec, config, context, loss,
                             f"ciiv-at-{config['attack']} {task.name}", module=net,
                             on_epoch_start=loss.on_epoch_start)
        return CiiVModel(net, task.num_classes, config["loops"])
