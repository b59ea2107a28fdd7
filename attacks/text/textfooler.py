"""TextFooler (Jin et al. 2020) through TextAttack's components: greedy search over words ranked by
deletion importance, swapping each for a candidate that keeps the text's meaning close.

Candidates come from the task's substitution table (the Jia et al. counter-fitted neighbours on the
real tasks, the synonym clusters on toy-sentiment; the default) or from the nearest neighbours of
counter-fitted vectors under TextFooler's cosine >= 0.5 word constraint, as the paper draws them:
`embedding` names a vectors file, or is "counter-fitted:<constraints folder>" for GloVe 6B 50d
counter-fitted here to the constraints of Mrksic et al. (2016) in that folder
(benchmark.data.counterfit; e.g. "counter-fitted:../shared/data/counter-fitting"). The
sentence constraint is TextFooler's (angular similarity >= 0.8408 over 15-word windows) with the
encoder named by `sentence_encoder`. TextFooler's part-of-speech check is not applied: its tagger
is a download.
"""
import functools

import numpy as np

from attacks.text.common import (TEXTATTACK_DEFAULTS, TextAttackRecipe, base_constraints,
                                 describe_budget, goal_function)
from benchmark.errors import UsageError
from benchmark.registry import register_attack
from benchmark.textattack_env import import_textattack

# `embedding = "counter-fitted:<constraints folder>"`: GloVe 6B 50d counter-fitted to that folder's
# constraints (benchmark.data.counterfit), computed once and cached.
COUNTER_FITTED = "counter-fitted:"


@functools.lru_cache(maxsize=2)
def _counter_fitted_embedding(folder: str, cache_dir: str, words_needed: frozenset, k: int):
    from textattack.shared import WordEmbedding

    from attacks.text.resources import nearest_neighbours
    from benchmark.data.counterfit import counter_fitted_vectors
    from benchmark.data.real import WORD

    words, vectors = counter_fitted_vectors(folder, cache_dir)
    single = [i for i, w in enumerate(words) if WORD.fullmatch(w)]  # as read_word_vectors keeps them
    words, vectors = [words[i] for i in single], vectors[single]
    word2index = {w: i for i, w in enumerate(words)}
    rows = np.array(sorted(word2index[w] for w in words_needed if w in word2index), dtype=np.int64)
    return WordEmbedding(vectors, word2index, dict(enumerate(words)),
                         nn_matrix=nearest_neighbours(vectors, rows, k))


def counter_fitted_embedding(folder: str, cache_dir, texts, k: int):
    """A TextAttack WordEmbedding of GloVe 6B 50d counter-fitted to the constraints in `folder`
    (cached under `cache_dir`), its nearest-neighbour matrix computed for the words of `texts`."""
    if not folder:
        raise UsageError(f"embedding = '{COUNTER_FITTED}<folder>' needs the counter-fitting "
                         f"constraints folder after the colon, e.g. "
                         f"'{COUNTER_FITTED}../shared/data/counter-fitting'")
    words_needed = frozenset(w for text in texts for w in text.lower().split())
    return _counter_fitted_embedding(str(folder), str(cache_dir), words_needed, k)


@register_attack("textfooler", modality="text", threat="word_sub")
class TextFooler(TextAttackRecipe):
    """TextFooler (TextAttack): greedy word swaps by deletion importance, meaning-preserving."""

    name = "textfooler"
    defaults = {**TEXTATTACK_DEFAULTS, "embedding": None, "max_candidates": 50, "min_cos_sim": 0.5,
                "sentence_encoder": "minilm", "similarity_threshold": 0.840845057,
                "similarity_metric": "angular", "similarity_window": 15}
    # embedding: None for the task's substitution table, the path of a vectors file, or
    # "counter-fitted:<constraints folder>" (GloVe 6B 50d counter-fitted to those constraints).
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
            vectors = c["embedding"]
            if vectors.startswith(COUNTER_FITTED):
                vectors = (f"GloVe 6B 50d counter-fitted (Mrksic et al. 2016) to the constraints in "
                           f"{vectors[len(COUNTER_FITTED):]}")
            source = (f"candidates: {c['max_candidates']} nearest neighbours in {vectors}, "
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

            texts = list(task.train.xs) + list(task.test.xs)
            if c["embedding"].startswith(COUNTER_FITTED):
                embedding = counter_fitted_embedding(c["embedding"][len(COUNTER_FITTED):],
                                                     context.cache_dir, texts, c["max_candidates"])
            else:
                embedding = word_embedding(c["embedding"], texts, c["max_candidates"])
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
