"""Interval statistics for every rate the suite reports (Clopper-Pearson, from statsmodels), and the
exact tests that compare two measurements of the same examples."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom, binomtest, chi2_contingency, fisher_exact, norm
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


def paired_changes(before: dict, after: dict) -> tuple[int, int, int]:
    """Per-example values keyed by example index (0/1 outcomes, or radii with -inf for N/A), of the
    same examples measured twice: (down, up, shared), how many of the examples both measured have a
    lower and a higher value in `after`, and how many both measured."""
    shared = before.keys() & after.keys()
    down = sum(1 for i in shared if after[i] < before[i])
    up = sum(1 for i in shared if after[i] > before[i])
    return down, up, len(shared)


def sign_test(down: int, up: int, alternative: str = "two-sided") -> float:
    """Exact sign test on paired examples: a binomial test of `down` out of the `down + up` examples
    that changed, at 1/2 (`alternative="greater"`: down more often than up). On 0/1 outcomes it is
    the exact McNemar test. 1.0 when no example changed."""
    if down + up == 0:
        return 1.0
    return float(binomtest(down, down + up, 0.5, alternative=alternative).pvalue)


def bound_pvalue(successes: int, n: int, bound: float, alternative: str) -> float:
    """Exact one-sided binomial p-value that the rate behind `successes` of `n` is below `bound`
    (`alternative="less"`) or above it (`"greater"`)."""
    return float(binomtest(successes, n, bound, alternative=alternative).pvalue)


def lower_pvalue(a: dict, b: dict) -> tuple[float, str]:
    """One-sided p-value that the rate of `a` is below the rate of `b`, for per-example 0/1
    outcomes keyed by example index, and the test's name.

    Paired (exact McNemar: a binomial test on the discordant examples) when one side's examples
    contain the other's, as the evaluator's nested samples do; Fisher's exact test otherwise."""
    a_lower, a_higher, shared = paired_changes(b, a)
    if shared and shared == min(len(a), len(b)):
        if a_lower + a_higher == 0:
            return 1.0, f"paired McNemar, {shared} shared examples, none discordant"
        return sign_test(a_lower, a_higher, "greater"), f"paired McNemar, {shared} shared examples"
    if not a or not b:
        return 1.0, "no examples"
    ka, kb = sum(map(bool, a.values())), sum(map(bool, b.values()))
    table = [[ka, len(a) - ka], [kb, len(b) - kb]]
    return float(fisher_exact(table, alternative="less").pvalue), "Fisher exact, unpaired"


def stratified_sign_test(strata: list[tuple[int, int]]) -> float:
    """One-sided exact p-value that `wins` exceed `losses` over strata of paired examples, each
    stratum a (wins, losses) count of its discordant pairs (one training seed's McNemar table).
    Under the null of no difference in any stratum each discordant pair is a fair coin, so the
    pooled wins are Binomial(pooled discordant, 1/2): the exact form of the Cochran-Mantel-Haenszel
    test with every matched pair a stratum. 1.0 when no pair is discordant."""
    wins, losses = sum(w for w, _ in strata), sum(l for _, l in strata)
    return sign_test(wins, losses, "greater")


def stratum_heterogeneity(strata: list[tuple[int, int]]) -> float | None:
    """p-value of the chi-square test that every stratum splits its discordant pairs between wins
    and losses in the same proportion (Pearson, strata with no discordant pair left out), or None
    when fewer than two strata have any: a pooled win carried by one seed shows here."""
    rows = [[w, l] for w, l in strata if w + l]
    if len(rows) < 2 or not sum(w for w, _ in rows) or not sum(l for _, l in rows):
        return None
    return float(chi2_contingency(rows, correction=False).pvalue)


def paired_power(difference: float, discordant_rate: float, n: int, alpha: float) -> float:
    """Power of the one-sided paired test of two proportions (McNemar) at level alpha to detect a
    rate `difference` over `n` pairs whose share of discordant pairs is `discordant_rate` (raised to
    |difference|, the least it can be), by the normal approximation (Connor 1987):
    Phi((|d| sqrt(n) - z_{1-alpha} sqrt(psi)) / sqrt(psi - d^2))."""
    d = abs(difference)
    psi = max(discordant_rate, d)
    spread = psi - d * d
    if spread <= 0:
        return 1.0
    z = norm.ppf(1 - alpha)
    return float(norm.cdf((d * np.sqrt(n) - z * np.sqrt(psi)) / np.sqrt(spread)))
