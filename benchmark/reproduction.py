"""The reproduction table: the seeds' directional claims, tested on a suite's stored outcomes.

A claims file (`benchmark/claims/<suite>.toml`) lists, per claim, the paper's statement and
figure, the metric, and two cells of the suite by their labels: `better`, the side the paper says
wins, and `worse`. Each side is {task, defense, attack}; `attack` is an attack's or a poisoner's
label, omitted for the clean cell. A **bound** claim names one side, `cell`, and a rate it stays
under, `at_most` (e.g. accuracy under an unbounded attack, or the share of correct predictions a
random-noise attack turns wrong). The cells are the suite's current ones (found by their content
hash, so outcomes of an older configuration are never used), and every number comes from the store.

The rule, stated once: a claim **holds** when the stored outcomes show the paper's direction by a
one-sided test at level ALPHA; it **does not hold** when both cells were measured and the test does
not reject (the detail says whether our difference even points the paper's way); it is **not
testable here** when a cell was not run (with the cell's recorded reason), is not in the suite, its
classifier is no better than always predicting the majority class (a constant classifier certifies
and resists every attack on one class, so its numbers say nothing about the defense), or the claims
file says why not. Tests, per metric:

- rates of per-example 0/1 outcomes (accuracies, attack success, certified accuracy): exact
  McNemar on the shared examples when the samples are nested (they are, within a task), Fisher's
  exact test otherwise (benchmark.stats.lower_pvalue);
- `certified_radius` (RanMASK's per-example certified robustness d, misclassified or abstained =
  -infinity as in MCB): one-sided Mann-Whitney U;
- a claim with `margin` is a non-inferiority claim ("at a small cost"): `better`'s rate is not
  below `worse`'s by `margin` or more, by the score test for two independent proportions;
- a bound claim (`at_most`): the cell's rate is below the bound, by an exact one-sided binomial
  test (with training seeds, every seed's test must reject: an intersection-union test);
- `colour_block_share` (the share of a perturbation on Confounded-Toy's colour blocks, recorded per
  example by the `pgd-block-share` attack): one-sided Mann-Whitney U, as for radii.

A claim may name training `seeds`: each side is then its row for each seed (the defense entry's
`seeds` in the suite: `label`, `label@seed1`, ...), and the rates are decided by an exact
stratified sign test over the seeds' discordant pairs, which holds only if a chi-square test does
not find the seeds splitting their discordant pairs differently (a pooled win carried by one seed
is not the method's). A claim may quote `paper_difference`, the paper's better-minus-worse rate: a
paired test that does not reject then says "underpowered here", with its power at our n to detect
that difference, unless that power reaches POWER_NEEDED (or the opposite is significant).

A side whose defense fails one of the suite's sanity checks on its task (benchmark/sanity.py: e.g.
AutoAttack weaker than PGD) keeps the rule's verdict, and the row names the flag: that side's
attacked figure overstates its robustness.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binomtest, mannwhitneyu
from statsmodels.stats.proportion import test_proportions_2indep

from benchmark import sanity
from benchmark.certify import median_certified
from benchmark.errors import UsageError
from benchmark.files import write_json, write_text
from benchmark.leaderboard import TEMPLATES, certified_robustness
from benchmark.metrics import metric
from benchmark.stats import (bound_pvalue, lower_pvalue, median_interval, paired_changes,
                             paired_power, rate, stratified_sign_test, stratum_heterogeneity)
from benchmark.store import Store
from benchmark.suite import Suite, replicate_label

ALPHA = 0.05
CLAIMS_DIR = Path(__file__).parent / "claims"
# The metrics a claim can compare -> their declaration in benchmark/metrics.py (label, direction).
# certified_radius compares RanMASK's per-example certified robustness, whose median is MCB.
CLAIM_METRICS = {"clean_accuracy": "clean_accuracy", "robust_accuracy": "robust_accuracy",
                 "certified_accuracy": "certified_accuracy", "benign_accuracy": "benign_accuracy",
                 "attack_success_rate": "attack_success_rate", "certified_radius": "mcb",
                 "colour_block_share": "colour_block_share"}
# Metrics with a per-example value that is not 0/1: compared by rank (Mann-Whitney U), never paired.
CONTINUOUS_METRICS = {"certified_radius", "colour_block_share"}
CLAIM_KEYS = {"id", "paper", "statement", "paper_figure", "metric", "better", "worse", "margin",
              "not_testable", "seeds", "paper_difference", "cell", "at_most"}
SIDE_KEYS = {"task", "defense", "attack"}
VERDICTS = ("holds", "does not hold", "underpowered here", "not testable here")
# A test that does not reject decides "does not hold" only if it had this power to detect the
# paper's own difference (the customary 80%); below it the verdict is "underpowered here".
POWER_NEEDED = 0.8


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    statement: str
    paper_figure: str
    metric: str
    better: dict | None = None  # a bound claim has `cell` and `at_most` instead of better / worse
    worse: dict | None = None
    margin: float | None = None
    not_testable: str | None = None
    seeds: tuple | None = None  # training seeds: each side is its suite row for each seed
    paper_difference: float | None = None  # the paper's better-minus-worse rate, for the power
    cell: dict | None = None  # a bound claim's one side
    at_most: float | None = None  # ... and the rate it stays under

    @property
    def sides(self) -> tuple[dict, ...]:
        return (self.cell,) if self.at_most is not None else (self.better, self.worse)


def claims_path(suite_name: str) -> Path:
    return CLAIMS_DIR / f"{suite_name}.toml"


def load_claims(path: Path) -> list[Claim]:
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{where}: not valid TOML ({error})") from error
    claims = []
    for number, entry in enumerate(raw.get("claim", []), 1):
        at = f"{where}: claim {number}"
        unknown = set(entry) - CLAIM_KEYS
        bound = "at_most" in entry
        sides = ("cell",) if bound else ("better", "worse")
        missing = {"id", "paper", "statement", "paper_figure", "metric", *sides} - set(entry)
        if unknown or missing:
            raise UsageError(f"{at}: " + "; ".join(
                ([f"unknown keys {sorted(unknown)}"] if unknown else [])
                + ([f"missing keys {sorted(missing)}"] if missing else []))
                + f" (valid keys: {sorted(CLAIM_KEYS)})")
        if entry["metric"] not in CLAIM_METRICS:
            raise UsageError(f"{at}: metric {entry['metric']!r} is not one of {sorted(CLAIM_METRICS)}")
        if bound and not {"better", "worse", "margin", "paper_difference"}.isdisjoint(entry):
            raise UsageError(f"{at}: a bound claim (at_most) names one side, `cell`, and no "
                             f"better / worse / margin / paper_difference")
        if "cell" in entry and not bound:
            raise UsageError(f"{at}: `cell` is a bound claim's side; give its bound, at_most")
        if bound and (entry["metric"] in CONTINUOUS_METRICS or isinstance(entry["at_most"], bool)
                      or not isinstance(entry["at_most"], (int, float)) or not 0 < entry["at_most"] < 1):
            raise UsageError(f"{at}: at_most must be a rate in (0, 1) of a rate metric, got "
                             f"{entry['at_most']!r} for {entry['metric']!r}")
        for side in sides:
            if not isinstance(entry[side], dict) or not {"task", "defense"} <= set(entry[side]) \
                    or set(entry[side]) - SIDE_KEYS:
                raise UsageError(f"{at}: {side} must be a table with task, defense and optionally "
                                 f"attack (the suite's labels), got {entry[side]!r}")
        if "margin" in entry and not 0 < entry["margin"] < 1:
            raise UsageError(f"{at}: margin must be a rate in (0, 1), got {entry['margin']!r}")
        if "paper_difference" in entry and not 0 < entry["paper_difference"] < 1:
            raise UsageError(f"{at}: paper_difference must be a rate in (0, 1) (the paper's "
                             f"better-minus-worse figure), got {entry['paper_difference']!r}")
        if "seeds" in entry:
            seeds = entry["seeds"]
            if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or any(
                    not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
                raise UsageError(f"{at}: seeds must be a list of distinct non-negative training "
                                 f"seeds, got {seeds!r}")
            entry = {**entry, "seeds": tuple(seeds)}
        claims.append(Claim(**entry))
    if not claims:
        raise UsageError(f"{where}: no [[claim]] entries")
    return claims


def _per_example(metric: str, outcomes: list[dict], backdoor: bool) -> dict:
    """example_index -> the claim's per-example outcome (bool, or a radius for certified_radius, a
    share for colour_block_share). `backdoor`: the outcomes are a backdoor cell's."""
    def right(o):
        return o["clean_prediction"] == o["label"]

    if metric in ("clean_accuracy", "benign_accuracy"):
        return {o["example_index"]: right(o) for o in outcomes}
    if metric == "robust_accuracy":
        return {o["example_index"]: right(o) and o["adversarial_prediction"] == o["label"]
                for o in outcomes if o["adversarial_prediction"] is not None}
    if metric == "attack_success_rate":
        # A test-time attack's success rate is over the examples classified correctly before it
        # (as the leaderboard counts it); a backdoor's over the triggered examples.
        return {o["example_index"]: bool(o["success"]) for o in outcomes
                if o["success"] is not None and (backdoor or right(o))}
    if metric == "colour_block_share":
        return {o["example_index"]: o["extra"]["colour_block_share"] for o in outcomes
                if o["extra"].get("colour_block_share") is not None}
    certified = [o for o in outcomes if o["certified"] is not None]
    if metric == "certified_accuracy":
        return {o["example_index"]: bool(o["certified"]) and right(o) for o in certified}
    return {o["example_index"]: certified_robustness(o) for o in certified}  # certified_radius


def _summary(metric: str, values: dict) -> str:
    if metric == "colour_block_share":
        array = np.array(list(values.values()), dtype=float)
        if not len(array):
            return "n/a (n=0)"
        low, high = median_interval(array, ALPHA)
        return (f"median {np.median(array):.3f} [{low:.3f}, {high:.3f}], mean {array.mean():.3f} "
                f"(n={len(array)})")
    if metric == "certified_radius":
        array = np.array(list(values.values()), dtype=float)
        low, high = median_interval(array, ALPHA)
        # None or -infinity is RanMASK's N/A: the median (or bound) example is not certified right
        show = lambda v: "N/A" if v is None or not np.isfinite(v) else f"{v:g}"  # noqa: E731
        return (f"{show(median_certified(array))} [{show(low)}, {show(high)}] (n={len(array)})"
                if len(array) else "n/a (n=0)")
    return rate(sum(values.values()), len(values), ALPHA).format()


def _test(claim: Claim, better: dict, worse: dict) -> tuple[float, float, str]:
    """(p-value in the paper's direction, p-value in the opposite one, the test's name)."""
    lower_is_better = metric(CLAIM_METRICS[claim.metric]).direction < 0
    if claim.metric in CONTINUOUS_METRICS:
        # -infinity (a radius' N/A) ranks below every radius; a finite stand-in keeps scipy's
        # arithmetic finite (shares are never negative)
        a = np.maximum(np.array(list(better.values()), dtype=float), -1.0)
        b = np.maximum(np.array(list(worse.values()), dtype=float), -1.0)
        ahead, behind = ("less", "greater") if lower_is_better else ("greater", "less")
        forward = mannwhitneyu(a, b, alternative=ahead).pvalue
        backward = mannwhitneyu(a, b, alternative=behind).pvalue
        return float(forward), float(backward), "one-sided Mann-Whitney U"
    if claim.margin is not None:
        k1, n1, k2, n2 = sum(better.values()), len(better), sum(worse.values()), len(worse)
        # H0: rate(better) - rate(worse) <= -margin against H1: the cost is smaller than margin.
        # (statsmodels also computes an odds ratio, which divides by zero at a rate of 1.)
        with np.errstate(divide="ignore", invalid="ignore"):
            forward = test_proportions_2indep(k1, n1, k2, n2, value=-claim.margin, compare="diff",
                                              alternative="larger").pvalue
            backward = test_proportions_2indep(k1, n1, k2, n2, value=-claim.margin,
                                               compare="diff", alternative="smaller").pvalue
        return float(forward), float(backward), f"non-inferiority score test, margin {claim.margin:g}"
    if lower_is_better:
        forward, name = lower_pvalue(better, worse)
        backward, _ = lower_pvalue(worse, better)
    else:
        forward, name = lower_pvalue(worse, better)
        backward, _ = lower_pvalue(better, worse)
    return forward, backward, f"one-sided {name}"


def _no_better_than_majority(outcomes: list[dict]) -> str | None:
    """Why a cell's classifier cannot carry a claim, or None: its clean accuracy is not above the
    rate of always predicting the sample's majority class (one-sided binomial test at ALPHA). A
    constant classifier certifies and resists attacks on every example of one class, so comparing
    its certificates or robustness says nothing about the defense."""
    labels = np.array([o["label"] for o in outcomes])
    correct = int(sum(o["clean_prediction"] == o["label"] for o in outcomes))
    majority = float(np.bincount(labels).max() / len(labels))
    if majority < 1 and binomtest(correct, len(labels), majority, alternative="greater").pvalue < ALPHA:
        return None
    return (f"its clean accuracy {100 * correct / len(labels):.1f}% (n={len(labels)}) is not above "
            f"always predicting the majority class ({100 * majority:.1f}%)")


def _collapsed(outcomes: list[dict], vanilla: list[dict] | None,
               training: dict | None) -> str | None:
    """Why a cell's classifier has collapsed, or None (benchmark.sanity.collapse_reasons, at
    ALPHA): a claim decided on a model that adversarial training at a large budget left predicting
    a few classes far below the undefended model says nothing about the method."""
    reasons = sanity.collapse_reasons(outcomes, vanilla, ALPHA, training)
    return f"collapsed: {' and '.join(reasons)}" if reasons else None


def _find_cell(suite: Suite, side: dict, seed: int | None = None):
    """The suite's cell of a claim side: its row, or with `seed` the row of that training seed
    (the defense entry's `seeds`: the task's own seed is the entry's label, another `label@seed<n>`)."""
    for cell in suite.cells:
        if (cell.task_label, cell.attack_label) != (side["task"], side.get("attack")):
            continue
        if seed is None and cell.defense_label == side["defense"]:
            return cell
        if seed is not None and cell.training_seed == seed and \
                cell.defense_label == replicate_label(side["defense"], cell.train_seed):
            return cell
    return None


def _sanity_flags(suite: Suite, store: Store, cell) -> list[str]:
    """The failed sanity checks (benchmark/sanity.py) of an attacked side's defense row on its task,
    computed over the suite's current cells, as the leaderboard computes them."""
    if not cell.attack_label:
        return []
    ids = {c.id for c in suite.cells
           if (c.task_label, c.defense_label) == (cell.task_label, cell.defense_label)}
    runs = [sanity.run_from_cell(record.attack or "", record.spec, store.outcomes(record.cell_id))
            for record in store.cells(suite.name) if record.cell_id in ids and record.status == "done"]
    checks = sanity.run_checks([run for run in runs if run is not None])
    return [f"{check.name}: {check.detail}" for check in checks if check.status == "flag"]


def _side_name(side: dict, seed: int | None = None) -> str:
    return (f"{side['defense']} on {side['task']}" + (f", {side['attack']}" if side.get("attack") else "")
            + (f" (training seed {seed})" if seed is not None else ""))


def _measure(claim: Claim, suite: Suite, store: Store, side: dict, seed: int | None,
             problems: list[str]):
    """(cell, per-example values) of one side for one training seed, or None with the reason
    appended to `problems`; a degenerate classifier is measured and its reason appended too."""
    name = _side_name(side, seed)
    cell = _find_cell(suite, side, seed)
    if cell is None:
        problems.append(f"suite {suite.name} has no cell {name}")
        return None
    status = store.cell_status(cell.id)
    if status != "done":
        reason = next((r.reason for r in store.cells(suite.name) if r.cell_id == cell.id), None)
        problems.append(f"{name}: " + (f"{status}: {reason}" if reason else
                                       f"not run yet ({status or 'not started'})"))
        return None
    outcomes = store.outcomes(cell.id)
    values = _per_example(claim.metric, outcomes, backdoor=cell.poison is not None)
    if not values:
        problems.append(f"{name} has no examples for {metric(CLAIM_METRICS[claim.metric]).label}")
        return cell, values
    vanilla = None
    if side["defense"] != "vanilla":
        reference = {"task": side["task"], "defense": "vanilla"}
        # the vanilla model of the same training seed where the suite has one, else its own row
        vanilla_cell = _find_cell(suite, reference, seed) or _find_cell(suite, reference)
        if vanilla_cell is not None and store.cell_status(vanilla_cell.id) == "done":
            vanilla = store.outcomes(vanilla_cell.id)
    training = store.training_record(cell.id)
    for degenerate in (_no_better_than_majority(outcomes), _collapsed(outcomes, vanilla, training)):
        if degenerate:
            problems.append(f"{name}: {degenerate}")
    return cell, values


def _wins_losses(claim: Claim, better: dict, worse: dict) -> tuple[int, int, int]:
    """(examples where `better` beats `worse`, examples where it loses, examples both measured):
    one training seed's discordant pairs in the paper's direction."""
    down, up, shared = paired_changes(worse, better)
    lower_is_better = metric(CLAIM_METRICS[claim.metric]).direction < 0
    return (down, up, shared) if lower_is_better else (up, down, shared)


def _power_note(claim: Claim, strata: list[tuple[int, int, int]]) -> tuple[float, str] | None:
    """(power, its description) of the paired test to detect the paper's difference at our n, for
    a rate claim that quotes one; None otherwise."""
    if claim.paper_difference is None or claim.metric in CONTINUOUS_METRICS or claim.margin:
        return None
    pairs = sum(shared for _, _, shared in strata)
    discordant = sum(w + l for w, l, _ in strata)
    if not pairs:
        return None
    power = paired_power(claim.paper_difference, discordant / pairs, pairs, ALPHA)
    return power, (f"power {100 * power:.0f}% at n = {pairs} pairs to detect the paper's difference "
                   f"of {100 * claim.paper_difference:.2g} points (our discordant rate "
                   f"{100 * discordant / pairs:.1f}%; normal approximation, Connor 1987)")


def _stratified(claim: Claim, better: dict, worse: dict) -> tuple[float, float, str, list]:
    """The claim's test over training seeds: (p-value in the paper's direction, in the opposite
    one, the test's description, the per-seed (wins, losses, shared) strata)."""
    strata = [_wins_losses(claim, better[seed], worse[seed]) for seed in claim.seeds]
    forward = stratified_sign_test([(w, l) for w, l, _ in strata])
    backward = stratified_sign_test([(l, w) for w, l, _ in strata])
    per_seed = ", ".join(f"seed {seed}: {w}-{l}" for seed, (w, l, _) in zip(claim.seeds, strata))
    test = (f"exact stratified sign test (McNemar over {len(strata)} training seeds; discordant "
            f"pairs won-lost {per_seed})")
    return forward, backward, test, strata


def _pooled(values: dict) -> dict:
    """Per-seed values as one sample, keyed by (seed, example index)."""
    return {(seed, index): value for seed, by_index in values.items()
            for index, value in by_index.items()}


def _seed_summary(claim: Claim, values: dict) -> str:
    pooled = _summary(claim.metric, _pooled(values))
    if claim.metric in CONTINUOUS_METRICS:
        return pooled
    seeds = " / ".join(f"{100 * sum(v.values()) / len(v):.1f}" if v else "n/a" for v in values.values())
    return f"{pooled}; per seed {seeds}"


def _bound_test(claim: Claim, values: dict) -> tuple[float, float, str]:
    """A bound claim's test: (p-value that the rate is below the bound, p-value that it is above,
    the test's description). Each training seed's exact one-sided binomial test; the largest
    p-value over the seeds, so the claim holds only if every seed's rate is below the bound (an
    intersection-union test, at level ALPHA)."""
    counts = [(sum(by_index.values()), len(by_index)) for by_index in values.values()]
    forward = max(bound_pvalue(k, n, claim.at_most, "less") for k, n in counts)
    backward = max(bound_pvalue(k, n, claim.at_most, "greater") for k, n in counts)
    test = f"exact one-sided binomial test against {100 * claim.at_most:g}%"
    if claim.seeds:
        test += f", every one of {len(counts)} training seeds (the largest p-value)"
    return forward, backward, test


def evaluate_claim(claim: Claim, suite: Suite, store: Store) -> dict:
    bound = claim.at_most is not None
    row = {"id": claim.id, "paper": claim.paper, "statement": claim.statement,
           "paper_figure": claim.paper_figure, "metric": metric(CLAIM_METRICS[claim.metric]).label,
           "better": _side_name(claim.cell if bound else claim.better),
           "worse": f"at most {100 * claim.at_most:g}%" if bound else _side_name(claim.worse),
           "ours_better": None, "ours_worse": None, "p_value": None}
    if claim.seeds:
        seeds_text = f" (training seeds {', '.join(map(str, claim.seeds))})"
        row["better"] += seeds_text
        if not bound:
            row["worse"] += seeds_text
    if claim.not_testable:
        return {**row, "verdict": "not testable here", "detail": claim.not_testable}
    # Both sides are measured before deciding, so the table shows every figure the store has even
    # when one side makes the claim untestable.
    seeds = claim.seeds or (None,)
    values, cells, problems = {"better": {}, "worse": {}}, [], []
    for key, side in zip(("better", "worse"), claim.sides):
        for seed in seeds:
            measured = _measure(claim, suite, store, side, seed, problems)
            if measured is not None:
                cells.append(measured[0])
                values[key][seed] = measured[1]
        if len(values[key]) == len(seeds):
            row[f"ours_{key}"] = (_seed_summary(claim, values[key]) if claim.seeds
                                  else _summary(claim.metric, values[key][None]))
    if problems:
        return {**row, "verdict": "not testable here", "detail": "; ".join(problems)}
    heterogeneity, strata = None, []
    if bound:
        forward, backward, test = _bound_test(claim, values["better"])
    elif claim.seeds and claim.metric not in CONTINUOUS_METRICS and claim.margin is None:
        forward, backward, test, strata = _stratified(claim, values["better"], values["worse"])
        heterogeneity = stratum_heterogeneity([(w, l) for w, l, _ in strata])
    else:
        better, worse = ((_pooled(values["better"]), _pooled(values["worse"])) if claim.seeds
                         else (values["better"][None], values["worse"][None]))
        forward, backward, test = _test(claim, better, worse)
        paired = _wins_losses(claim, better, worse)
        # the power of the paired test, where the samples are nested as a task's are
        strata = [paired] if paired[2] == min(len(better), len(worse)) else []
    row["p_value"] = forward
    # The verdict stays the rule's; a sanity flag on a side's attacks is shown beside it, because
    # it says that side's attacked figure overstates robustness.
    flags = [f"sanity flag on {cell.defense_label} on {cell.task_label}: {flag}"
             for cell in cells for flag in _sanity_flags(suite, store, cell)]
    if forward < ALPHA:
        if heterogeneity is not None and heterogeneity < ALPHA:
            return {**row, "verdict": "does not hold", "detail": "; ".join([
                f"{test}, p = {forward:.2g}, but the training seeds disagree (heterogeneity "
                f"chi-square p = {heterogeneity:.2g}): the pooled difference is not the method's",
                *flags])}
        return {**row, "verdict": "holds", "detail": "; ".join([f"{test}, p = {forward:.2g}", *flags])}
    direction = ("the opposite is significant" if backward < ALPHA else "not significant")
    detail = [f"{test}, p = {forward:.2g} ({direction})"]
    power = _power_note(claim, strata) if strata else None
    if power is not None:
        detail.append(power[1])
        if power[0] < POWER_NEEDED and backward >= ALPHA:
            return {**row, "verdict": "underpowered here", "detail": "; ".join([*detail, *flags])}
    return {**row, "verdict": "does not hold", "detail": "; ".join([*detail, *flags])}


def build_reproduction(claims: list[Claim], suite: Suite, store: Store) -> dict:
    rows = [evaluate_claim(claim, suite, store) for claim in claims]
    counts = {verdict: sum(r["verdict"] == verdict for r in rows) for verdict in VERDICTS}
    return {"suite": suite.name, "suite_sha256": suite.sha256, "alpha": ALPHA, "counts": counts,
            "rows": rows}


def rule_text(table: dict) -> str:
    """The verdict rule, as the markdown table and the site's page state it."""
    return (
        f"Rule: a claim holds when our outcomes show the paper's direction by a one-sided test "
        f"at level {table['alpha']} (exact McNemar on the shared examples for rates, Mann-Whitney U "
        f"for certified radii and perturbation shares, a score test against the stated margin for "
        f"\"small cost\" claims, an exact binomial test against the stated bound for \"at most\" "
        f"claims, which with training seeds must reject for every seed); "
        f"a claim over training seeds pools each seed's discordant pairs in an exact stratified "
        f"sign test (the exact Cochran-Mantel-Haenszel test of matched pairs) and holds only if the "
        f"seeds also agree (a chi-square test of the seeds' win shares does not reject); "
        f"it does not hold when both cells were measured and the test does not reject, unless "
        f"the paired test had under {100 * POWER_NEEDED:.0f}% power to detect the paper's own "
        f"difference at our n (normal approximation), which is \"underpowered here\" with the "
        f"power; it is not testable here when a cell was not run, its classifier is no better than "
        f"always predicting the majority class, or it collapsed (predicts fewer than half of the "
        f"classes, or its clean accuracy is below half of the vanilla model's) (reason given). "
        f"A failed sanity check of a side's "
        f"defense (leaderboard.md, \"Sanity checks\") is named beside the verdict: that side's "
        f"attacked figure overstates its robustness. Our figures are rates in % "
        f"with 95% Clopper-Pearson intervals, or medians with 95% order-statistic intervals, and n. "
        f"The papers' figures are at their scale (pretrained models, full data, GPUs); ours are at "
        f"the suite's, so only directions are compared.")


def verdict_counts(table: dict) -> str:
    return ", ".join(f"{n} {verdict}" for verdict, n in table["counts"].items())


def render_reproduction(table: dict) -> str:
    return TEMPLATES.get_template("REPRODUCTION.md").render(table=table, rule_text=rule_text,
                                                            verdict_counts=verdict_counts)


def write_reproduction(suite: Suite, store: Store, out_dir: Path) -> dict | None:
    """REPRODUCTION.md and reproduction.json in out_dir, if the suite has a claims file."""
    path = claims_path(suite.name)
    if not path.is_file():
        return None
    table = build_reproduction(load_claims(path), suite, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "REPRODUCTION.md", render_reproduction(table))
    write_json(out_dir / "reproduction.json", table)
    return table
