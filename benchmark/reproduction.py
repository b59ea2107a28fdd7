"""The reproduction table: the seeds' directional claims, tested on a suite's stored outcomes.

A claims file (`benchmark/claims/<suite>.toml`) lists, per claim, the paper's statement and
figure, the metric, and two cells of the suite by their labels: `better`, the side the paper says
wins, and `worse`. Each side is {task, defense, attack}; `attack` is an attack's or a poisoner's
label, omitted for the clean cell. The cells are the suite's current ones (found by their content
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
  below `worse`'s by `margin` or more, by the score test for two independent proportions.

A side whose defense fails one of the suite's sanity checks on its task (benchmark/sanity.py: e.g.
AutoAttack weaker than PGD) keeps the rule's verdict, and the row names the flag: that side's
attacked figure overstates its robustness.
"""
from __future__ import annotations

import math
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
from benchmark.stats import lower_pvalue, median_interval, rate
from benchmark.store import Store
from benchmark.suite import Suite

ALPHA = 0.05
CLAIMS_DIR = Path(__file__).parent / "claims"
# The metrics a claim can compare -> their declaration in benchmark/metrics.py (label, direction).
# certified_radius compares RanMASK's per-example certified robustness, whose median is MCB.
CLAIM_METRICS = {"clean_accuracy": "clean_accuracy", "robust_accuracy": "robust_accuracy",
                 "certified_accuracy": "certified_accuracy", "benign_accuracy": "benign_accuracy",
                 "attack_success_rate": "attack_success_rate", "certified_radius": "mcb"}
CLAIM_KEYS = {"id", "paper", "statement", "paper_figure", "metric", "better", "worse", "margin",
              "not_testable"}
SIDE_KEYS = {"task", "defense", "attack"}
VERDICTS = ("holds", "does not hold", "not testable here")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    statement: str
    paper_figure: str
    metric: str
    better: dict
    worse: dict
    margin: float | None = None
    not_testable: str | None = None


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
        missing = {"id", "paper", "statement", "paper_figure", "metric", "better", "worse"} - set(entry)
        if unknown or missing:
            raise UsageError(f"{at}: " + "; ".join(
                ([f"unknown keys {sorted(unknown)}"] if unknown else [])
                + ([f"missing keys {sorted(missing)}"] if missing else []))
                + f" (valid keys: {sorted(CLAIM_KEYS)})")
        if entry["metric"] not in CLAIM_METRICS:
            raise UsageError(f"{at}: metric {entry['metric']!r} is not one of {sorted(CLAIM_METRICS)}")
        for side in ("better", "worse"):
            if not isinstance(entry[side], dict) or not {"task", "defense"} <= set(entry[side]) \
                    or set(entry[side]) - SIDE_KEYS:
                raise UsageError(f"{at}: {side} must be a table with task, defense and optionally "
                                 f"attack (the suite's labels), got {entry[side]!r}")
        if "margin" in entry and not 0 < entry["margin"] < 1:
            raise UsageError(f"{at}: margin must be a rate in (0, 1), got {entry['margin']!r}")
        claims.append(Claim(**entry))
    if not claims:
        raise UsageError(f"{where}: no [[claim]] entries")
    return claims


def _per_example(metric: str, outcomes: list[dict]) -> dict:
    """example_index -> the claim's per-example outcome (bool, or a radius for certified_radius)."""
    def right(o):
        return o["clean_prediction"] == o["label"]

    if metric in ("clean_accuracy", "benign_accuracy"):
        return {o["example_index"]: right(o) for o in outcomes}
    if metric == "robust_accuracy":
        return {o["example_index"]: right(o) and o["adversarial_prediction"] == o["label"]
                for o in outcomes if o["adversarial_prediction"] is not None}
    if metric == "attack_success_rate":
        return {o["example_index"]: bool(o["success"]) for o in outcomes if o["success"] is not None}
    certified = [o for o in outcomes if o["certified"] is not None]
    if metric == "certified_accuracy":
        return {o["example_index"]: bool(o["certified"]) and right(o) for o in certified}
    return {o["example_index"]: certified_robustness(o) for o in certified}  # certified_radius


def _summary(metric: str, values: dict) -> str:
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
    if claim.metric == "certified_radius":
        # -infinity ranks below every radius; a finite stand-in keeps scipy's arithmetic finite
        a = np.maximum(np.array(list(better.values()), dtype=float), -1.0)
        b = np.maximum(np.array(list(worse.values()), dtype=float), -1.0)
        forward = mannwhitneyu(a, b, alternative="greater").pvalue
        backward = mannwhitneyu(a, b, alternative="less").pvalue
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


def _collapsed(outcomes: list[dict], vanilla: list[dict] | None) -> str | None:
    """Why a cell's classifier has collapsed, or None. Adversarial training at a large budget can
    end in a model that predicts a few classes far below the undefended model; a claim decided on
    it says nothing about the method. Collapsed: it predicts fewer than half of the classes in the
    sample, or its clean accuracy is below half of the vanilla model's on the same task (one-sided
    exact binomial test at ALPHA), a loss far beyond the usual robustness-accuracy trade-off."""
    labels = np.array([o["label"] for o in outcomes])
    predicted = {o["clean_prediction"] for o in outcomes}
    present = len(set(labels.tolist()))
    reasons = []
    if len(predicted) < math.ceil(present / 2):
        reasons.append(f"it predicts {len(predicted)} of the {present} classes in the sample")
    if vanilla:
        correct = int(sum(o["clean_prediction"] == o["label"] for o in outcomes))
        vanilla_rate = sum(o["clean_prediction"] == o["label"] for o in vanilla) / len(vanilla)
        if binomtest(correct, len(labels), vanilla_rate / 2, alternative="less").pvalue < ALPHA:
            reasons.append(f"its clean accuracy {100 * correct / len(labels):.1f}% is below half "
                           f"of the vanilla model's ({100 * vanilla_rate:.1f}%)")
    return f"collapsed: {' and '.join(reasons)}" if reasons else None


def _find_cell(suite: Suite, side: dict):
    for cell in suite.cells:
        if (cell.task_label, cell.defense_label, cell.attack_label) == \
                (side["task"], side["defense"], side.get("attack")):
            return cell
    return None


def _sanity_flags(suite: Suite, store: Store, side: dict) -> list[str]:
    """The failed sanity checks (benchmark/sanity.py) of an attacked side's defense on its task,
    computed over the suite's current cells, as the leaderboard computes them."""
    if not side.get("attack"):
        return []
    ids = {cell.id for cell in suite.cells
           if (cell.task_label, cell.defense_label) == (side["task"], side["defense"])}
    runs = [sanity.run_from_cell(record.attack or "", record.spec, store.outcomes(record.cell_id))
            for record in store.cells(suite.name) if record.cell_id in ids and record.status == "done"]
    checks = sanity.run_checks([run for run in runs if run is not None])
    return [f"{check.name}: {check.detail}" for check in checks if check.status == "flag"]


def _side_name(side: dict) -> str:
    return f"{side['defense']} on {side['task']}" + (f", {side['attack']}" if side.get("attack") else "")


def evaluate_claim(claim: Claim, suite: Suite, store: Store) -> dict:
    row = {"id": claim.id, "paper": claim.paper, "statement": claim.statement,
           "paper_figure": claim.paper_figure, "metric": metric(CLAIM_METRICS[claim.metric]).label,
           "better": _side_name(claim.better), "worse": _side_name(claim.worse),
           "ours_better": None, "ours_worse": None, "p_value": None}
    if claim.not_testable:
        return {**row, "verdict": "not testable here", "detail": claim.not_testable}
    # Both sides are measured before deciding, so the table shows every figure the store has even
    # when one side makes the claim untestable.
    values, problems = {}, []
    for key, side in (("better", claim.better), ("worse", claim.worse)):
        cell = _find_cell(suite, side)
        if cell is None:
            problems.append(f"suite {suite.name} has no cell {_side_name(side)}")
            continue
        status = store.cell_status(cell.id)
        if status != "done":
            reason = next((r.reason for r in store.cells(suite.name) if r.cell_id == cell.id), None)
            problems.append(f"{_side_name(side)}: " + (f"{status}: {reason}" if reason else
                                                        f"not run yet ({status or 'not started'})"))
            continue
        outcomes = store.outcomes(cell.id)
        values[key] = _per_example(claim.metric, outcomes)
        row[f"ours_{key}"] = _summary(claim.metric, values[key])
        if not values[key]:
            problems.append(f"{_side_name(side)} has no examples for {row['metric']}")
            continue
        vanilla_cell = _find_cell(suite, {"task": side["task"], "defense": "vanilla"})
        vanilla = (store.outcomes(vanilla_cell.id) if vanilla_cell is not None and
                   side["defense"] != "vanilla" and store.cell_status(vanilla_cell.id) == "done"
                   else None)
        for degenerate in (_no_better_than_majority(outcomes), _collapsed(outcomes, vanilla)):
            if degenerate:
                problems.append(f"{_side_name(side)}: {degenerate}")
    if problems:
        return {**row, "verdict": "not testable here", "detail": "; ".join(problems)}
    forward, backward, test = _test(claim, values["better"], values["worse"])
    row["p_value"] = forward
    # The verdict stays the rule's; a sanity flag on a side's attacks is shown beside it, because
    # it says that side's attacked figure overstates robustness.
    flags = [f"sanity flag on {claim_side['defense']} on {claim_side['task']}: {flag}"
             for claim_side in (claim.better, claim.worse) for flag in _sanity_flags(suite, store, claim_side)]
    if forward < ALPHA:
        return {**row, "verdict": "holds", "detail": "; ".join([f"{test}, p = {forward:.2g}", *flags])}
    direction = ("the opposite is significant" if backward < ALPHA else "not significant")
    return {**row, "verdict": "does not hold",
            "detail": "; ".join([f"{test}, p = {forward:.2g} ({direction})", *flags])}


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
        f"for certified radii, a score test against the stated margin for \"small cost\" claims); "
        f"it does not hold when both cells were measured and the test does not reject; it is "
        f"not testable here when a cell was not run, its classifier is no better than always "
        f"predicting the majority class, or it collapsed (predicts fewer than half of the classes, "
        f"or its clean accuracy is below half of the vanilla model's) (reason given). A failed sanity check of a side's "
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
