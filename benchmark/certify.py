"""Smoothing statistics shared by every certifying defense (Cohen, Rosenfeld and Kolter, 2019).

PREDICT and CERTIFY are the paper's Algorithms 1 and 2, stated over vote counts so the sampling
stays with each defense: PREDICT abstains unless a two-sided binomial test at level alpha separates
the top two classes; CERTIFY picks the class from a first batch of n0 votes, lower-bounds its
probability from a second batch of n votes with the one-sided Clopper-Pearson bound at level
alpha, and turns that bound into an l2 radius sigma * Phi^-1(p_lower) (or abstains below 1/2).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta, binomtest, norm

from benchmark.interfaces import ABSTAIN


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion k/n."""
    k, n = int(k), int(n)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def cohen_predict(counts, alpha: float) -> int:
    """PREDICT: the top class of `counts` if a two-sided binomial test of its count against the
    runner-up's (n_A of n_A + n_B at p = 1/2) has p-value <= alpha, else ABSTAIN."""
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    top, runner_up = int(counts[order[0]]), int(counts[order[1]]) if len(counts) > 1 else 0
    if top + runner_up == 0:
        return ABSTAIN
    if binomtest(top, top + runner_up, 0.5).pvalue <= alpha:
        return int(order[0])
    return ABSTAIN


def gaussian_radius(sigma: float, p_lower: float) -> float:
    """The certified l2 radius of Gaussian smoothing at noise level sigma: sigma * Phi^-1(p_lower)."""
    return float(sigma * norm.ppf(p_lower))


def cohen_certify(counts_selection, counts_estimation, alpha: float,
                  sigma: float) -> tuple[int, float]:
    """CERTIFY: (prediction, radius), or (ABSTAIN, 0.0) when the lower bound is below 1/2.

    `counts_selection` (n0 votes) selects the class; `counts_estimation` (n votes, drawn
    independently) bounds its probability."""
    selection = np.asarray(counts_selection, dtype=np.int64)
    estimation = np.asarray(counts_estimation, dtype=np.int64)
    top = int(np.argmax(selection))
    p_lower = clopper_pearson_lower(int(estimation[top]), int(estimation.sum()), alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0
    return top, gaussian_radius(sigma, p_lower)
