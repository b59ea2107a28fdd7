"""What the word-level smoothing defenses (RanMASK, SAFER) share: a deployed model that classifies
random transformations of a text's words with a base text classifier.

Every noisy copy of a text is one row of small integers per word (RanMASK: kept or masked; SAFER:
which member of the word's perturbation set), drawn from a generator seeded per example. The hot
path classifies each *distinct* row once and counts it with its multiplicity, so the class counts
are exactly those of classifying every copy; rows are turned into token ids directly when the
tokenizer is word-level (one id per word), and into strings otherwise; everything is batched
across the examples of a call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from benchmark import certify as stats
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN, Certificate
from benchmark.models.text import WordTokenizer

ENSEMBLES = ("vote", "logit")
# The vote's deployed decision: "argmax" of the vote counts, which never abstains (RanMASK's
# PREDICT, Algorithm 2, and SAFER's ensemble); "cohen" is Cohen et al.'s PREDICT, which abstains
# unless a two-sided binomial test at predict_alpha separates the top two counts.
PREDICT_RULES = ("argmax", "cohen")
SMOOTHING_DEFAULTS = {"ensemble": "vote", "predict_rule": "argmax", "predict_samples": 100,
                      "predict_alpha": 0.05, "certify_n0": 100, "certify_n": 5000,
                      "eval_batch_size": 1024}
# Settings that change how the trained model is used, not how it is trained (shared cache entry).
SMOOTHING_INFERENCE_KEYS = tuple(SMOOTHING_DEFAULTS)
# The noisy copies (before duplicates are merged) one certification pass draws: its memory is a
# few bytes per copy and word, and its distinct copies are classified eval_batch_size at a time.
CERTIFY_COPIES = 200_000


def check_smoothing_config(config: dict, name: str) -> None:
    if config["ensemble"] not in ENSEMBLES:
        raise UsageError(f"defense '{name}': ensemble must be one of {', '.join(ENSEMBLES)}, got "
                         f"{config['ensemble']!r}")
    for key in ("predict_samples", "certify_n0", "certify_n", "eval_batch_size"):
        if config[key] < 1:
            raise UsageError(f"defense '{name}': {key} must be >= 1, got {config[key]}")
    if config["predict_rule"] not in PREDICT_RULES:
        raise UsageError(f"defense '{name}': predict_rule must be one of {', '.join(PREDICT_RULES)}, "
                         f"got {config['predict_rule']!r}")
    if not 0 < config["predict_alpha"] < 1:
        raise UsageError(f"defense '{name}': predict_alpha must be in (0, 1)")


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of one example's noise: seeded by (seed, position in the call), so an
    example's draws do not depend on how the other examples are batched."""
    return np.random.default_rng([int(seed), int(index)])


def call_rngs(count: int) -> list[np.random.Generator]:
    """Generators for a predict/probs call, drawn from numpy's global state (the harness seeds it per
    batch, so deployed predictions are reproducible)."""
    seed = int(np.random.randint(0, 2**31 - 1))
    return [example_rng(seed, i) for i in range(count)]


@dataclass
class Plan:
    """One text prepared for noise: its words, and the token ids of its words when the tokenizer is
    word-level (truncated to the tokenizer's max_length like the tokenizer itself)."""

    words: list[str]
    ids: np.ndarray | None
    extra: dict = field(default_factory=dict)

    @property
    def h(self) -> int:
        return len(self.words)


@dataclass
class Noisy:
    """The noisy copies of one text: `rows` (copies x words), `inverse` (copy -> distinct row) and the
    base classifier's logits on each distinct row."""

    rows: np.ndarray
    inverse: np.ndarray
    logits: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)[self.inverse]

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.predictions, minlength=num_classes)

    def weights(self) -> np.ndarray:
        return np.bincount(self.inverse, minlength=len(self.logits)).astype(np.float64)


def split_like(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Consecutive pieces of `array` with the given sizes."""
    return np.split(array, np.cumsum(sizes)[:-1])


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of a small-integer matrix in lexicographic order (np.unique(axis=0)'s
    result) and, for each row, the index of its distinct row. A lexsort over the columns, 6-10x
    faster than np.unique's sort of whole rows, which was a quarter of certification's time."""
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], inverse


class SmoothedText:
    """A smoothed text classifier. Subclasses define the noise: `plan(text)` (or `plans(xs)`),
    `sample(plan, n, rng)` (an n x h integer matrix), `render_ids(plan, rows)` and
    `render_texts(plan, rows)`, and the certificate: `certificate(plan, counts0, noisy, label,
    alpha, rng)`.

    Certificates bound the vote of the base classifier, so only the vote-ensemble deployment (a
    subclass setting `certify = SmoothedText.certify_votes`) certifies: a logit ensemble can decide
    differently from the vote it would certify."""

    randomized = True
    unit = ""

    def __init__(self, module, num_classes: int, config: dict):
        self.module = module.eval()
        self.num_classes = num_classes
        self.config = config
        self.word_level = isinstance(module.tokenizer, WordTokenizer)

    # Noise: subclass hooks -------------------------------------------------------------------
    def plan(self, text: str) -> Plan:
        words = text.split()
        ids = np.asarray(self.module.tokenizer.ids(text), dtype=np.int64) if self.word_level else None
        return Plan(words, ids)

    def plans(self, xs: Sequence[str]) -> list[Plan]:
        """The plans of many texts (a subclass may prepare them together, e.g. in one batched pass)."""
        return [self.plan(x) for x in xs]

    def sample(self, plan: Plan, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def render_ids(self, plan: Plan, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def render_texts(self, plan: Plan, rows: np.ndarray) -> list[str]:
        raise NotImplementedError

    # Classification of noisy copies ----------------------------------------------------------
    def _chunked(self, forward, count: int) -> np.ndarray:
        size = self.config["eval_batch_size"]
        return np.concatenate([forward(s, s + size).float().cpu().numpy() for s in range(0, count, size)])

    @torch.no_grad()
    def _logits_of_ids(self, id_rows: list[np.ndarray]) -> list[np.ndarray]:
        """Logits of many token-id matrices; each matrix's rows share a length, so matrices of equal
        width are stacked and run in chunks with no padding at all."""
        device = next(self.module.parameters()).device
        by_width: dict[int, list[int]] = {}
        for index, ids in enumerate(id_rows):
            by_width.setdefault(ids.shape[1], []).append(index)
        results: list[np.ndarray] = [np.empty(0)] * len(id_rows)
        for members in by_width.values():
            stacked = torch.as_tensor(np.concatenate([id_rows[i] for i in members]), device=device)
            mask = torch.ones_like(stacked)
            logits = self._chunked(lambda a, b: self.module(stacked[a:b], mask[a:b]), len(stacked))
            for i, part in zip(members, split_like(logits, [len(id_rows[i]) for i in members])):
                results[i] = part
        return results

    @torch.no_grad()
    def _logits_of_texts(self, texts: list[list[str]]) -> list[np.ndarray]:
        flat = [t for group in texts for t in group]
        logits = self._chunked(lambda a, b: self.module.classify(flat[a:b]), len(flat))
        return split_like(logits, [len(group) for group in texts])

    def every_draw(self, plan: Plan, limit: int) -> np.ndarray | None:
        """Every noisy copy the noise can draw for `plan`, one row each, when they are equally
        likely and at most `limit` many (exact vote shares for the audit); None otherwise."""
        return None

    def noisy(self, plans: Sequence[Plan], n: int | Sequence[int],
              rngs: Sequence[np.random.Generator]) -> list[Noisy]:
        """Draw n noisy copies of each text (or n[i] of text i, drawn in order of the plans) and
        classify each distinct copy once, all in one batched pass."""
        counts = [n] * len(plans) if isinstance(n, int) else n
        return self.classify_rows(plans, [self.sample(plan, count, rng)
                                          for plan, count, rng in zip(plans, counts, rngs)])

    def classify_rows(self, plans: Sequence[Plan], row_sets: Sequence[np.ndarray]) -> list[Noisy]:
        """Classify the given noisy copies of each text (rows), each distinct copy once."""
        drawn = []
        for plan, rows in zip(plans, row_sets):
            # Words past the tokenizer's max_length never reach the classifier: ignore them when
            # looking for duplicates.
            visible = rows[:, :len(plan.ids)] if plan.ids is not None else rows
            unique, inverse = distinct_rows(visible)
            drawn.append((rows, unique, inverse))
        if self.word_level:
            logits = self._logits_of_ids([self.render_ids(p, u) for p, (_, u, _) in zip(plans, drawn)])
        else:
            logits = self._logits_of_texts([self.render_texts(p, u) for p, (_, u, _) in zip(plans, drawn)])
        return [Noisy(rows, inverse, lg) for (rows, _, inverse), lg in zip(drawn, logits)]

    # The deployed rule ------------------------------------------------------------------------
    def _scores(self, xs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, probabilities) of the deployed ensemble over `predict_samples` copies."""
        plans = self.plans(xs)
        noisy = self.noisy(plans, self.config["predict_samples"], call_rngs(len(plans)))
        labels = np.empty(len(plans), dtype=np.int64)
        probs = np.empty((len(plans), self.num_classes))
        for i, result in enumerate(noisy):
            if self.config["ensemble"] == "vote":
                counts = result.counts(self.num_classes)
                probs[i] = counts / counts.sum()
                labels[i] = (stats.predict(counts, self.config["predict_alpha"])
                             if self.config["predict_rule"] == "cohen" else int(np.argmax(counts)))
            else:  # the seed's logit ensemble: the mean of the l2-normalised logits
                normalised = result.logits / np.maximum(np.linalg.norm(result.logits, axis=1, keepdims=True), 1e-12)
                mean = (normalised * result.weights()[:, None]).sum(axis=0) / len(result.inverse)
                probs[i] = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
                labels[i] = int(np.argmax(mean))
        return labels, probs

    def predict(self, xs: Sequence[str]) -> np.ndarray:
        return self._scores(list(xs))[0] if len(xs) else np.zeros(0, dtype=np.int64)

    def probs(self, xs: Sequence[str]) -> np.ndarray:
        return self._scores(list(xs))[1] if len(xs) else np.zeros((0, self.num_classes))

    def expected_probs(self, xs: Sequence[str], samples: int) -> np.ndarray:
        """EOT view: the base classifier's softmax averaged over `samples` noisy copies."""
        xs = list(xs)
        if not xs:
            return np.zeros((0, self.num_classes))
        out = np.empty((len(xs), self.num_classes))
        for i, result in enumerate(self.noisy(self.plans(xs), samples, call_rngs(len(xs)))):
            softmax = np.exp(result.logits - result.logits.max(axis=1, keepdims=True))
            softmax /= softmax.sum(axis=1, keepdims=True)
            out[i] = (softmax * result.weights()[:, None]).sum(axis=0) / len(result.inverse)
        return out

    def vote_counts(self, xs: Sequence[str], samples: int, seed: int,
                    exact_limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The base classifier's votes on noisy copies of each text, for the audit: (counts
        (texts x classes), exact (texts,)). A text whose copies are all equally likely and at most
        `exact_limit` many counts each of them once (exact: its vote shares are the smoothed
        classifier's own); any other draws `samples` copies from one generator seeded by `seed`
        alone, the same for every text (common random numbers: texts of one length get the same
        copies, so their shares differ by the words, not by the noise)."""
        plans = self.plans(list(xs))
        every = [self.every_draw(plan, exact_limit) for plan in plans]
        rows = [e if e is not None else self.sample(plan, samples, example_rng(seed, 0))
                for plan, e in zip(plans, every)]
        exact = np.array([e is not None for e in every])
        if not self.word_level:
            noisy = self.classify_rows(plans, rows)
            return np.stack([result.counts(self.num_classes) for result in noisy]), exact
        # The audit's candidates differ from one another in a word or two, so most of their noisy
        # copies are the same token ids (with common random numbers, every copy that masks the
        # changed word): classify each distinct copy of the whole call once.
        counts = np.zeros((len(plans), self.num_classes), dtype=np.int64)
        by_width: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, (plan, drawn) in enumerate(zip(plans, rows)):
            ids = self.render_ids(plan, drawn)
            by_width.setdefault(ids.shape[1], []).append((i, ids))
        for members in by_width.values():
            unique, inverse = distinct_rows(np.concatenate([ids for _, ids in members]))
            predictions = self._logits_of_ids([unique])[0].argmax(axis=1)[inverse]
            for (i, _), part in zip(members, split_like(predictions, [len(ids) for _, ids in members])):
                counts[i] = np.bincount(part, minlength=self.num_classes)
        return counts, exact

    # Certification -----------------------------------------------------------------------------
    def certify_votes(self, xs: Sequence[str], ys: np.ndarray, alpha: float, seed: int) -> list[Certificate]:
        """Cohen's CERTIFY with the defense's own bound: certify_n0 copies pick the class,
        certify_n others bound its probability, in groups of examples whose copies (selection and
        estimation together) fit one batched pass of at most CERTIFY_COPIES copies."""
        n0, n = self.config["certify_n0"], self.config["certify_n"]
        group = max(1, CERTIFY_COPIES // (n0 + n))
        certificates = []
        for start in range(0, len(xs), group):
            indices = range(start, min(start + group, len(xs)))
            plans = self.plans([xs[i] for i in indices])
            rngs = [example_rng(seed, i) for i in indices]
            # Every example's selection copies, then its estimation copies, from its generator.
            drawn = self.noisy(plans + plans, [n0] * len(plans) + [n] * len(plans), rngs + rngs)
            selection, estimation = drawn[:len(plans)], drawn[len(plans):]
            for i, plan, rng, first, second in zip(indices, plans, rngs, selection, estimation):
                certificates.append(self.certificate(plan, first.counts(self.num_classes), second,
                                                     int(ys[i]), alpha, rng))
        return certificates

    def certificate(self, plan: Plan, counts0: np.ndarray, noisy: Noisy, label: int, alpha: float,
                    rng: np.random.Generator) -> Certificate:
        raise NotImplementedError

    def abstention(self, p_lower: float, samples: int, details: dict) -> Certificate:
        return Certificate(ABSTAIN, False, 0.0, self.unit, abstained=True, p_lower=p_lower,
                           samples=samples, details=details)

