"""Certification statistics shared by the certifying defenses (one module for all of them).

This branch holds only what CROWD uses; the names and meanings follow the certification issue's
module (which adds Cohen's PREDICT/CERTIFY, RanMASK and SAFER's perturbation sets):

- `lower_confidence_bound`: the one-sided (1 - alpha) Clopper-Pearson lower bound (statsmodels).
- `total_variation_bound`: an upper bound on the total variation between two product
  distributions from per-coordinate overlaps (1 - TV per coordinate).
- `tv_certified`: the smoothed prediction cannot change within that total variation.

Why the product bound holds: couple each coordinate maximally; all of them agree with probability
prod_j overlap_j, so TV(prod P_j, prod Q_j) <= 1 - prod_j overlap_j. If the top class has
probability at least p_lower under one distribution, it has at least p_lower - TV under the other
and every other class at most 1 - p_lower + TV, so the prediction stands while p_lower - TV > 1/2.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from statsmodels.stats.proportion import proportion_confint


def lower_confidence_bound(successes, n, alpha: float):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion: the lower end of
    the two-sided (1 - 2 alpha) interval."""
    low, _ = proportion_confint(successes, n, alpha=2 * alpha, method="beta")
    return low if np.ndim(low) else float(low)


def total_variation_bound(overlaps: Sequence[float], max_changed: int | None = None) -> float:
    """Upper bound on TV between two product distributions whose coordinates overlap by at least
    `overlaps` (1 - TV each): 1 - prod(overlaps). With `max_changed`, at most that many coordinates
    differ, so only the smallest `max_changed` overlaps count."""
    overlaps = np.sort(np.clip(np.asarray(overlaps, dtype=float), 0.0, 1.0))
    if max_changed is not None:
        overlaps = overlaps[:max(max_changed, 0)]
    return float(1.0 - np.prod(overlaps)) if len(overlaps) else 0.0


def tv_certified(p_lower: float, tv: float, p_runner_upper: float | None = None) -> bool:
    """The smoothed prediction cannot change between distributions within total variation `tv`:
    p_lower - tv > p_runner_upper + tv, or p_lower - tv > 1/2 when the runner-up is only bounded by
    1 - p_lower."""
    if p_runner_upper is None:
        return p_lower - tv > 0.5
    return p_lower - tv > p_runner_upper + tv
