"""STRIP (Gao et al., "Design and Evaluation of a Multi-Domain Trojan Detection Method on Deep Neural
Networks", IEEE TDSC 2021; text version as in OpenBackdoor's STRIPDefender): a trigger dominates
the prediction, so a triggered input keeps its (target) prediction when much of it is replaced,
where a clean input does not. The entropy of the predictions on perturbed copies is therefore low
for triggered inputs; inputs below a threshold are rejected.

- Perturbation: `repeat` copies of the input; in each, int(len * `swap_ratio`) positions (drawn with
  replacement) take, in turn, the highest-TF-IDF words of one reference text drawn at random.
- Score: the mean over the copies of the Shannon entropy (bits) of the base model's probabilities.
- Threshold: the `frr` quantile of the reference texts' scores (the false rejection rate on clean
  text); an input scoring below it is rejected.
- Reference texts: STRIP assumes a small clean held-out set (OpenBackdoor: its clean dev split).
  Here `n_reference` training examples that were not poisoned (the split's `poisoned` indices: a
  backdoor cell's poisoned split carries them) are held out of training, seeded.
- A rejected input is predicted ABSTAIN: on clean test inputs it counts as a benign error, on
  triggered ones as an attack failure. The base model is trained as `vanilla` on the rest.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit


def top_tfidf_words(texts: list[str]) -> list[list[str]]:
    """Each text's words by decreasing TF-IDF weight within the reference set."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(token_pattern=r"\S+", lowercase=False)
    weights = vectorizer.fit_transform(texts).toarray()
    vocabulary = vectorizer.get_feature_names_out()
    return [list(vocabulary[np.argsort(-row, kind="stable")[:int((row > 0).sum())]])
            for row in weights]


def hold_out_reference(task, n_reference: int, seed: int, defense: str):
    """A clean held-out set drawn from the training split: `n_reference` examples that were not
    poisoned (the poisoned split's `poisoned` indices), seeded. Returns their indices (sorted) and
    the training split without them, which the defense trains on."""
    poisoned = set(getattr(task.train, "poisoned", []))
    clean = [i for i in range(len(task.train)) if i not in poisoned]
    if n_reference >= len(clean):
        raise UsageError(f"{defense}: n_reference = {n_reference} leaves no clean training example "
                         f"to train on ({len(clean)} clean)")
    reference = np.sort(np.random.default_rng([seed, 1]).choice(clean, size=n_reference,
                                                                 replace=False))
    return reference, task.train.subset(np.setdiff1d(np.arange(len(task.train)), reference), "train")


class StripModel(ClassifierModel):
    """The base classifier, rejecting inputs whose perturbed copies it classifies with low entropy."""

    def __init__(self, module, num_classes: int, reference: list[str], config: dict, seed: int):
        super().__init__(module, num_classes)
        self.config = config
        self.replacements = top_tfidf_words(reference)
        self.threshold = float(np.quantile(self.entropy(reference, np.random.default_rng(seed)),
                                           config["frr"]))

    def perturb(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if not words:
            return text
        donor = self.replacements[int(rng.integers(len(self.replacements)))]
        count = min(int(len(words) * self.config["swap_ratio"]), len(donor))
        for position, word in zip(rng.integers(0, len(words), size=count), donor):
            words[position] = word
        return " ".join(words)

    def entropy(self, xs, rng: np.random.Generator) -> np.ndarray:
        """Mean entropy (bits) of the predictions on `repeat` perturbed copies of each input."""
        repeat = self.config["repeat"]
        copies = [self.perturb(x, rng) for x in xs for _ in range(repeat)]
        probs = np.clip(self.probs(copies), 1e-12, 1.0)
        return (-(probs * np.log2(probs)).sum(axis=1)).reshape(len(xs), repeat).mean(axis=1)

    def predict(self, xs) -> np.ndarray:
        """The base prediction, or ABSTAIN below the threshold (the global numpy state seeds the
        perturbations, which the evaluator sets per batch)."""
        predictions = super().predict(xs)
        if len(xs):
            rng = np.random.default_rng(np.random.randint(2**31))
            predictions[self.entropy(list(xs), rng) < self.threshold] = ABSTAIN
        return predictions


@register_defense("strip", modality="text", backdoor=True)
class Strip:
    """STRIP: reject inputs whose predictions stay confident under heavy word replacement."""

    defaults = {**TRAIN_DEFAULTS, "repeat": 5, "swap_ratio": 0.5, "frr": 0.01, "n_reference": 200}

    def build(self, task, model_spec, config, context):
        if not 0 < config["frr"] < 1 or not 0 < config["swap_ratio"] <= 1 or config["repeat"] < 1:
            raise UsageError("strip: frr must be in (0, 1), swap_ratio in (0, 1], repeat >= 1")
        reference, train = hold_out_reference(task, config["n_reference"], context.seed, "strip")
        trained_on = dataclasses.replace(task, train=train)
        module = context.build_model(model_spec, trained_on)
        module = context.trained(module, lambda m: fit(
            m, train.xs, train.ys, epochs=config["epochs"], batch_size=config["batch_size"],
            lr=config["lr"], weight_decay=config["weight_decay"], seed=context.seed,
            description=f"strip {task.name}"))
        return StripModel(module, task.num_classes, [task.train.xs[i] for i in reference], config,
                          context.seed)
