"""RanMASK (Zeng et al., "Certified Robustness to Text Adversarial Attacks by Randomized [MASK]").

The base classifier is trained on texts whose words are masked at random at rate rho (the mask
token is the tokenizer's): of a text's h words, k = h - round(h * rho) are kept, uniformly. The
smoothed classifier ensembles masked copies by vote or by the mean of l2-normalised logits (both as in
the seed's code; `ensemble` names which, so they are separate leaderboard rows). Certification is the
seed's Algorithm 2: certify_n0 copies guess the class, certify_n copies give the one-sided
Clopper-Pearson bound p_lower, and the certified robustness is the largest d with
p_lower - beta * Delta(d) > 1/2, Delta(d) = 1 - C(h-d, k) / C(h, k), with beta the point estimate of
p_c (the seed's default) or its Monte Carlo estimator (Algorithm 1). A prediction is `certified` when
it is correct and robust to at least one word; the radius is d in words.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from benchmark import certify as stats
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN, Certificate
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit
from defenses.text import smoothing
from defenses.text.smoothing import Plan, SmoothedText

BETAS = ("p_c", "monte_carlo")


def keep_rows(h: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniform draws of k kept positions out of h, as an (n, h) boolean matrix. Row i uses the
    generator's next h doubles, so drawing copies one at a time gives the same rows."""
    order = rng.random((n, h)).argsort(axis=1)
    rows = np.zeros((n, h), dtype=bool)
    np.put_along_axis(rows, order[:, :k], True, axis=1)
    return rows


def mask_words(words: list[str], keep: np.ndarray, mask_token: str) -> str:
    return " ".join(w if kept else mask_token for w, kept in zip(words, keep))


class MaskedSmoothing(SmoothedText):
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

    def render_ids(self, plan: Plan, rows: np.ndarray) -> np.ndarray:
        return np.where(rows[:, :len(plan.ids)], plan.ids[None, :], self.mask_id)

    def render_texts(self, plan: Plan, rows: np.ndarray) -> list[str]:
        return [mask_words(plan.words, row, self.mask_token) for row in rows]

    def certificate(self, plan, counts0, noisy, label, alpha, rng) -> Certificate:
        counts = noisy.counts(self.num_classes)
        n = int(counts.sum())
        samples = int(counts0.sum()) + n
        guess, p_lower = stats.certify(counts0, counts, alpha)
        details = {"length": plan.h}
        if guess == ABSTAIN:
            return self.abstention(p_lower, samples, details)
        if self.config["beta"] == "p_c":
            beta = counts[guess] / n
        else:
            predictions = noisy.predictions

            def beta(d):
                return stats.monte_carlo_beta(noisy.rows, predictions, guess, d,
                                              self.config["beta_draws"], rng)
        d = stats.ranmask_certified_words(p_lower, plan.h, plan.extra["k"], beta)
        return Certificate(guess, guess == label and d >= 1, float(d), self.unit, False, p_lower,
                           samples, details)



class CertifiedMaskedSmoothing(MaskedSmoothing):
    """The vote-ensemble deployment, which certifies."""

    certify = SmoothedText.certify_votes

@register_defense("ranmask", modality="text", certifies=True, unit="words")
class RanMASK:
    """RanMASK: random word masking at rate rho, vote or logit ensemble, l0 certificate in words."""

    defaults = {**TRAIN_DEFAULTS, **smoothing.SMOOTHING_DEFAULTS, "rho": 0.9, "beta": "p_c",
                "beta_draws": 200}
    inference_keys = smoothing.SMOOTHING_INFERENCE_KEYS + ("beta", "beta_draws")
    cache_sources = (smoothing,)

    def build(self, task, model_spec, config, context):
        smoothing.check_smoothing_config(config, "ranmask")
        if not 0 <= config["rho"] < 1:
            raise UsageError(f"defense 'ranmask': rho must be in [0, 1), got {config['rho']}")
        if config["beta"] not in BETAS:
            raise UsageError(f"defense 'ranmask': beta must be one of {', '.join(BETAS)}, got "
                             f"{config['beta']!r}")
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
        deployed = CertifiedMaskedSmoothing if config["ensemble"] == "vote" else MaskedSmoothing
        return deployed(module, task.num_classes, config)
