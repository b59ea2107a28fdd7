"""RanMASK (Zeng et al., "Certified Robustness to Text Adversarial Attacks by Randomized [MASK]").

The base classifier is trained on texts whose words are masked at random at rate rho (the mask
token is the tokenizer's): of a text's h words, k = h - round(h * rho) are kept, uniformly. The
smoothed classifier ensembles masked copies by vote or by the mean of l2-normalised logits (both as in
the seed's code; `ensemble` names which, so they are separate leaderboard rows). Certification is the
seed's Algorithm 2: certify_n0 copies guess the class, certify_n copies give the one-sided
Clopper-Pearson bound p_lower, and the certified robustness is the largest d with
p_lower - beta * Delta(d) > 1/2, Delta(d) = 1 - C(h-d, k) / C(h, k). Theorem 1 defines beta as the
vote share of class c among the masks that keep a changed word *of the attacker's x'*, which no
estimate from x alone bounds, so `beta = "one"` (the default, Levine and Feizi's worst case) is the
sound certificate. The paper's approximation beta ~ p_c (`"p_c"`, the seed's default) and its Monte
Carlo estimator (`"monte_carlo"`, Algorithm 1, which averages over random position sets instead of
the attacker's worst choice) are heuristics: `rbench audit` breaks their certificates on
toy-sentiment (a kept set that holds "great" votes positive, so the true beta there is 1). The
certificate names its beta (the cell's certificate unit and each certificate's details). A
prediction is `certified` when it is correct and robust to at least one word; the radius is d in
words.

`masking = "lm"` is the seed's `with_lm` option, which it uses for attacks only: the h - k masked
words are drawn one after another without replacement, each with probability proportional to how
surprising a masked language model finds it in the unmasked text (its mean token cross-entropy), so
an out-of-place word, such as an adversarial substitute, is masked more often. The base classifier
is the same (trained with uniform masking, as in the seed). This deployment does NOT certify:
Delta(d) is the probability that a *uniform* draw of k kept words touches d given words, and the
weights are computed from the input itself, so an attacker who changes d words also changes where
the masks fall, with no bound on how much. It is an empirical defense (no certificate rows).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import certify as stats
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN, Certificate
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit
from defenses.text import smoothing
from defenses.text.smoothing import Plan, SmoothedText

BETAS = ("one", "p_c", "monte_carlo")
# What each beta is, as the certificate's threat description says it.
BETA_LABELS = {"one": "beta = 1", "p_c": "beta = p_c, heuristic",
               "monte_carlo": "beta = Monte Carlo estimate, heuristic"}
MASKINGS = ("uniform", "lm")


def keep_rows(h: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniform draws of k kept positions out of h, as an (n, h) boolean matrix. Row i uses the
    generator's next h doubles, so drawing copies one at a time gives the same rows."""
    order = rng.random((n, h)).argsort(axis=1)
    rows = np.zeros((n, h), dtype=bool)
    np.put_along_axis(rows, order[:, :k], True, axis=1)
    return rows


def weighted_keep_rows(weights: np.ndarray, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of k kept positions out of h = len(weights), as an (n, h) boolean matrix, where the
    h - k masked positions are drawn one after another without replacement, each with probability
    proportional to its weight among those left (what the seed draws with numpy's `choice`). Drawn
    as an exponential race: position j finishes at E_j / w_j with E_j ~ Exp(1), and the first h - k
    to finish are masked; zero-weight positions never finish, so they are masked last, in uniform
    random order. Row i uses the generator's next h doubles."""
    h = len(weights)
    uniforms = rng.random((n, h))
    times = np.full((n, h), np.inf)
    positive = weights > 0
    times[:, positive] = -np.log1p(-uniforms[:, positive]) / weights[positive]
    order = np.lexsort((uniforms, times), axis=1)  # by time, ties (never finishing) by the uniform
    rows = np.ones((n, h), dtype=bool)
    np.put_along_axis(rows, order[:, :h - k], False, axis=1)
    return rows


@torch.no_grad()
def lm_word_weights(model, tokenizer, texts: list[list[str]], batch_size: int) -> list[np.ndarray]:
    """The seed's masking weights of each text's words: the mean cross-entropy with which the masked
    LM predicts the word's own tokens in the unmasked text (one forward pass per text). Two cases
    the seed's pretrained LM never meets: a token outside the LM's vocabulary ([UNK]) counts as a
    uniform guess, log(vocabulary size), because the suite's own LM gives special tokens no
    probability at all; a word past the LM's max length weighs 0, as in the seed."""
    device = next(model.parameters()).device
    unknown_loss = float(np.log(len(tokenizer)))
    weights = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        encoded = tokenizer(batch, is_split_into_words=True, padding=True, truncation=True,
                            return_tensors="pt")
        ids = encoded["input_ids"]
        logits = model(input_ids=ids.to(device), attention_mask=encoded["attention_mask"].to(device)).logits
        losses = F.cross_entropy(logits.transpose(1, 2).float(), ids.to(device), reduction="none").cpu()
        if tokenizer.unk_token_id is not None:
            losses[ids == tokenizer.unk_token_id] = unknown_loss
        for i, words in enumerate(batch):
            word_of_token = np.array([-1 if w is None else w for w in encoded.word_ids(i)])
            scored = word_of_token >= 0
            totals = np.bincount(word_of_token[scored], losses[i].numpy()[scored], minlength=len(words))
            counts = np.bincount(word_of_token[scored], minlength=len(words))
            weights.append(totals[:len(words)] / np.maximum(counts[:len(words)], 1))
    return weights


def mask_words(words: list[str], keep: np.ndarray, mask_token: str) -> str:
    return " ".join(w if kept else mask_token for w, kept in zip(words, keep))


class MaskedSmoothing(SmoothedText):
    """Masked smoothing without a certificate: uniform masking deployed as a logit ensemble (the
    bound is about the vote), and the base of the certifying and the LM-masking deployments."""

    unit = "words"

    def __init__(self, module, num_classes: int, config: dict):
        super().__init__(module, num_classes, config)
        self.mask_token = module.tokenizer.mask_token
        if self.word_level:
            self.mask_id = module.tokenizer.stoi[self.mask_token]

    def plan(self, text: str) -> Plan:
        plan = super().plan(text)
        plan.extra["k"] = stats.ranmask_keep(plan.h, self.config["rho"])
        return plan

    def sample(self, plan: Plan, n: int, rng: np.random.Generator) -> np.ndarray:
        return keep_rows(plan.h, plan.extra["k"], n, rng)

    def every_draw(self, plan: Plan, limit: int) -> np.ndarray | None:
        """All C(h, k) kept sets (each equally likely), when there are at most `limit`."""
        h, k = plan.h, plan.extra["k"]
        if math.comb(h, k) > limit:
            return None
        rows = np.zeros((math.comb(h, k), h), dtype=bool)
        for row, kept in zip(rows, itertools.combinations(range(h), k)):
            row[list(kept)] = True
        return rows

    def render_ids(self, plan: Plan, rows: np.ndarray) -> np.ndarray:
        return np.where(rows[:, :len(plan.ids)], plan.ids[None, :], self.mask_id)

    def render_texts(self, plan: Plan, rows: np.ndarray) -> list[str]:
        return [mask_words(plan.words, row, self.mask_token) for row in rows]


class CertifiedMaskedSmoothing(MaskedSmoothing):
    """Uniform masking deployed as a vote, which certifies."""

    certify = SmoothedText.certify_votes

    def certificate(self, plan, counts0, noisy, label, alpha, rng) -> Certificate:
        counts = noisy.counts(self.num_classes)
        n = int(counts.sum())
        samples = int(counts0.sum()) + n
        guess, p_lower = stats.certify(counts0, counts, alpha)
        details = {"length": plan.h, "beta": self.config["beta"]}
        if guess == ABSTAIN:
            return self.abstention(p_lower, samples, details)
        if self.config["beta"] == "one":
            beta = 1.0
        elif self.config["beta"] == "p_c":
            beta = counts[guess] / n
        else:
            predictions = noisy.predictions

            def beta(d):
                return stats.monte_carlo_beta(noisy.rows, predictions, guess, d,
                                              self.config["beta_draws"], rng)
        d = stats.ranmask_certified_words(p_lower, plan.h, plan.extra["k"], beta)
        return Certificate(guess, guess == label and d >= 1, float(d), self.unit, False, p_lower,
                           samples, details)


class LMMaskedSmoothing(MaskedSmoothing):
    """Masks drawn by the masked LM's weights (vote or logit ensemble); empirical only, no certify."""

    def __init__(self, module, num_classes: int, config: dict, language_model):
        super().__init__(module, num_classes, config)
        self.lm, self.lm_tokenizer = language_model

    def plans(self, xs) -> list[Plan]:
        plans = super().plans(xs)
        weights = lm_word_weights(self.lm, self.lm_tokenizer, [p.words for p in plans],
                                  self.config["eval_batch_size"])
        for plan, word_weights in zip(plans, weights):
            plan.extra["weights"] = word_weights
        return plans

    def sample(self, plan: Plan, n: int, rng: np.random.Generator) -> np.ndarray:
        return weighted_keep_rows(plan.extra["weights"], plan.extra["k"], n, rng)


@register_defense("ranmask", modality="text", certifies=True, unit="words")
class RanMASK:
    """RanMASK: random word masking at rate rho, vote or logit ensemble, l0 certificate in words."""

    defaults = {**TRAIN_DEFAULTS, **smoothing.SMOOTHING_DEFAULTS, "rho": 0.9, "beta": "one",
                "beta_draws": 200, "masking": "uniform", "masked_lm": None}
    # masked_lm (masking = "lm" only): None for the suite's small masked LM trained on the task's
    # training text (as for BERT-Attack), or a hub name / local folder (the seed: roberta-base).
    inference_keys = smoothing.SMOOTHING_INFERENCE_KEYS + ("beta", "beta_draws", "masking", "masked_lm")

    @staticmethod
    def certificate_threat(config: dict) -> str:
        """Which beta the certificate uses (shown with its unit: the heuristic ones say so)."""
        return BETA_LABELS.get(config["beta"], str(config["beta"]))

    def build(self, task, model_spec, config, context):
        smoothing.check_smoothing_config(config, "ranmask")
        if not 0 <= config["rho"] < 1:
            raise UsageError(f"defense 'ranmask': rho must be in [0, 1), got {config['rho']}")
        if config["beta"] not in BETAS:
            raise UsageError(f"defense 'ranmask': beta must be one of {', '.join(BETAS)}, got "
                             f"{config['beta']!r}")
        if config["masking"] not in MASKINGS:
            raise UsageError(f"defense 'ranmask': masking must be one of {', '.join(MASKINGS)}, got "
                             f"{config['masking']!r}")
        if config["masked_lm"] is not None and config["masking"] != "lm":
            raise UsageError("defense 'ranmask': masked_lm is only used with masking = \"lm\"; set "
                             "masking = \"lm\" or drop masked_lm")
        module = context.build_model(model_spec, task)
        rng = np.random.default_rng(context.seed)
        mask_token = module.tokenizer.mask_token

        def masked_loss(model, texts, labels):
            masked = []
            for text in texts:
                words = text.split()
                keep = keep_rows(len(words), stats.ranmask_keep(len(words), config["rho"]), 1, rng)[0]
                masked.append(mask_words(words, keep, mask_token))
            return F.cross_entropy(model.classify(masked), labels)

        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=masked_loss, description=f"ranmask {task.name}"))
        if config["masking"] == "lm":
            from attacks.text.resources import masked_language_model

            language_model = masked_language_model(config["masked_lm"], task, context)
            return LMMaskedSmoothing(module, task.num_classes, config, language_model)
        deployed = CertifiedMaskedSmoothing if config["ensemble"] == "vote" else MaskedSmoothing
        return deployed(module, task.num_classes, config)
