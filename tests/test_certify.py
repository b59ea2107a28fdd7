"""Properties of the certification statistics (benchmark/certify.py), tested rather than assumed."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from benchmark import certify as stats
from benchmark.interfaces import ABSTAIN
from benchmark.stats import median_interval

FAST = settings(max_examples=40, deadline=None, derandomize=True)


@FAST
@given(n=st.integers(1, 400), k=st.integers(0, 400), alpha=st.sampled_from([0.001, 0.01, 0.05, 0.1]))
def test_clopper_pearson_bounds_are_monotone_in_counts(n, k, alpha):
    k = min(k, n)
    low, high = stats.lower_confidence_bound(k, n, alpha), stats.upper_confidence_bound(k, n, alpha)
    assert 0 <= low <= k / n <= high <= 1
    if k < n:  # one more success raises both bounds
        assert stats.lower_confidence_bound(k + 1, n, alpha) >= low
        assert stats.upper_confidence_bound(k + 1, n, alpha) >= high
    # one more failure (n + 1 draws, k successes) lowers both
    assert stats.lower_confidence_bound(k, n + 1, alpha) <= low
    assert stats.upper_confidence_bound(k, n + 1, alpha) <= high
    # a smaller alpha (more confidence) gives a lower lower bound
    assert stats.lower_confidence_bound(k, n, alpha / 2) <= low


@settings(max_examples=12, deadline=None, derandomize=True)
@given(p=st.floats(0.02, 0.98), n=st.integers(5, 300), alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_clopper_pearson_lower_bound_covers_by_simulation(p, n, alpha):
    rng = np.random.default_rng(0)
    draws = 4000
    successes = rng.binomial(n, p, size=draws)
    covered = np.mean(stats.lower_confidence_bound(successes, n, alpha) <= p)
    # one-sided (1 - alpha) coverage, up to four standard errors of the simulation
    assert covered >= 1 - alpha - 4 * math.sqrt(alpha * (1 - alpha) / draws)


@FAST
@given(h=st.integers(1, 60), data=st.data())
def test_ranmask_delta_is_monotone_in_d_with_exact_ends(h, data):
    k = data.draw(st.integers(0, h))
    deltas = [stats.ranmask_delta(h, k, d) for d in range(h + 1)]
    assert deltas[0] == 0
    assert all(a <= b + 1e-12 for a, b in zip(deltas, deltas[1:]))
    for d, delta in enumerate(deltas):
        exact = 1 - math.comb(h - d, k) / math.comb(h, k)
        assert delta == pytest.approx(exact, abs=1e-12)
    assert all(delta == 1.0 for delta in deltas[h - k + 1:])


def test_ranmask_keep_and_certified_words():
    assert stats.ranmask_keep(20, 0.9) == 2 and stats.ranmask_keep(10, 0.7) == 3
    assert stats.ranmask_certified_words(0.5, 20, 2, 0.5) == -1  # no certificate at all
    h, k = 20, 2
    d = stats.ranmask_certified_words(0.95, h, k, 0.95)
    assert d >= 1
    assert 0.95 - 0.95 * stats.ranmask_delta(h, k, d) > 0.5
    assert not 0.95 - 0.95 * stats.ranmask_delta(h, k, d + 1) > 0.5
    # monotone in p_lower, and beta = 1 (worst case) never certifies more than beta = p_c
    words = [stats.ranmask_certified_words(p, h, k, p) for p in np.linspace(0.5, 1, 30)]
    assert words == sorted(words)
    assert stats.ranmask_certified_words(0.95, h, k, 1.0) <= d


def test_monte_carlo_beta():
    rng = np.random.default_rng(0)
    kept = np.zeros((4, 5), dtype=bool)
    kept[0, 0] = kept[1, 1] = kept[2, 2] = True  # copy 3 keeps nothing and never touches
    predictions = np.array([1, 1, 0, 0])
    beta = stats.monte_carlo_beta(kept, predictions, 1, 5, 50, rng)
    assert 0 < beta < 1
    assert stats.monte_carlo_beta(kept[3:], predictions[3:], 1, 2, 10, rng) == 1.0


def test_median_certified_counts_wrong_as_minus_infinity():
    na = -np.inf
    assert stats.median_certified([na, na, 1, 2, 3]) == 1
    assert stats.median_certified([na, na, na, 2, 3]) is None
    assert stats.median_certified([]) is None
    assert stats.median_certified([na, 1, 2, 3]) == 1  # the lower middle value
    low, high = median_interval(np.arange(100.0))
    assert low < 49.5 < high


def test_predict_and_certify_follow_cohen():
    assert stats.predict([50, 50], 0.05) == ABSTAIN
    assert stats.predict([90, 10], 0.05) == 0
    assert stats.predict([3, 30, 1], 0.05) == 1
    guess, p_lower = stats.certify([2, 98], [10, 990], 0.05)
    assert guess == 1 and 0.98 < p_lower < 0.99
    guess, p_lower = stats.certify([2, 98], [500, 500], 0.05)  # selection disagrees with estimation
    assert guess == ABSTAIN and p_lower < 0.5


@FAST
@given(p=st.floats(0.001, 0.999), sigma=st.floats(0.01, 10))
def test_gaussian_radius_is_zero_at_one_half_and_monotone(p, sigma):
    assert stats.gaussian_radius(0.5, sigma) == 0
    radius = stats.gaussian_radius(p, sigma)
    assert (radius > 0) == (p > 0.5)
    assert stats.gaussian_radius(min(p + 0.0005, 0.9999), sigma) >= radius


@FAST
@given(a=st.sets(st.integers(0, 30), min_size=1), b=st.sets(st.integers(0, 30), min_size=1))
def test_overlap_ratio_is_one_minus_total_variation(a, b):
    support = sorted(a | b)
    pa = np.array([1 / len(a) if x in a else 0 for x in support])
    pb = np.array([1 / len(b) if x in b else 0 for x in support])
    tv = 0.5 * np.abs(pa - pb).sum()
    assert stats.overlap_ratio(len(a), len(b), len(a & b)) == pytest.approx(1 - tv)


@FAST
@given(sizes=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 6)), min_size=1, max_size=4))
def test_total_variation_bound_holds_for_product_distributions(sizes):
    """Exact TV between two products of uniform distributions never exceeds the bound."""
    coordinates = []
    for size, shift in sizes:  # coordinate j: uniform on [0, size) versus on [shift, shift + size)
        support = np.arange(size + shift)
        coordinates.append(((support < size) / size, ((support >= shift) & (support < shift + size)) / size,
                            stats.overlap_ratio(size, size, max(size - shift, 0))))
    p = q = np.ones(1)
    for pa, pb, _ in coordinates:
        p, q = np.outer(p, pa).ravel(), np.outer(q, pb).ravel()
    exact = 0.5 * np.abs(p - q).sum()
    bound = stats.total_variation_bound([c[2] for c in coordinates])
    assert exact <= bound + 1e-12
    assert stats.total_variation_bound([c[2] for c in coordinates], max_changed=1) <= bound + 1e-12


def test_tv_certified():
    assert stats.tv_certified(0.9, 0.3)
    assert not stats.tv_certified(0.9, 0.4)
    assert stats.tv_certified(0.8, 0.1, p_runner_upper=0.5)
    assert not stats.tv_certified(0.8, 0.2, p_runner_upper=0.5)


def test_perturbation_sets_follow_safer():
    table = {"good": ["great", "fine"], "great": ["good"], "bad": ["awful"],
             "a": ["b"], "b": ["c"], "c": ["d"], "d": ["e"]}
    sets = stats.PerturbationSets(table, max_size=3)
    assert sets["good"] == sets["great"] == sets["fine"] == ("fine", "good", "great")
    assert sets["unknown"] == ("unknown",)
    assert sets["a"] == ("a", "b", "c") and sets["c"][0] == "c" and len(sets["c"]) == 3
    # a small component is one shared set: substitutions inside it cost nothing
    assert stats.substitution_overlap("good", table, sets) == 1.0
    assert stats.substitution_overlap("c", table, sets) == pytest.approx(2 / 3)  # {b,c,d} vs {c,d,e}
    assert stats.substitution_overlap("unknown", table, sets) == 1.0
