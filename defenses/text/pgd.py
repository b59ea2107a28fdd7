"""PGD-K adversarial training in the word-embedding space (Madry et al. 2018, as RanMASK's baseline
"PGD-10" and FreeLB's "PGD" apply it to text), one of RanMASK's Table 4-7 baselines.

Each batch's input embeddings X get a perturbation delta in the l2 ball ||delta||_F <= `max_norm`
per text (the Frobenius norm over all its tokens' embeddings), found by K = `steps` ascent steps
delta <- Proj(delta + `step_size` g / ||g||_F) on the loss, from a random start
U(-1, 1) * `init_magnitude` / sqrt(tokens x embedding_dim) on the text's tokens (padding stays 0).
The model is then trained on the loss at X + delta only: the clean batch is not used (Madry's
objective, and the reference's "for PGD-K, clean batch is not used when training").

Defaults: K = 10 (the papers' PGD-10); step size, start and ball are the RanMASK reference code's
(zjiehang/RanMASK args.py, used for its PGD-10 rows: adv_learning_rate 0.3, adv_init_mag 0.5,
adv_max_norm 0.05, l2), since neither paper prints them. The reference also clips gradients to
norm 1 and trains RoBERTa with AdamW; here the suite's training loop (Adam, `lr`) is used. The ball
is in the model's own embedding units: a TextCNN trained from scratch has embeddings of norm about
8 per token (N(0, 1) initialisation, 64 dimensions), the pretrained MiniLM's have about 1.1, so the
same `max_norm` is a far smaller perturbation relative to a TextCNN's embeddings.

Works with any text model that exposes its input embeddings (`embedding`, `forward_embeddings`,
`tokenizer`: textcnn, bilstm, hf); the deployed model is the trained classifier (argmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit

PGD_DEFAULTS = {"steps": 10, "step_size": 0.3, "init_magnitude": 0.5, "max_norm": 0.05}


def require_embedding_model(module, defense: str):
    """The model, if it exposes what embedding-space training needs, else a clear error."""
    missing = [name for name in ("embedding", "forward_embeddings", "tokenizer")
               if not hasattr(module, name)]
    if missing:
        raise UsageError(f"defense '{defense}' perturbs input embeddings, but model "
                         f"{type(module).__name__} has no {', '.join(missing)}; use a text model "
                         f"that exposes them (textcnn, bilstm, hf)")
    return module


def check_perturbation_config(config: dict, defense: str) -> None:
    if config["steps"] < 1:
        raise UsageError(f"defense '{defense}': steps must be >= 1, got {config['steps']}")
    for key in ("step_size", "init_magnitude", "max_norm"):
        if config[key] < 0:
            raise UsageError(f"defense '{defense}': {key} must be >= 0, got {config[key]}")


def embed(model, texts, device):
    """(input embeddings, attention mask) of a batch of texts, the embeddings in the graph."""
    input_ids, attention_mask = model.tokenizer(texts)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return model.embedding(input_ids), attention_mask


def random_start(embeddings: torch.Tensor, attention_mask: torch.Tensor, magnitude: float) -> torch.Tensor:
    """U(-1, 1) on the text's tokens scaled by magnitude / sqrt(tokens x dim), as FreeLB starts."""
    if magnitude == 0:
        return torch.zeros_like(embeddings)
    mask = attention_mask.to(embeddings.dtype).unsqueeze(2)
    dims = attention_mask.sum(dim=1).to(embeddings.dtype) * embeddings.shape[-1]
    start = torch.empty_like(embeddings).uniform_(-1, 1) * mask
    return start * (magnitude / dims.sqrt()).view(-1, 1, 1)


def ascend(delta: torch.Tensor, gradient: torch.Tensor, step_size: float, max_norm: float) -> torch.Tensor:
    """delta + step_size g / ||g||_F, projected on the ball ||delta||_F <= max_norm (0: no ball)."""
    norm = gradient.flatten(1).norm(dim=1).clamp(min=1e-8).view(-1, 1, 1)
    delta = (delta + step_size * gradient / norm).detach()
    if max_norm > 0:
        delta_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
        delta = delta * torch.where(delta_norm > max_norm, max_norm / delta_norm.clamp(min=1e-12), 1.0)
    return delta


def pgd_delta(model, embeddings, attention_mask, labels, config: dict) -> torch.Tensor:
    """The K-step PGD perturbation of `embeddings` (its gradient reaches no parameter)."""
    base = embeddings.detach()
    delta = random_start(base, attention_mask, config["init_magnitude"])
    for _ in range(config["steps"]):
        delta.requires_grad_()
        loss = F.cross_entropy(model.forward_embeddings(base + delta, attention_mask), labels)
        gradient, = torch.autograd.grad(loss, delta)
        delta = ascend(delta, gradient, config["step_size"], config["max_norm"])
    return delta


@register_defense("pgd-k", modality="text")
class PGDK:
    """PGD-K adversarial training on word embeddings (K = 10: RanMASK's PGD-10 baseline)."""

    defaults = {**TRAIN_DEFAULTS, **PGD_DEFAULTS}

    def build(self, task, model_spec, config, context):
        check_perturbation_config(config, "pgd-k")
        module = require_embedding_model(context.build_model(model_spec, task), "pgd-k")

        def adversarial_loss(model, texts, labels):
            embeddings, attention_mask = embed(model, texts, labels.device)
            delta = pgd_delta(model, embeddings, attention_mask, labels, config)
            return F.cross_entropy(model.forward_embeddings(embeddings + delta, attention_mask), labels)

        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=adversarial_loss, description=f"pgd-{config['steps']} {task.name}"))
        return ClassifierModel(module, task.num_classes)
