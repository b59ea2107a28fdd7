"""What every text poisoner shares: the poisoning config and rule (benchmark.backdoor) around a
`transform` that triggers a list of texts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from benchmark.backdoor import POISON_DEFAULTS, check_poison_config, poison_split


class TextPoisoner:
    """Base of the poisoners: subclasses set `defaults` (extending POISON_DEFAULTS) and define
    `transform(texts, rng)` and `trigger_description()`."""

    defaults = dict(POISON_DEFAULTS)

    def __init__(self, config: dict):
        self.config = {**self.defaults, **config}
        check_poison_config(self.config, type(self).__name__)

    def transform(self, texts: list[str], rng: np.random.Generator) -> list[str]:
        raise NotImplementedError

    def trigger_description(self) -> str:
        raise NotImplementedError

    def poison(self, train, rate: float, target_label: int, seed: int):
        return poison_split(train, rate, target_label, self.config["label_mode"], seed, self.trigger)

    def trigger(self, xs: Sequence[str], seed: int) -> list[str]:
        return self.transform(list(xs), np.random.default_rng(seed))

    def data_checksums(self) -> dict:
        """Checksums of the files the poisoner reads its poisoned texts from (none: it computes
        them), for the poisoned splits' cache keys."""
        return {}

    def describe(self) -> str:
        c = self.config
        return (f"{self.trigger_description()}; {c['label_mode']}-label poisoning of "
                f"{c['rate']:g} of the training set, target label {c['target_label']}, "
                f"seed {c['seed']}")
