"""What the TextAttack adapters share: the defended model as a TextAttack model wrapper (its deployed
scores, or their expectation over the defense's randomness for the adaptive EOT variant), the
settings every recipe has, and the conversion of TextAttack's results into the suite's outcomes."""
from __future__ import annotations

import logging

from benchmark.errors import NotApplicable, UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.textattack_env import import_textattack

# Settings every TextAttack adapter has (each recipe overrides the defaults it publishes).
# eot_samples None attacks the deployed rule's scores (`probs`); an integer attacks the expectation
# over that many draws of a randomized defense's transformation (`expected_probs`, EOT).
TEXTATTACK_DEFAULTS = {"query_budget": 2000, "max_perturbed_fraction": None, "eot_samples": None,
                       "model_batch_size": 64}


class _UnknownModelFilter(logging.Filter):
    """TextAttack warns that it does not know the wrapper's model class; the wrapper is ours."""

    def filter(self, record):
        return not record.getMessage().startswith("Unknown if model")


def check_eot_applies(defended, eot_samples: int | None) -> None:
    """An EOT attack needs a randomized defense (the `Randomized` contract): a deterministic one has
    no randomness to average over, so the deployed-rule attack already covers it."""
    if eot_samples is not None and not getattr(defended, "randomized", False):
        raise NotApplicable(f"{type(defended).__name__} is deterministic: the EOT variant equals "
                            f"the attack on the deployed rule (eot_samples unset)")


def textattack_wrapper(defended, eot_samples: int | None = None):
    """A TextAttack ModelWrapper over the defended model's scores: the deployed rule's `probs`, or
    with `eot_samples` a randomized defense's `expected_probs(texts, eot_samples)`."""
    check_eot_applies(defended, eot_samples)
    textattack = import_textattack()
    logging.getLogger("textattack").setLevel(logging.WARNING)
    install_logger = logging.getLogger("textattack.shared.utils.install")
    if not any(isinstance(f, _UnknownModelFilter) for f in install_logger.filters):
        install_logger.addFilter(_UnknownModelFilter())

    class DefendedModelWrapper(textattack.models.wrappers.ModelWrapper):
        def __init__(self, model):
            self.model = model

        def __call__(self, text_list):
            if eot_samples is not None:
                return self.model.expected_probs(list(text_list), eot_samples)
            return self.model.probs(list(text_list))

    return DefendedModelWrapper(defended)


def check_textattack_config(name: str, config: dict) -> None:
    """Reject impossible shared settings at suite load, naming the attack."""
    for key in ("query_budget", "model_batch_size", "max_candidates"):
        if key in config and config[key] < 1:
            raise UsageError(f"attack '{name}': {key} must be >= 1, got {config[key]}")
    fraction = config["max_perturbed_fraction"]
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"attack '{name}': max_perturbed_fraction must be in (0, 1], got {fraction}")
    samples = config["eot_samples"]
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise UsageError(f"attack '{name}': eot_samples must be None (attack the deployed rule) "
                         f"or an integer >= 1 (EOT over that many draws), got {samples!r}")


def describe_budget(config: dict) -> str:
    """The shared constraints in words: words changed, queries, and what the attacker observes."""
    fraction = config["max_perturbed_fraction"]
    limit = f"at most {fraction:.0%} of words changed" if fraction else "no limit on words changed"
    if config["eot_samples"] is None:
        scores = "black-box scores of the deployed decision rule"
    else:
        scores = (f"adaptive EOT: scores averaged over {config['eot_samples']} draws of the "
                  f"defense's randomness (randomized defenses only)")
    return f"{limit}, {config['query_budget']} queries, {scores}"


def goal_function(defended, config: dict):
    """Untargeted classification against the defended model, batched and under the query budget."""
    wrapper = textattack_wrapper(defended, config["eot_samples"])  # first: the offline import
    from textattack.goal_functions import UntargetedClassification

    return UntargetedClassification(wrapper, query_budget=config["query_budget"],
                                    model_batch_size=config["model_batch_size"])


def base_constraints(config: dict, stopwords: bool = True) -> list:
    """No word changed twice, stop words kept (TextAttack's list), the words-changed limit."""
    from textattack.constraints.overlap import MaxWordsPerturbed
    from textattack.constraints.pre_transformation import RepeatModification, StopwordModification

    constraints = [RepeatModification()] + ([StopwordModification()] if stopwords else [])
    if config["max_perturbed_fraction"]:
        constraints.append(MaxWordsPerturbed(max_percent=config["max_perturbed_fraction"]))
    return constraints


class TextAttackRecipe:
    """Base of the adapters over TextAttack: validates the shared settings, builds TextAttack's
    `Attack` (goal function, constraints, transformation, search) once per defended model, and
    attacks the examples one by one. Subclasses define `name`, `defaults`, `describe` and
    `build(defended)`; `prepare(task, context)` when they need the task."""

    name = ""
    threat = "word_sub"
    defaults: dict = TEXTATTACK_DEFAULTS

    def __init__(self, config: dict):
        check_textattack_config(self.name, config)
        self.config = config
        self._built = None  # (defended model, TextAttack Attack)

    def build(self, defended):
        raise NotImplementedError

    def run(self, model, xs, ys, seed):
        if self._built is None or self._built[0] is not model:
            self._built = (model, self.build(model))
        return run_textattack(self._built[1], xs, ys)


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
