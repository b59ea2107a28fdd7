"""FreeLB (Zhu et al., ICLR 2020): "free" large-batch adversarial training in the word-embedding
space, one of RanMASK's Table 4-7 baselines.

Algorithm 1 of the paper, per batch: delta_0 = U(-1, 1) * `init_magnitude` / sqrt(tokens x dim) on
the text's tokens; for t = 1..K (`steps`), the parameter gradient of (1/K) L(X + delta_{t-1}) is
accumulated and delta ascends on the same loss, delta_t = Proj(delta_{t-1} + `step_size` g / ||g||_F)
onto ||delta||_F <= `max_norm` per text (0: no ball); the parameters then take one step on the
accumulated gradient, the mean of the K adversarial losses (the clean loss is not a separate term).
The shared pieces (start, ascent step, projection) are PGD-K's (defenses.text.pgd).

Defaults: the FreeLB authors' SST-2 settings (zhuchen03/FreeLB,
fairseq-RoBERTa/launch/FreeLB/sst-fp32-clip.sh: adv-steps 2, adv-lr 0.1, rand-init-mag 1, max-norm
0.6); the paper's text is not in ../shared/papers. RanMASK's reference code runs FreeLB with its
own values (args.py: "for FreeLB default" 5 steps, step size 0.03, init 0.05, max norm 0, i.e. no
ball): set `steps`, `step_size`, `init_magnitude` and `max_norm` to those for its configuration.
As with PGD-K, the ball is in the model's embedding units (see defenses.text.pgd).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit
from defenses.text import pgd

FREELB_DEFAULTS = {"steps": 2, "step_size": 0.1, "init_magnitude": 1.0, "max_norm": 0.6}


def freelb_loss(model, embeddings, attention_mask, labels, config: dict) -> torch.Tensor:
    """(1/K) sum_t L(X + delta_{t-1}): its backward accumulates FreeLB's parameter gradient. Each
    delta is detached after its ascent step, as in the reference, so the sum's parameter gradient is
    the sum of the K steps' gradients."""
    delta = pgd.random_start(embeddings.detach(), attention_mask, config["init_magnitude"])
    total = 0.0
    for step in range(config["steps"]):
        delta.requires_grad_()
        loss = F.cross_entropy(model.forward_embeddings(embeddings + delta, attention_mask), labels)
        total = total + loss / config["steps"]
        if step == config["steps"] - 1:
            break
        gradient, = torch.autograd.grad(loss, delta, retain_graph=True)
        delta = pgd.ascend(delta, gradient, config["step_size"], config["max_norm"])
    return total


@register_defense("freelb", modality="text")
class FreeLB:
    """FreeLB: K ascent steps on word embeddings, parameter gradients accumulated over all K."""

    defaults = {**TRAIN_DEFAULTS, **FREELB_DEFAULTS}

    def build(self, task, model_spec, config, context):
        pgd.check_perturbation_config(config, "freelb")
        module = pgd.require_embedding_model(context.build_model(model_spec, task), "freelb")

        def accumulated_loss(model, texts, labels):
            embeddings, attention_mask = pgd.embed(model, texts, labels.device)
            return freelb_loss(model, embeddings, attention_mask, labels, config)

        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=accumulated_loss, description=f"freelb {task.name}"))
        return ClassifierModel(module, task.num_classes)
