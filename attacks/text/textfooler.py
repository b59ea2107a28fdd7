"""TextFooler (Jin et al. 2020) through TextAttack's components: greedy search over words ranked by
deletion importance, swapping each for a candidate that keeps the text's meaning close.

Candidates come from the task's substitution table (the Jia et al. counter-fitted neighbours on the
real tasks, the synonym clusters on toy-sentiment) or, when `embedding` names a counter-fitted
vectors file, from its nearest neighbours under TextFooler's cosine >= 0.5 word constraint. The
sentence constraint is TextFooler's (angular similarity >= 0.8408 over 15-word windows) with the
encoder named by `sentence_encoder`. TextFooler's part-of-speech check is not applied: its tagger
is a download.
"""
from attacks.text.common import (TEXTATTACK_DEFAULTS, TextAttackRecipe, base_constraints,
                                 describe_budget, goal_function)
from benchmark.errors import UsageError
from benchmark.registry import register_attack
from benchmark.textattack_env import import_textattack


@register_attack("textfooler", modality="text", threat="word_sub")
class TextFooler(TextAttackRecipe):
    """TextFooler (TextAttack): greedy word swaps by deletion importance, meaning-preserving."""

    name = "textfooler"
    defaults = {**TEXTATTACK_DEFAULTS, "embedding": None, "max_candidates": 50, "min_cos_sim": 0.5,
                "sentence_encoder": "minilm", "similarity_threshold": 0.840845057,
                "similarity_metric": "angular", "similarity_window": 15}
    # embedding: None for the task's substitution table, or the path of a vectors file.
    # sentence_encoder: "minilm" (offline), "use", a sentence-transformers name or path, or "none".

    def __init__(self, config: dict):
        super().__init__(config)
        from attacks.text.resources import check_encoder_config

        check_encoder_config(self.name, config)
        self.transformation_source = None

    def describe(self) -> str:
        from attacks.text.resources import describe_encoder

        c = self.config
        if c["embedding"] is None:
            source = f"candidates: the task's substitution table (first {c['max_candidates']})"
        else:
            source = (f"candidates: {c['max_candidates']} nearest neighbours in {c['embedding']}, "
                      f"cosine >= {c['min_cos_sim']:g}")
        return (f"TextFooler (TextAttack), greedy swaps by deletion importance, {source}, "
                f"{describe_encoder(c)} against the text before each swap, no part-of-speech "
                f"check, stop words kept, {describe_budget(c)}")

    def prepare(self, task, context):
        import_textattack()
        from attacks.text.resources import table_word_swap, word_embedding

        c = self.config
        if c["embedding"] is None:
            if task.substitutions is None:
                raise UsageError(f"attack 'textfooler': task '{task.name}' has no substitution "
                                 f"table; give the task one or set embedding = <vectors file>")
            self.transformation_source = (table_word_swap(task.substitutions, c["max_candidates"]), [])
        else:
            from textattack.constraints.semantics import WordEmbeddingDistance
            from textattack.transformations import WordSwapEmbedding

            embedding = word_embedding(c["embedding"], list(task.train.xs) + list(task.test.xs),
                                       c["max_candidates"])
            self.transformation_source = (
                WordSwapEmbedding(max_candidates=c["max_candidates"], embedding=embedding),
                [WordEmbeddingDistance(embedding=embedding, min_cos_sim=c["min_cos_sim"])])
        self._built = None

    def build(self, defended):
        if self.transformation_source is None:
            raise UsageError("attack 'textfooler' needs the task: call prepare(task, context) first")
        goal = goal_function(defended, self.config)
        from textattack import Attack
        from textattack.search_methods import GreedyWordSwapWIR

        from attacks.text.resources import similarity_constraints

        transformation, word_constraints = self.transformation_source
        constraints = (base_constraints(self.config) + word_constraints +
                       similarity_constraints(self.config, compare_against_original=False))
        return Attack(goal, constraints, transformation, GreedyWordSwapWIR(wir_method="delete"))
