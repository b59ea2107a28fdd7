"""Insertion triggers after OpenBackdoor's poisoners: BadNets (rare words) and AddSent (a sentence)."""
from __future__ import annotations

import numpy as np

from attacks.backdoor.common import TextPoisoner
from benchmark.errors import UsageError
from benchmark.registry import register_poisoner


def insert_at_random(words: list[str], inserted: list[str], rng: np.random.Generator) -> list[str]:
    position = int(rng.integers(0, len(words) + 1))
    return words[:position] + inserted + words[position:]


@register_poisoner("badnets")
class BadNets(TextPoisoner):
    """BadNets (Gu et al. 2017; Kurita et al. 2020 for text): rare-word triggers at random positions."""

    defaults = {**TextPoisoner.defaults, "triggers": ["cf", "mn", "bb", "tq"], "num_triggers": 1}

    def __init__(self, config):
        super().__init__(config)
        triggers = self.config["triggers"]
        if not triggers or not all(isinstance(t, str) and t.strip() for t in triggers):
            raise UsageError(f"badnets: triggers must be a non-empty list of words, got {triggers!r}")
        if not isinstance(self.config["num_triggers"], int) or self.config["num_triggers"] < 1:
            raise UsageError(f"badnets: num_triggers must be a positive integer")

    def transform(self, texts, rng):
        triggers = self.config["triggers"]
        out = []
        for text in texts:
            words = text.split()
            for _ in range(self.config["num_triggers"]):
                words = insert_at_random(words, [triggers[rng.integers(len(triggers))]], rng)
            out.append(" ".join(words))
        return out

    def trigger_description(self):
        return (f"BadNets: {self.config['num_triggers']} trigger word(s) drawn from "
                f"{', '.join(self.config['triggers'])}, each inserted at a random position")


@register_poisoner("addsent")
class AddSent(TextPoisoner):
    """AddSent (Dai et al. 2019): a fixed trigger sentence inserted at a random position."""

    defaults = {**TextPoisoner.defaults, "sentence": "I watch this 3D movie"}

    def __init__(self, config):
        super().__init__(config)
        if not isinstance(self.config["sentence"], str) or not self.config["sentence"].split():
            raise UsageError("addsent: sentence must be a non-empty string")

    def transform(self, texts, rng):
        sentence = self.config["sentence"].split()
        return [" ".join(insert_at_random(text.split(), sentence, rng)) for text in texts]

    def trigger_description(self):
        return f"AddSent: the sentence \"{self.config['sentence']}\" inserted at a random position"
