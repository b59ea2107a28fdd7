"""What the TextAttack adapters share: the defended model as a TextAttack model wrapper, and the
conversion of TextAttack's results into the suite's outcomes."""
from __future__ import annotations

import logging

from benchmark.interfaces import AttackOutcome
from benchmark.textattack_env import import_textattack


def textattack_wrapper(defended):
    """A TextAttack ModelWrapper that queries the defense's deployed `probs`."""
    textattack = import_textattack()
    logging.getLogger("textattack").setLevel(logging.WARNING)

    class DefendedModelWrapper(textattack.models.wrappers.ModelWrapper):
        def __init__(self, model):
            self.model = model

        def __call__(self, text_list):
            return self.model.probs(list(text_list))

    return DefendedModelWrapper(defended)


def run_textattack(attack, xs, ys) -> list[AttackOutcome]:
    """Attack each example; the outcome records the perturbed text, queries and words perturbed."""
    from textattack.attack_results import SkippedAttackResult

    outcomes = []
    for text, label in zip(xs, ys):
        result = attack.attack(text, int(label))
        original = result.original_result.attacked_text
        perturbed = result.perturbed_result.attacked_text
        if isinstance(result, SkippedAttackResult):  # already misclassified: nothing to attack
            outcomes.append(AttackOutcome(text, result.perturbed_result.num_queries, 0.0,
                                          {"result": "skipped"}))
            continue
        changed = len(original.all_words_diff(perturbed))
        outcomes.append(AttackOutcome(perturbed.text, result.perturbed_result.num_queries,
                                      changed / max(original.num_words, 1),
                                      {"result": type(result).__name__, "words_changed": changed}))
    return outcomes
