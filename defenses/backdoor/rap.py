"""RAP (Yang, Lin, Li, Zhou and Sun, "RAP: Robustness-Aware Perturbations for Defending against
Backdoor Attacks on NLP Models", EMNLP 2021; the authors' code lancopku/RAP and OpenBackdoor's
RAPDefender): a backdoored model holds its target prediction on a triggered input far more firmly
than on a clean one. RAP trains a rare-word perturbation that lowers the target ("protect") class
probability of clean inputs by a set amount; at test time an input predicted as the protect class
whose probability drops by less than a threshold when that word is inserted is rejected.

- Protect label: the class the attacker targets, which RAP's defender knows; here the label of the
  poisoned training examples (the poisoner's target).
- Construction: the RAP word (`rap_word`, "cf" as in the paper and both codes) is inserted at the
  start of each clean reference text of the protect label, and only its word-embedding row is
  trained, `rap_epochs` (5) passes in batches of `rap_batch_size` (32) at step `rap_lr` (1e-2), to
  minimise  scale * mean(max(d + u_low, 0)) + mean(max(-u_up - d, 0)),  with d = p(protect | RAP
  word + x) - p(protect | x): the probability should drop by between u_low = 0.1 and u_up = 0.3.
  After each step the row is rescaled to its original norm. `gradient = "fresh"` steps with each
  batch's own gradient (plain gradient descent); "accumulated" is both reference codes, which never
  zero the gradient (lancopku/RAP: "to get faster convergence"). The model runs in eval mode
  (OpenBackdoor). A word-level model whose vocabulary lacks the RAP word gets a new row for it,
  starting from the <unk> row (what the model saw for that word until then).
- Threshold: the `frr` (1%, OpenBackdoor's default) percentile of the drops
  p(protect | x) - p(protect | RAP word + x) over the reference texts of the protect label that the
  model predicts as that label. A test input predicted as the protect label with a smaller drop is
  rejected (ABSTAIN: on clean inputs a benign error, on triggered ones an attack failure); inputs
  predicted as another class pass.
- Reference texts: RAP uses clean held-out data of the protect label (the authors' held-out dev
  split). Here, as for STRIP, `n_reference` training examples that were not poisoned are held out
  of training (seeded; the same draw as STRIP's), and those of the protect label are used.
- The trained row is the deployed model's: a test text that contains the RAP word is classified
  with it. With "cf", one of the four BadNets trigger words (OpenBackdoor's, and this suite's),
  the BadNets texts triggered by "cf" meet the perturbed embedding too.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN
from benchmark.models.text import UNK, WordTokenizer
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit
from defenses.backdoor.strip import hold_out_reference

GRADIENTS = ("fresh", "accumulated")


def insert_word(word: str, texts) -> list[str]:
    return [f"{word} {text}" for text in texts]


def embedding_row(module, word: str) -> int:
    """The index of `word`'s embedding row, adding one (a copy of <unk>'s) to a word-level model
    whose vocabulary lacks it."""
    tokenizer = module.tokenizer
    if isinstance(tokenizer, WordTokenizer):
        word = word.lower()
        if word not in tokenizer.stoi:
            old = module.embedding
            grown = nn.Embedding(old.num_embeddings + 1, old.embedding_dim, padding_idx=old.padding_idx,
                                 device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                grown.weight[:-1] = old.weight
                grown.weight[-1] = old.weight[tokenizer.stoi[UNK]]
            module.embedding = grown
            tokenizer.stoi[word] = len(tokenizer.itos)
            tokenizer.itos.append(word)
        return tokenizer.stoi[word]
    pieces = tokenizer.hf_tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(pieces) != 1:
        raise UsageError(f"rap: rap_word {word!r} is {len(pieces)} tokens for this model's "
                         f"tokenizer; choose a rare word that is one token")
    return pieces[0]


def protect_probability(module, texts, label: int) -> torch.Tensor:
    return torch.softmax(module.classify(list(texts)), dim=1)[:, label]


def construct_perturbation(module, texts: list[str], label: int, config: dict) -> None:
    """Train the RAP word's embedding row in place (the module's other weights stay fixed)."""
    row = embedding_row(module, config["rap_word"])
    weight = module.embedding.weight
    norm = float(weight[row].detach().norm())
    module.eval()
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    weight.requires_grad_(True)
    weight.grad = None
    try:
        for _ in range(config["rap_epochs"]):
            for start in range(0, len(texts), config["rap_batch_size"]):
                batch = texts[start:start + config["rap_batch_size"]]
                with torch.no_grad():
                    clean = protect_probability(module, batch, label)
                drop = protect_probability(module, insert_word(config["rap_word"], batch), label) - clean
                loss = config["scale"] * torch.relu(drop + config["u_low"]).mean() \
                    + torch.relu(-config["u_up"] - drop).mean()
                if config["gradient"] == "fresh":
                    weight.grad = None
                loss.backward()
                with torch.no_grad():
                    weight[row] -= config["rap_lr"] * weight.grad[row]
                    weight[row] *= norm / float(weight[row].norm())
    finally:
        weight.grad = None
        for parameter in trainable:
            parameter.requires_grad_(True)
    module.eval()


class RapModel(ClassifierModel):
    """The model with its RAP word trained, rejecting protect-label predictions that the RAP word
    barely moves."""

    def __init__(self, module, num_classes: int, reference: list[str], label: int, config: dict):
        super().__init__(module, num_classes)
        self.label = label
        self.rap_word = config["rap_word"]
        construct_perturbation(module, reference, label, config)
        probs, drops = self.drops(reference)
        drops = drops[probs.argmax(axis=1) == label]
        if not len(drops):
            raise UsageError(f"rap: the model predicts none of the {len(reference)} reference texts "
                             f"of the protect label {label} as that label; no threshold can be set")
        self.threshold = float(np.percentile(drops, 100 * config["frr"]))

    def drops(self, xs) -> tuple[np.ndarray, np.ndarray]:
        """The probabilities of `xs` and the drop of the protect class's when the RAP word is
        inserted."""
        probs = self.probs(xs)
        perturbed = self.probs(insert_word(self.rap_word, xs))
        return probs, probs[:, self.label] - perturbed[:, self.label]

    def predict(self, xs) -> np.ndarray:
        if not len(xs):
            return np.zeros(0, dtype=np.int64)
        probs, drops = self.drops(list(xs))
        predictions = probs.argmax(axis=1)
        predictions[(predictions == self.label) & (drops < self.threshold)] = ABSTAIN
        return predictions


@register_defense("rap", modality="text", backdoor=True)
class Rap:
    """RAP: reject protect-label predictions that a trained rare-word perturbation barely moves."""

    defaults = {**TRAIN_DEFAULTS, "rap_word": "cf", "rap_epochs": 5, "rap_batch_size": 32,
                "rap_lr": 1e-2, "u_low": 0.1, "u_up": 0.3, "scale": 1.0, "gradient": "fresh",
                "frr": 0.01, "n_reference": 200}
    # The perturbation and the threshold act on a trained model: entries differing only in them
    # share its weights.
    inference_keys = ("rap_word", "rap_epochs", "rap_batch_size", "rap_lr", "u_low", "u_up", "scale",
                      "gradient", "frr")

    @staticmethod
    def check(config: dict) -> None:
        problems = []
        if not 0 < config["u_low"] < config["u_up"] < 1:
            problems.append(f"u_low < u_up must both be in (0, 1), got u_low = {config['u_low']}, "
                            f"u_up = {config['u_up']}")
        if not 0 < config["frr"] < 1:
            problems.append(f"frr must be in (0, 1), got {config['frr']}")
        if config["gradient"] not in GRADIENTS:
            problems.append(f"gradient must be one of {', '.join(GRADIENTS)}, got {config['gradient']!r}")
        for key in ("rap_epochs", "rap_batch_size", "n_reference"):
            if config[key] < 1:
                problems.append(f"{key} must be >= 1, got {config[key]}")
        if config["rap_lr"] <= 0 or config["scale"] <= 0:
            problems.append("rap_lr and scale must be > 0")
        if len(config["rap_word"].split()) != 1:
            problems.append(f"rap_word must be one word, got {config['rap_word']!r}")
        if problems:
            raise UsageError("rap: " + "; ".join(problems))

    def build(self, task, model_spec, config, context):
        self.check(config)
        poisoned = np.asarray(getattr(task.train, "poisoned", []), dtype=np.int64)
        if not len(poisoned):
            raise UsageError("rap: the training split carries no poisoned examples, so there is no "
                             "protect label; RAP runs in backdoor cells (a poisoner's target)")
        label = int(task.train.ys[poisoned[0]])
        reference, train = hold_out_reference(task, config["n_reference"], context.seed, "rap")
        protect = [task.train.xs[i] for i in reference if task.train.ys[i] == label]
        if not protect:
            raise UsageError(f"rap: none of the {config['n_reference']} reference texts has the "
                             f"protect label {label}; raise n_reference")
        module = context.build_model(model_spec, dataclasses.replace(task, train=train))
        module = context.trained(module, lambda m: fit(
            m, train.xs, train.ys, epochs=config["epochs"], batch_size=config["batch_size"],
            lr=config["lr"], weight_decay=config["weight_decay"], seed=context.seed,
            description=f"rap {task.name}"))
        return RapModel(module, task.num_classes, protect, label, config)
