"""BERT-Attack (Li et al. 2020) through TextAttack's components: words ranked by how much masking them
lowers the true class's score ([UNK] importance), each replaced by the masked LM's top predictions
at its position (sub-word combinations for multi-token words), at most 40% of words changed, and a
sentence similarity >= 0.2 (cosine) to the original text, as TextAttack's recipe has it.

The masked LM is `masked_lm`: any hub name or local folder (bert-base-uncased as in the paper), or by
default a small BERT masked LM the suite trains on the task's training text and caches.
"""
from attacks.text.common import (TEXTATTACK_DEFAULTS, TextAttackRecipe, base_constraints,
                                 describe_budget, goal_function)
from benchmark.errors import UsageError
from benchmark.registry import register_attack


@register_attack("bert-attack", modality="text", threat="word_sub")
class BERTAttack(TextAttackRecipe):
    """BERT-Attack (TextAttack): masked-LM candidates for the most important words."""

    name = "bert-attack"
    defaults = {**TEXTATTACK_DEFAULTS, "masked_lm": None, "max_candidates": 48,
                "max_perturbed_fraction": 0.4, "sentence_encoder": "minilm",
                "similarity_threshold": 0.2, "similarity_metric": "cosine", "similarity_window": 0,
                "max_length": 128}
    # masked_lm: None for the suite's own small masked LM trained on the task, or a name / folder.
    # max_length: tokens the masked LM sees (TextAttack pads every query to it).

    def __init__(self, config: dict):
        super().__init__(config)
        from attacks.text.resources import check_encoder_config

        check_encoder_config(self.name, config)
        if config["max_length"] < 8:
            raise UsageError("attack 'bert-attack': max_length must be >= 8")
        self.language_model = None

    def describe(self) -> str:
        from attacks.text.resources import describe_encoder

        c = self.config
        lm = c["masked_lm"] or "the suite's small masked LM trained on the task's training text"
        return (f"BERT-Attack (TextAttack), [UNK]-importance order, top {c['max_candidates']} "
                f"masked-LM candidates from {lm} (first {c['max_length']} tokens), "
                f"{describe_encoder(c)} against the original, stop words kept, "
                f"{describe_budget(c)}")

    def prepare(self, task, context):
        from attacks.text.resources import masked_language_model

        self.language_model = masked_language_model(self.config["masked_lm"], task, context)
        self._built = None

    def build(self, defended):
        if self.language_model is None:
            raise UsageError("attack 'bert-attack' needs the task: call prepare(task, context) first")
        goal = goal_function(defended, self.config)
        from textattack import Attack
        from textattack.search_methods import GreedyWordSwapWIR
        from textattack.transformations import WordSwapMaskedLM

        from attacks.text.resources import similarity_constraints

        model, tokenizer = self.language_model
        transformation = WordSwapMaskedLM(method="bert-attack", masked_language_model=model,
                                          tokenizer=tokenizer, max_candidates=self.config["max_candidates"],
                                          max_length=min(self.config["max_length"],
                                                         model.config.max_position_embeddings))
        constraints = base_constraints(self.config) + similarity_constraints(
            self.config, compare_against_original=True)
        return Attack(goal, constraints, transformation, GreedyWordSwapWIR(wir_method="unk"))
