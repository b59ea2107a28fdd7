"""DeepWordBug (Gao et al. 2018) through TextAttack's own components: character swaps, substitutions,
deletions and insertions on the most important words, under a Levenshtein budget."""
from attacks.text.common import (TEXTATTACK_DEFAULTS, TextAttackRecipe, base_constraints,
                                 describe_budget, goal_function)
from benchmark.errors import UsageError
from benchmark.registry import register_attack


@register_attack("deepwordbug", modality="text", threat="char")
class DeepWordBug(TextAttackRecipe):
    """DeepWordBug (TextAttack): character edits on the most important words, Levenshtein budget."""

    name = "deepwordbug"
    threat = "char"
    # max_perturbed_fraction None: no limit on words changed, as in the published recipe.
    defaults = {**TEXTATTACK_DEFAULTS, "max_edit_distance": 30}

    def __init__(self, config: dict):
        super().__init__(config)
        if config["max_edit_distance"] < 1:
            raise UsageError("attack 'deepwordbug': max_edit_distance must be >= 1")

    def describe(self) -> str:
        return (f"DeepWordBug (TextAttack), character edits, Levenshtein <= "
                f"{self.config['max_edit_distance']}, stop words kept, "
                f"{describe_budget(self.config)}")

    def build(self, defended):
        goal = goal_function(defended, self.config)
        from textattack import Attack
        from textattack.constraints.overlap import LevenshteinEditDistance
        from textattack.search_methods import GreedyWordSwapWIR
        from textattack.transformations import (CompositeTransformation,
                                                WordSwapNeighboringCharacterSwap,
                                                WordSwapRandomCharacterDeletion,
                                                WordSwapRandomCharacterInsertion,
                                                WordSwapRandomCharacterSubstitution)

        transformation = CompositeTransformation([
            WordSwapNeighboringCharacterSwap(), WordSwapRandomCharacterSubstitution(),
            WordSwapRandomCharacterDeletion(), WordSwapRandomCharacterInsertion()])
        constraints = base_constraints(self.config) + [
            LevenshteinEditDistance(self.config["max_edit_distance"])]
        return Attack(goal, constraints, transformation, GreedyWordSwapWIR(wir_method="unk"))
