"""Interval statistics for every rate the suite reports (Clopper-Pearson, from statsmodels)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom
from statsmodels.stats.proportion import proportion_confint


@dataclass(frozen=True)
class Rate:
    """A proportion k/n with its two-sided (1 - alpha) Clopper-Pearson interval."""

    successes: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float | None:
        return self.successes / self.n if self.n else None

    def to_dict(self) -> dict:
        return {"value": self.value, **asdict(self)}

    def format(self) -> str:
        if not self.n:
            return "n/a (n=0)"
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n})"


def clopper_pearson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    low, high = proportion_confint(successes, n, alpha=alpha, method="beta")
    return float(low), float(high)


def rate(successes: int, n: int, alpha: float = 0.05) -> Rate:
    low, high = clopper_pearson(int(successes), int(n), alpha)
    return Rate(int(successes), int(n), low, high)


def median_interval(values, alpha: float = 0.05) -> tuple[float, float]:
    """Distribution-free (1 - alpha) interval for a median from order statistics: [x_(l), x_(n-l+1)]
    with l - 1 the largest j such that P(Binomial(n, 1/2) <= j) <= alpha / 2 (conservative with
    ties). (-inf, inf) when n is too small for any such l."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    cdf = binom.cdf(np.arange(n), n, 0.5)
    below = np.flatnonzero(cdf <= alpha / 2)
    if not len(below):
        return float("-inf"), float("inf")
    l = int(below[-1]) + 1  # 1-based order statistic
    return float(ordered[l - 1]), float(ordered[n - l])
