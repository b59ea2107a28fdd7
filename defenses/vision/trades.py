"""TRADES (Zhang et al. 2019): cross-entropy on natural inputs plus beta times the KL divergence
between the predictions on natural and adversarial inputs, the adversarial input maximising that
KL in the l-inf ball (start 0.001 * N(0, 1), as the reference code)."""
import torch
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from defenses.vision.common import (ADVERSARIAL_OPTIONS, OMITTED_AT_DEFAULT, TRAIN_OPTIONS,
                                    AttackBudget, EpochCrossEntropy, eval_mode, kl_to, pgd_linf,
                                    train_defended)


def trades_adversarial(model, x, eps, step_size, steps):
    with eval_mode(model):
        with torch.no_grad():
            natural = torch.softmax(model(x), dim=1)
        return pgd_linf(lambda a: kl_to(model(a), natural, reduction="sum"), x, eps, step_size,
                        steps, start="gaussian")


def trades_loss(budget: AttackBudget, steps: int, beta: float,
                cross_entropy: EpochCrossEntropy | None = None):
    def loss_fn(model, x, y):
        adversarial = trades_adversarial(model, x, budget.eps, budget.step_size, steps)
        natural_logits = model(x)
        if cross_entropy is not None:
            cross_entropy.add(natural_logits, y)
        robust = kl_to(model(adversarial), torch.softmax(natural_logits, dim=1))
        return F.cross_entropy(natural_logits, y) + beta * robust
    return loss_fn


@register_defense("trades", modality="image")
class Trades:
    """TRADES (Zhang et al. 2019): CE(natural) + beta * KL(natural || adversarial), beta = 6."""

    defaults = {**TRAIN_OPTIONS, **ADVERSARIAL_OPTIONS, "beta": 6.0}
    omitted_at_default = OMITTED_AT_DEFAULT

    def build(self, task, model_spec, config, context):
        budget, cross_entropy = AttackBudget("trades", config), EpochCrossEntropy()
        module = train_defended(task, model_spec, config, context,
                                trades_loss(budget, config["steps"], config["beta"], cross_entropy),
                                f"trades {task.name}", on_epoch_start=budget.on_epoch_start,
                                cross_entropy=cross_entropy)
        return ClassifierModel(module, task.num_classes)
