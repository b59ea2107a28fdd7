"""Certification statistics shared by every certifying defense (one module for all of them).

- Cohen et al. (2019): the one-sided Clopper-Pearson lower bound, PREDICT (a two-sided binomial test
  decides abstention) and CERTIFY (n0 samples pick the class, n others bound its probability), and
  the Gaussian radius sigma * Phi^-1(p_lower).
- RanMASK (Zeng et al.): the l0 certificate over words, Delta(d) = 1 - C(h-d, k) / C(h, k), with beta
  = 1 (sound), or the paper's heuristics: a point estimate of p_c or the Monte Carlo estimator of its
  Algorithm 1; MCB and MCR.
- SAFER (Ye et al. 2020), and CROWD with the same code: a total-variation bound between smoothing
  distributions that are products of uniform draws over perturbation sets.

Everything here works on counts and probabilities; the sampling belongs to the defenses. Sample
counts and alpha are arguments (config), never constants.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from benchmark.interfaces import ABSTAIN


# Cohen et al. (2019) -----------------------------------------------------------------------------

def lower_confidence_bound(successes, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion (scalar or array):
    the lower end of the two-sided (1 - 2 alpha) interval."""
    low, _ = proportion_confint(successes, n, alpha=2 * alpha, method="beta")
    return low if np.ndim(low) else float(low)


def upper_confidence_bound(successes, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson upper bound (scalar or array)."""
    _, high = proportion_confint(successes, n, alpha=2 * alpha, method="beta")
    return high if np.ndim(high) else float(high)


def top_two(counts: Sequence[int]) -> tuple[int, int]:
    """The classes with the largest and second largest counts (ties go to the lower class index)."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    return int(order[0]), int(order[1]) if len(order) > 1 else int(order[0])


def predict(counts: Sequence[int], alpha: float) -> int:
    """Cohen's PREDICT on the class counts of n noisy copies: the top class if a two-sided binomial
    test rejects a tie with the runner-up at level alpha, else ABSTAIN."""
    counts = np.asarray(counts)
    top, second = top_two(counts)
    n_top, n_second = int(counts[top]), int(counts[second]) if second != top else 0
    if n_top + n_second == 0:
        return ABSTAIN
    return top if binomtest(n_top, n_top + n_second, 0.5).pvalue <= alpha else ABSTAIN


def certify(counts0: Sequence[int], counts: Sequence[int], alpha: float) -> tuple[int, float]:
    """Cohen's CERTIFY from the counts of two independent samples: the class is the top one of the
    n0 selection draws, its probability is bounded from the n estimation draws. Returns
    (class or ABSTAIN, p_lower); it abstains when p_lower <= 1/2."""
    guess = int(np.argmax(counts0))
    counts = np.asarray(counts)
    p_lower = lower_confidence_bound(int(counts[guess]), int(counts.sum()), alpha)
    return (guess if p_lower > 0.5 else ABSTAIN), p_lower


def gaussian_radius(p_lower, sigma: float):
    """Cohen's l2 radius sigma * Phi^-1(p_lower): 0 at p = 1/2, negative below (no certificate)."""
    return sigma * norm.ppf(p_lower)


# RanMASK -----------------------------------------------------------------------------------------

def ranmask_keep(h: int, rho: float) -> int:
    """Words kept unmasked out of h at masking rate rho: k = h - round(h * rho)."""
    return h - round(h * rho)


def ranmask_delta(h: int, k: int, d: int) -> float:
    """Delta(d) = 1 - C(h-d, k) / C(h, k): the probability that a uniformly drawn set of k kept
    positions out of h touches at least one of d given positions."""
    if not 0 <= k <= h or d < 0:
        raise ValueError(f"need 0 <= k <= h and d >= 0, got h={h}, k={k}, d={d}")
    if d > h - k:
        return 1.0
    ratio = 1.0  # C(h-d, k) / C(h, k) as a product, stable for long texts
    for i in range(d):
        ratio *= (h - k - i) / (h - i)
    return 1.0 - ratio


def ranmask_certified_words(p_lower: float, h: int, k: int,
                            beta: float | Callable[[int], float]) -> int:
    """RanMASK's certified robustness: the largest d (0..h) with p_lower - beta * Delta(d) > 1/2,
    scanning d upward and stopping at the first failure as the seed's code does; -1 when even d = 0
    fails (p_lower <= 1/2). `beta` is a number or a function of d (the Monte Carlo estimator)."""
    if not p_lower > 0.5:
        return -1
    d = 0
    while d < h:
        b = beta(d + 1) if callable(beta) else beta
        if not p_lower - b * ranmask_delta(h, k, d + 1) > 0.5:
            break
        d += 1
    return d


def monte_carlo_beta(kept: np.ndarray, predictions: np.ndarray, label: int, d: int, draws: int,
                     rng: np.random.Generator) -> float:
    """RanMASK's Algorithm 1 estimator of beta at d: among the masked copies (rows of `kept`, the
    kept-position indicators) whose kept words touch `d` randomly drawn positions, the share that
    predicts `label`; averaged over `draws` position sets drawn with replacement, as the seed's code
    does. 1 (the worst case) when no copy touches any drawn set."""
    h = kept.shape[1]
    positions = rng.integers(0, h, size=(draws, d))
    touched = kept[:, positions].any(axis=2)  # (copies, draws)
    total = touched.sum()
    if total == 0:
        return 1.0
    return float((touched & (predictions == label)[:, None]).sum() / total)


def median_certified(values: Iterable[float]) -> float | None:
    """Median of per-example certified robustness with RanMASK's rule: a wrong (or abstained)
    prediction counts as -infinity, so {N/A, N/A, 1, 2, 3} has median 1. With an even count it is the
    lower of the two middle values (a whole number of words, never overstated). None (N/A) when the
    median itself is -infinity."""
    values = np.asarray(list(values), dtype=float)
    if not len(values):
        return None
    median = float(np.quantile(values, 0.5, method="lower"))
    return median if np.isfinite(median) else None


# SAFER and CROWD ---------------------------------------------------------------------------------

def overlap_ratio(size_a: int, size_b: int, intersection: int) -> float:
    """1 - TV between the uniform distributions on two sets: |A & B| / max(|A|, |B|)."""
    return intersection / max(size_a, size_b)


def total_variation_bound(overlaps: Sequence[float], max_changed: int | None = None) -> float:
    """Upper bound on the total variation between two product distributions whose coordinates have
    the given worst-case overlaps (1 - TV per coordinate): 1 - prod(overlaps), by coupling the
    coordinates independently. With `max_changed`, at most that many coordinates differ, so only
    the smallest `max_changed` overlaps count."""
    overlaps = np.sort(np.asarray(overlaps, dtype=float))
    if max_changed is not None:
        overlaps = overlaps[:max(max_changed, 0)]
    return float(1.0 - np.prod(overlaps)) if len(overlaps) else 0.0


def tv_certified(p_lower: float, tv: float, p_runner_upper: float | None = None) -> bool:
    """The smoothed prediction cannot change between distributions within total variation `tv`:
    p_lower - tv > p_runner_upper + tv, or p_lower - tv > 1/2 when the runner-up is bounded by
    1 - p_lower (SAFER's Theorem 1 as its code applies it)."""
    if p_runner_upper is None:
        return p_lower - tv > 0.5
    return p_lower - tv > p_runner_upper + tv


class PerturbationSets:
    """SAFER's perturbation sets from a substitution table: the connected components of the
    (undirected) synonym graph; a word in a component of at most `max_size` words gets the whole
    component (every member shares one set, so smoothing over it is exactly invariant), a word in a
    larger one its `max_size` nearest words. SAFER ranks "nearest" by embedding similarity; with no
    embedding offline we rank by hops in the synonym graph (then alphabetically), which keeps the
    construction deterministic. Every set contains its own word; a word outside the table gets
    {word}. Sets are computed on first use (large components make them costly)."""

    def __init__(self, neighbors: dict[str, Sequence[str]], max_size: int):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self.graph: dict[str, set[str]] = {}
        for word, subs in neighbors.items():
            for sub in subs:
                if sub != word:
                    self.graph.setdefault(word, set()).add(sub)
                    self.graph.setdefault(sub, set()).add(word)
        self.component_of: dict[str, int] = {}
        self.components: list[tuple[str, ...]] = []
        for start in sorted(self.graph):
            if start in self.component_of:
                continue
            index = len(self.components)
            members, frontier = [start], [start]
            self.component_of[start] = index
            while frontier:
                layer = []
                for word in frontier:
                    for other in self.graph[word]:
                        if other not in self.component_of:
                            self.component_of[other] = index
                            layer.append(other)
                members.extend(layer)
                frontier = layer
            self.components.append(tuple(sorted(members)))
        self._sets: dict[str, tuple[str, ...]] = {}

    def __getitem__(self, word: str) -> tuple[str, ...]:
        found = self._sets.get(word)
        if found is not None:
            return found
        if word not in self.component_of:
            return (word,)
        members = self.components[self.component_of[word]]
        if len(members) <= self.max_size:
            result = members
        else:
            seen, order, frontier = {word}, [word], [word]
            while frontier and len(order) < self.max_size:
                layer = sorted({other for current in frontier for other in self.graph[current]} - seen)
                seen.update(layer)
                order.extend(layer[:self.max_size - len(order)])
                frontier = layer
            result = tuple(order)
        self._sets[word] = result
        return result


def substitution_overlap(word: str, neighbors: dict[str, Sequence[str]], sets) -> float:
    """Worst-case overlap (1 - TV) at one position when the attacker may replace `word` by any of its
    table neighbours: min over them of |P_w & P_w'| / max(|P_w|, |P_w'|); 1 for a word without
    substitutes (or whose substitutes all share its set)."""
    own = set(sets[word])
    worst = 1.0
    for sub in neighbors.get(word, ()):
        other = set(sets[sub])
        worst = min(worst, overlap_ratio(len(own), len(other), len(own & other)))
    return worst
