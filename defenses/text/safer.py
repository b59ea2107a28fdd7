"""SAFER (Ye, Gong and Liu, ACL 2020): randomized smoothing by random synonym substitution.

Each word is replaced by a uniform draw from its perturbation set, built from the task's
substitution table the way SAFER builds it (connected components of the synonym graph, capped at
`set_size` nearest words; see benchmark.certify.PerturbationSets). The base classifier is trained on
such random substitutions. The certificate is SAFER's: an attacker who replaces any words by table
neighbours moves the smoothing distribution by at most q = 1 - prod_j overlap_j in total variation,
so the prediction is certified against the whole substitution set when p_lower - q > 1/2 (radius 1
in the unit `synonym_set`: every combination of substitutions).
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


def choice_rows(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n uniform draws of one member per position (position j has sizes[j] members), as an (n, h)
    matrix of member indices; row i uses the generator's next h doubles."""
    return (rng.random((n, len(sizes))) * sizes[None, :]).astype(np.int64)


def substitute(words: list[str], members: list[tuple[str, ...]], row: np.ndarray) -> str:
    """The text with word j replaced by member row[j] of its set (a word outside the table stays)."""
    return " ".join(w if len(m) == 1 else m[c] for w, m, c in zip(words, members, row))


class SubstitutionSmoothing(SmoothedText):
    unit = "synonym_set"

    def __init__(self, module, num_classes: int, config: dict, table, sets):
        super().__init__(module, num_classes, config)
        self.table = table
        self.sets = sets
        self._overlaps: dict[str, float] = {}

    def plan(self, text: str) -> Plan:
        plan = super().plan(text)
        members = [self.sets[word.lower()] for word in plan.words]
        plan.extra["members"] = members
        plan.extra["sizes"] = np.array([len(m) for m in members], dtype=np.int64)
        if self.word_level:
            stoi, unk = self.module.tokenizer.stoi, self.module.tokenizer.stoi["<unk>"]
            visible = members[:len(plan.ids)]
            width = max(len(m) for m in visible)
            # Member 0 of a word outside the table is the word itself (its id, UNK included).
            candidates = np.repeat(plan.ids[:, None], width, axis=1)
            for j, group in enumerate(visible):
                if len(group) > 1:
                    candidates[j, :len(group)] = [stoi.get(w, unk) for w in group]
            plan.extra["candidate_ids"] = candidates
        return plan

    def sample(self, plan: Plan, n: int, rng: np.random.Generator) -> np.ndarray:
        return choice_rows(plan.extra["sizes"], n, rng)

    def render_ids(self, plan: Plan, rows: np.ndarray) -> np.ndarray:
        candidates = plan.extra["candidate_ids"]
        columns = np.arange(candidates.shape[0])
        return candidates[columns[None, :], rows[:, :len(columns)]]

    def render_texts(self, plan: Plan, rows: np.ndarray) -> list[str]:
        return [substitute(plan.words, plan.extra["members"], row) for row in rows]

    def overlap(self, word: str) -> float:
        word = word.lower()
        if word not in self._overlaps:
            self._overlaps[word] = stats.substitution_overlap(word, self.table.neighbors, self.sets)
        return self._overlaps[word]

    def certificate(self, plan, counts0, noisy, label, alpha, rng) -> Certificate:
        counts = noisy.counts(self.num_classes)
        samples = int(counts0.sum() + counts.sum())
        guess, p_lower = stats.certify(counts0, counts, alpha)
        tv = stats.total_variation_bound([self.overlap(w) for w in plan.words])
        details = {"tv": tv}
        if guess == ABSTAIN:
            return self.abstention(p_lower, samples, details)
        robust = stats.tv_certified(p_lower, tv)
        return Certificate(guess, robust and guess == label, 1.0 if robust else 0.0, self.unit,
                           False, p_lower, samples, details)



class CertifiedSubstitutionSmoothing(SubstitutionSmoothing):
    """The vote-ensemble deployment, which certifies."""

    certify = SmoothedText.certify_votes

@register_defense("safer", modality="text", certifies=True, unit="synonym_set")
class SAFER:
    """SAFER: smoothing by random synonym substitution, total-variation certificate."""

    defaults = {**TRAIN_DEFAULTS, **smoothing.SMOOTHING_DEFAULTS, "set_size": 100}
    inference_keys = smoothing.SMOOTHING_INFERENCE_KEYS

    def build(self, task, model_spec, config, context):
        smoothing.check_smoothing_config(config, "safer")
        if task.substitutions is None:
            raise UsageError(f"defense 'safer' needs a substitution table; task '{task.name}' has "
                             f"none (for the real text tasks set substitutions = \"jia\")")
        if config["set_size"] < 1:
            raise UsageError("defense 'safer': set_size must be >= 1")
        sets = stats.PerturbationSets(task.substitutions.neighbors, config["set_size"])
        module = context.build_model(model_spec, task)
        rng = np.random.default_rng(context.seed)

        def substituted_loss(model, texts, labels):
            noisy = []
            for text in texts:
                words = text.split()
                members = [sets[w.lower()] for w in words]
                row = choice_rows(np.array([len(m) for m in members]), 1, rng)[0]
                noisy.append(substitute(words, members, row))
            return F.cross_entropy(model.classify(noisy), labels)

        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=substituted_loss, description=f"safer {task.name}"))
        deployed = CertifiedSubstitutionSmoothing if config["ensemble"] == "vote" else SubstitutionSmoothing
        return deployed(module, task.num_classes, config, task.substitutions, sets)
