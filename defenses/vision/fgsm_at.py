"""FGSM adversarial training as CiiV's reference code trains its AT_FGSM baseline (train_baseline
with adv_train on): cross-entropy at x + eps * sign(grad_x CE(x)), the gradient taken at the clean
image (no random start, Goodfellow et al. 2015's example without their clean half), crafted with
the model in eval mode. `madry` with steps = 1 differs: it takes the gradient at a uniform random
start."""
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.registry import register_defense
from defenses.vision.common import (TRAIN_OPTIONS, EpochCrossEntropy, eval_mode, pgd_linf,
                                    train_defended)


def fgsm_loss(eps: float, cross_entropy: EpochCrossEntropy):
    def loss_fn(model, x, y):
        with eval_mode(model):
            adversarial = pgd_linf(lambda a: F.cross_entropy(model(a), y, reduction="sum"), x,
                                   eps, eps, 1, start="none")
        logits = model(adversarial)
        cross_entropy.add(logits, y)
        return F.cross_entropy(logits, y)
    return loss_fn


@register_defense("fgsm-at", modality="image")
class FGSMAdversarialTraining:
    """FGSM adversarial training (CiiV's AT_FGSM baseline): eps 8/255, no random start."""

    defaults = {**TRAIN_OPTIONS, "eps": 8 / 255}

    def build(self, task, model_spec, config, context):
        if config["eps"] < 0:
            raise UsageError(f"fgsm-at: need eps >= 0, got eps={config['eps']}")
        cross_entropy = EpochCrossEntropy()
        module = train_defended(task, model_spec, config, context,
                                fgsm_loss(config["eps"], cross_entropy), f"fgsm-at {task.name}",
                                cross_entropy=cross_entropy)
        return ClassifierModel(module, task.num_classes)
