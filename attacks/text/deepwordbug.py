"""DeepWordBug (Gao et al. 2018) through TextAttack's own components: character swaps, substitutions,
deletions and insertions on the most important words, under a Levenshtein budget."""
from attacks.text.common import run_textattack, textattack_wrapper
from benchmark.errors import UsageError
from benchmark.registry import register_attack


@register_attack("deepwordbug", modality="text", threat="char")
class DeepWordBug:
    # max_perturbed_fraction None: no limit on words changed, as in the published recipe.
    defaults = {"max_edit_distance": 30, "query_budget": 2000, "max_perturbed_fraction": None,
                "model_batch_size": 64}
    threat = "char"

    def __init__(self, config: dict):
        if config["max_edit_distance"] < 1 or config["query_budget"] < 1:
            raise UsageError("attack 'deepwordbug': max_edit_distance and query_budget must be >= 1")
        fraction = config["max_perturbed_fraction"]
        if fraction is not None and not 0 < fraction <= 1:
            raise UsageError(f"attack 'deepwordbug': max_perturbed_fraction must be in (0, 1], "
                             f"got {fraction}")
        self.config = config

    def describe(self) -> str:
        c = self.config
        limit = (f"at most {c['max_perturbed_fraction']:.0%} of words"
                 if c["max_perturbed_fraction"] else "no limit on words changed")
        return (f"DeepWordBug (TextAttack), character edits, Levenshtein <= {c['max_edit_distance']}, "
                f"{limit}, stop words kept, {c['query_budget']} queries, black-box scores")

    def build(self, defended):
        wrapper = textattack_wrapper(defended)  # first: it prepares TextAttack's offline import
        from textattack import Attack
        from textattack.constraints.overlap import LevenshteinEditDistance, MaxWordsPerturbed
        from textattack.constraints.pre_transformation import RepeatModification, StopwordModification
        from textattack.goal_functions import UntargetedClassification
        from textattack.search_methods import GreedyWordSwapWIR
        from textattack.transformations import (CompositeTransformation,
                                                WordSwapNeighboringCharacterSwap,
                                                WordSwapRandomCharacterDeletion,
                                                WordSwapRandomCharacterInsertion,
                                                WordSwapRandomCharacterSubstitution)

        c = self.config
        transformation = CompositeTransformation([
            WordSwapNeighboringCharacterSwap(), WordSwapRandomCharacterSubstitution(),
            WordSwapRandomCharacterDeletion(), WordSwapRandomCharacterInsertion()])
        constraints = [RepeatModification(), StopwordModification(),
                       LevenshteinEditDistance(c["max_edit_distance"])]
        if c["max_perturbed_fraction"]:
            constraints.append(MaxWordsPerturbed(max_percent=c["max_perturbed_fraction"]))
        goal = UntargetedClassification(wrapper, query_budget=c["query_budget"],
                                        model_batch_size=c["model_batch_size"])
        return Attack(goal, constraints, transformation, GreedyWordSwapWIR(wir_method="unk"))

    def run(self, model, xs, ys, seed):
        return run_textattack(self.build(model), xs, ys)
