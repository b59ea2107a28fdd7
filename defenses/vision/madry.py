"""Madry et al. (2018): PGD adversarial training, min over weights of the cross-entropy at the
l-inf PGD example (random start uniform in the ball)."""
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from defenses.vision.common import (ADVERSARIAL_OPTIONS, OMITTED_AT_DEFAULT, TRAIN_OPTIONS,
                                    AttackBudget, EpochCrossEntropy, eval_mode, pgd_linf,
                                    train_defended)


def madry_loss(budget: AttackBudget, steps: int, cross_entropy: EpochCrossEntropy | None = None):
    def loss_fn(model, x, y):
        with eval_mode(model):
            adversarial = pgd_linf(lambda a: F.cross_entropy(model(a), y, reduction="sum"), x,
                                   budget.eps, budget.step_size, steps, start="uniform")
        logits = model(adversarial)
        if cross_entropy is not None:
            cross_entropy.add(logits, y)
        return F.cross_entropy(logits, y)
    return loss_fn


@register_defense("madry", modality="image")
class Madry:
    """PGD adversarial training (Madry et al. 2018): l-inf eps, `steps` PGD steps, random start."""

    # step_size None = 2.5 * eps / steps (Madry's rule); CIFAR recipe: eps 8/255, 10 x 2/255.
    defaults = {**TRAIN_OPTIONS, **ADVERSARIAL_OPTIONS}
    omitted_at_default = OMITTED_AT_DEFAULT

    def build(self, task, model_spec, config, context):
        budget, cross_entropy = AttackBudget("madry", config), EpochCrossEntropy()
        module = train_defended(task, model_spec, config, context,
                                madry_loss(budget, config["steps"], cross_entropy),
                                f"madry {task.name}", on_epoch_start=budget.on_epoch_start,
                                cross_entropy=cross_entropy)
        return ClassifierModel(module, task.num_classes)
