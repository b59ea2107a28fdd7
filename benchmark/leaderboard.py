"""Leaderboards from the results store: per task, a defense x attack matrix per threat family
ranked by the per-example worst case, then one table per threat model; as md, csv and json.

A table's key is the attack's threat-model id (the attack and every constraint of its config), so
rows measured under different budgets or constraints never share a column. Every rate carries its
sample count and a 95% Clopper-Pearson interval. Every table ranks its rows by one metric
(benchmark.metrics.RANKED_BY), and a row a sanity check flags never ranks above an unflagged one on
an attacked figure: its own checks say that figure overstates its robustness.
"""
from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import jinja2
import numpy as np
from statsmodels.stats.multitest import multipletests
from tabulate import tabulate

from benchmark import sanity
from benchmark.audit import summarize as audit_summary
from benchmark.certify import median_certified
from benchmark.files import write_json, write_text
from benchmark.metrics import AT_RADIUS, ATTACK, BACKDOOR, CLEAN, MATRIX, RANKED_BY, columns, metric
from benchmark.registry import ATTACKS
from benchmark.stats import median_interval, paired_changes, rate, sign_test
from benchmark.store import Store
from benchmark.suite import replicate_label

REPORT_ALPHA = 0.05  # every reported interval is a 95% interval
TIER_ALPHA = 0.05  # family-wise level of the tests that separate significance tiers
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("benchmark", "templates"),
                               autoescape=jinja2.select_autoescape(["html", "svg"]),
                               trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
# Radii at which certified accuracy is reported, per certificate unit (certified and correct with a
# radius of at least r); units not listed get only the overall certified accuracy.
CERTIFIED_RADII = {"l2": (0.0, 0.25, 0.5, 0.75, 1.0)}
MANIFEST_KEYS = ("suite", "suite_sha256", "seed", "git_commit", "git_dirty", "packages", "python",
                 "device", "cpu", "gpu", "torch_threads", "determinism", "data", "protocols")


def cell_metrics(outcomes: list[dict], has_attack: bool, unit: str | None = None) -> dict:
    labels = np.array([o["label"] for o in outcomes])
    clean = np.array([o["clean_prediction"] for o in outcomes])
    correct = clean == labels
    metrics = {"clean_accuracy": rate(correct.sum(), len(labels), REPORT_ALPHA).to_dict()}
    if has_attack:
        attacked = np.array([o["adversarial_prediction"] for o in outcomes])
        success = np.array([o["success"] for o in outcomes], dtype=bool)
        queries = np.array([o["queries"] for o in outcomes], dtype=float)
        perturbation = np.array([o["perturbation"] for o in outcomes], dtype=float)
        # The TextAttack / TextDefender / RanMASK conventions: accuracy under attack counts the
        # examples classified correctly both before and after the attack (so it never exceeds clean
        # accuracy, even for a randomized rule that happens to get an adversarial input right);
        # success rate and queries are over the clean-correct examples; the perturbation size is
        # averaged over successful attacks.
        metrics["robust_accuracy"] = rate((correct & (attacked == labels)).sum(), len(labels),
                                          REPORT_ALPHA).to_dict()
        extras = [o.get("extra") or {} for o in outcomes]
        if any("judge_draws" in extra for extra in extras):
            all_draws = np.array([extra.get("correct_draws") == extra.get("judge_draws")
                                  for extra in extras], dtype=bool)
            metrics["robust_accuracy_all_draws"] = rate((correct & all_draws).sum(), len(labels),
                                                        REPORT_ALPHA).to_dict()
        metrics["attack_success_rate"] = rate(success.sum(), correct.sum(), REPORT_ALPHA).to_dict()
        metrics["mean_queries"] = _mean(queries[correct])
        metrics["mean_perturbation"] = _mean(perturbation[success])
        shares = [extra["colour_block_share"] for extra in extras
                  if extra.get("colour_block_share") is not None]
        if shares:
            metrics["colour_block_share"] = _mean(np.array(shares))
    certified = [o for o in outcomes if o["certified"] is not None]
    if certified:
        # An example counts when its certificate holds *and* the deployed prediction is right: a
        # randomized defense certifies with more draws than it predicts with, and the certified
        # accuracy must not exceed the clean accuracy of the rule actually deployed.
        flags = np.array([o["certified"] and o["clean_prediction"] == o["label"] for o in certified],
                         dtype=bool)
        abstained = np.array([o["abstained"] for o in certified], dtype=bool)
        metrics["certified_accuracy"] = rate(flags.sum(), len(certified), REPORT_ALPHA).to_dict()
        metrics["abstain_rate"] = rate(abstained.sum(), len(certified), REPORT_ALPHA).to_dict()
        radii = np.array([o["radius"] for o in certified], dtype=float)
        metrics["median_certified_radius"] = {"value": float(np.median(np.where(flags, radii, 0.0))),
                                              "n": len(certified)}
        # RanMASK's l0 certificate (its unit names beta): MCB and MCR, wrong or abstained = -infinity
        if unit and unit.split(" (")[0] == "words":
            robustness = np.array([certified_robustness(o) for o in certified])
            lengths = np.array([o["extra"].get("length") or np.nan for o in certified], dtype=float)
            metrics["mcb"] = _median_metric(robustness)
            metrics["mcr"] = _median_metric(np.where(np.isfinite(robustness), robustness / lengths,
                                                     -np.inf))
        for radius in CERTIFIED_RADII.get(unit, ()):
            metrics[f"certified_accuracy@{radius:g}"] = rate(
                (flags & (radii >= radius)).sum(), len(certified), REPORT_ALPHA).to_dict()
    return metrics


def certified_robustness(outcome: dict) -> float:
    """RanMASK's per-example certified robustness d for MCB: the certified radius in words, or
    -infinity (N/A) when the example is abstained on or classified wrong."""
    right = (not outcome["abstained"] and outcome["clean_prediction"] == outcome["label"]
             and outcome["extra"].get("certified_prediction") == outcome["label"])
    return float(outcome["radius"]) if right else -np.inf


def _median_metric(values: np.ndarray) -> dict:
    """A median with its 95% order-statistic interval; -infinity (N/A) is reported as None."""
    low, high = median_interval(values, REPORT_ALPHA)
    return {"value": median_certified(values), "low": _finite(low), "high": _finite(high),
            "n": int(len(values))}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def backdoor_metrics(outcomes: list[dict]) -> dict:
    """A backdoor cell: benign accuracy on the clean test inputs; attack success rate (prediction =
    target) and, for certifying defenses, certified accuracy (certified and correct against the
    true label) on the triggered inputs, which are the test examples whose label is not the target."""
    labels = np.array([o["label"] for o in outcomes])
    clean = np.array([o["clean_prediction"] for o in outcomes])
    triggered = [o for o in outcomes if o["success"] is not None]
    metrics = {"benign_accuracy": rate((clean == labels).sum(), len(labels), REPORT_ALPHA).to_dict(),
               "attack_success_rate": rate(sum(o["success"] for o in triggered), len(triggered),
                                           REPORT_ALPHA).to_dict()}
    certified = [o for o in triggered if o["certified"] is not None]
    if certified:
        flags = np.array([o["certified"] for o in certified], dtype=bool)
        metrics["certified_accuracy"] = rate(flags.sum(), len(certified), REPORT_ALPHA).to_dict()
        radii = np.array([o["radius"] for o in certified], dtype=float)
        metrics["median_certified_radius"] = {"value": float(np.median(np.where(flags, radii, 0.0))),
                                              "n": len(certified)}
    return metrics


def _mean(values: np.ndarray) -> dict:
    return {"value": float(values.mean()) if len(values) else None, "n": int(len(values)),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None}


CURVE_POINTS = 200  # at most this many radii per certified-accuracy curve


def certified_curve(outcomes: list[dict]) -> dict | None:
    """Certified accuracy against radius (Cohen et al. 2019, Fig. 1): at radius r, the fraction of
    the n evaluated examples that are certified correct with a radius of at least r, counting (as
    certified accuracy does) only those whose deployed prediction is also correct, so that at r = 0
    the curve never exceeds clean accuracy. The points are (0 and) every distinct certified radius,
    or a regular grid when there are too many of them."""
    certified = [o for o in outcomes if o["certified"] is not None]
    if not certified:
        return None
    radii = np.array([o["radius"] if o["certified"] and o["clean_prediction"] == o["label"]
                      else -np.inf for o in certified], dtype=float)
    finite = radii[np.isfinite(radii)]
    grid = np.unique(np.concatenate([[0.0], finite[finite > 0]]))
    if len(grid) > CURVE_POINTS:
        grid = np.linspace(0.0, grid[-1], CURVE_POINTS)
    accuracy = [(radii >= r).sum() / len(certified) for r in grid]
    return {"n": len(certified), "radius": [float(r) for r in grid],
            "accuracy": [float(a) for a in accuracy]}


def audit_entry(store: Store, cell_id: str) -> dict | None:
    """The cell's latest certificate audit (`rbench audit`): checked and falsified certified
    examples, the one-sided 95% upper bound of the violation rate, the rate the certificate allows
    (alpha, or 0 for a deterministic one), `broken`, and the budgets' hash. None if not audited."""
    summary = audit_summary(store, cell_id)
    if summary is None:
        return None
    return {k: summary[k] for k in ("checked", "falsified", "upper", "allowed", "broken", "config_hash")}


def format_audit(audit: dict | None) -> str:
    if audit is None:
        return "not audited"
    if not audit["checked"]:
        return "nothing certified to check"
    bound = "n/a" if audit["upper"] is None else f"<= {100 * audit['upper']:.1f}%"
    verdict = "**BROKEN**, " if audit["broken"] else ""
    return (f"{verdict}{audit['falsified']} of {audit['checked']} falsified ({bound}; "
            f"allowed {100 * audit['allowed']:g}%)")


def flagged(row: dict) -> bool:
    return bool(row.get("sanity_summary", "").startswith("FLAG"))


def rank_key(row: dict, metrics: dict, table_kind: str):
    """Sort key of a row ranked by its table kind's metric: better first, missing values last; on
    an attacked figure, a flagged row after every unflagged one."""
    value = (metrics.get(RANKED_BY[table_kind]) or {}).get("value")
    demoted = table_kind in (ATTACK, MATRIX) and flagged(row)
    better = 0.0 if value is None else -metric(RANKED_BY[table_kind]).direction * value
    return (demoted, value is None, better, row["defense"], row["model"])


def threat_family(attack: str, params: dict) -> str:
    """The threat family a worst case combines attacks over: image attacks with the same norm and
    budget; text attacks making the same kind of substitution (the attack's registered threat:
    word substitutions or character edits) under the same perturbed-word budget."""
    entry = ATTACKS.get(attack)
    if entry.tags["modality"] == "image":
        return f"{params.get('norm', 'linf')} eps={params['eps']:g}"
    fraction = params.get("max_perturbed_fraction")
    return entry.tags["threat"] + (f", at most {100 * fraction:g}% of words" if fraction else "")


def worst_case(attacked: list[list[dict]]) -> dict:
    """example_index -> robust under every one of these attacks (correct before and after each,
    and for a randomized defense judged with several draws, in every draw), on the examples all
    of them evaluated."""
    shared = set.intersection(*({o["example_index"] for o in outcomes} for outcomes in attacked))
    robust = dict.fromkeys(shared, True)
    for outcomes in attacked:
        for o in outcomes:
            if o["example_index"] in robust:
                extra = o.get("extra") or {}
                every_draw = extra.get("correct_draws", 1) == extra.get("judge_draws", 1)
                robust[o["example_index"]] &= (o["clean_prediction"] == o["label"] ==
                                               o["adversarial_prediction"]) and every_draw
    return robust


def assign_tiers(rows: list[dict], per_example: list[dict]) -> None:
    """Significance tiers of rows in rank order: a row shares the tier of the row above unless a
    two-sided exact McNemar test on their shared examples separates it from that tier's first row
    (Holm-adjusted over every pair of rows, level TIER_ALPHA), so a tier never chains rows 4 points
    apart into one that spans a whole table; the first flagged row starts a tier. A row's rank is
    the interval of positions its tier spans."""
    pairs = list(itertools.combinations(range(len(rows)), 2))
    pvalues = [sign_test(*paired_changes(per_example[i], per_example[j])[:2]) for i, j in pairs]
    separated = dict(zip(pairs, multipletests(pvalues, alpha=TIER_ALPHA, method="holm")[0])) \
        if pairs else {}
    tier, leader = 1, 0
    for i, row in enumerate(rows):
        if i and (separated[(leader, i)] or flagged(row) != flagged(rows[i - 1])):
            tier, leader = tier + 1, i
        row["tier"] = tier
    for row in rows:
        positions = [i for i, other in enumerate(rows, 1) if other["tier"] == row["tier"]]
        row["rank"] = [positions[0], positions[-1]]


def build_matrices(tables: list[dict], attacked: dict) -> list[dict]:
    """Per task and threat family, the defense x attack matrix: clean accuracy, accuracy under each
    attack of the family, certified accuracy and the per-example worst case over the attacks run on
    the row, ranked by worst case, with significance tiers. `attacked` maps (task, defense, model,
    threat_id) to the cell's outcomes; submitted rows have none and are left out."""
    families: dict[tuple, list[dict]] = {}
    for table in tables:
        if table.get("kind") == ATTACK and "attack_name" in table:  # measured in this store
            family = threat_family(table["attack_name"], table["attack_params"] or {})
            families.setdefault((table["task"], family), []).append(table)
    for members in families.values():
        members.sort(key=lambda t: (t["attack"], t["threat_id"]))
    matrices = []
    for (task, family), members in families.items():
        clean = next((t for t in tables if t["task"] == task and t["threat_id"] == "clean"), None)
        clean_rows = {(r["defense"], r["model"]): r for r in clean["rows"]} if clean else {}
        keys = list(dict.fromkeys((r["defense"], r["model"]) for t in members for r in t["rows"]
                                  if (task, r["defense"], r["model"], t["threat_id"]) in attacked))
        rows, per_example = [], []
        for defense, model in keys:
            runs = [(t, next(r for r in t["rows"] if (r["defense"], r["model"]) == (defense, model)
                             and not r.get("submission")))
                    for t in members if (task, defense, model, t["threat_id"]) in attacked]
            robust = worst_case([attacked[(task, defense, model, t["threat_id"])] for t, _ in runs])
            source = clean_rows.get((defense, model), {}).get("metrics", {})
            cells = {key: source[key] for key in ("clean_accuracy", "certified_accuracy") if key in source}
            cells.update({t["threat_id"]: r["metrics"]["robust_accuracy"] for t, r in runs})
            cells["worst_case_accuracy"] = rate(sum(robust.values()), len(robust), REPORT_ALPHA).to_dict()
            row = {"defense": defense, "model": model, "cells": cells,
                   "certificate_unit": clean_rows.get((defense, model), {}).get("certificate_unit"),
                   "sanity_summary": runs[0][1].get("sanity_summary", ""), "flags": {}}
            for check in runs[0][1].get("sanity", []):
                if check["status"] != "flag":
                    continue
                named = [t["threat_id"] for t in members if t["attack"] in check.get("attacks", ())]
                for key in named + (["worst_case_accuracy"] if named else []):
                    row["flags"].setdefault(key, []).append(f"{check['name']}: {check['detail']}")
            rows.append(row)
            per_example.append(robust)
        if not rows:
            continue
        order = sorted(range(len(rows)), key=lambda i: rank_key(rows[i], rows[i]["cells"], MATRIX))
        rows, per_example = [rows[i] for i in order], [per_example[i] for i in order]
        assign_tiers(rows, per_example)
        matrices.append({
            "task": task, "family": family, "kind": MATRIX, "ranked_by": RANKED_BY[MATRIX],
            "attacks": [{"threat_id": t["threat_id"], "label": t["attack"],
                         "description": t["description"]} for t in members],
            "certificate_units": clean["certificate_units"] if clean else [],
            "tiers": f"a row joins the tier above unless a two-sided exact McNemar test on their "
                     f"shared examples separates it from that tier's first row, Holm-adjusted over "
                     f"every pair of rows, level {TIER_ALPHA:g}",
            "rows": rows})
    return matrices


def published_data(data: dict) -> dict:
    """The manifest's data sources as a published page shows them: a hub name, "bundled" or
    "generated" as recorded; a folder on the machine that ran the suite as "local copy" (its
    checksums say which copy), never its path."""
    return {task: {**info, "source": "local copy" if str(info.get("source", "")).startswith("/")
                   else info.get("source")} for task, info in data.items()}


def machine(manifest: dict) -> str:
    """The device, CPU model and instruction set (and GPU) a run recorded, for a page header."""
    cpu = manifest.get("cpu") or {}
    parts = [manifest.get("device"), cpu.get("model"), cpu.get("instruction_set"),
             manifest.get("gpu") and f"GPU {manifest['gpu']}"]
    return ", ".join(str(p) for p in parts if p)


def build_leaderboard(store: Store, suite: str, submissions: list[dict] = (),
                      cell_ids: set[str] | None = None) -> dict:
    """Tables from the store's finished cells, with the rows of `submissions` (checked submission
    files, see benchmark/submit.py) merged in and marked with their entry name. With `cell_ids`
    (the suite file's current cells), cells an earlier version of the suite left in the store are
    not shown."""
    tables: dict[tuple, dict] = {}

    def table_for(task, threat_id, attack, description, attack_params) -> dict:
        return tables.setdefault((task, threat_id), {
            "task": task, "threat_id": threat_id, "attack": attack, "description": description,
            "attack_params": attack_params, "certificate_units": [], "rows": []})

    attacked: dict[tuple, list[dict]] = {}
    clean: dict[tuple, tuple] = {}  # (task, defense, model) -> its clean cell's (record, outcomes)

    runs: dict[tuple, list] = {}
    current = [r for r in store.cells(suite) if cell_ids is None or r.cell_id in cell_ids]
    for record in (r for r in current if r.status == "done"):
        attack = record.spec.get("attack")
        backdoor = record.spec.get("poison") is not None
        has_attack = record.attack is not None and not backdoor
        table = table_for(record.task, record.threat_id, record.attack, record.threat_description,
                          attack["params"] if attack else None)
        table["kind"] = BACKDOOR if backdoor else ATTACK if has_attack else CLEAN
        table["ranked_by"] = RANKED_BY[table["kind"]]
        if has_attack:
            table["attack_name"] = attack["name"]
        if record.certificate_unit and not has_attack:
            table["certificate_units"] = sorted(set(table["certificate_units"]) | {record.certificate_unit})
        outcomes = store.outcomes(record.cell_id)
        if has_attack:
            attacked[(record.task, record.defense, record.model, record.threat_id)] = outcomes
        elif not backdoor:
            clean[(record.task, record.defense, record.model)] = (record, outcomes)
        run = sanity.run_from_cell(record.attack or "", record.spec, outcomes)
        if run is not None:
            runs.setdefault((record.task, record.defense, record.model), []).append(run)
        row = {"defense": record.defense, "model": record.model, "cell_id": record.cell_id,
               "certificate_unit": record.certificate_unit if not has_attack else None,
               "metrics": backdoor_metrics(outcomes) if backdoor else
               cell_metrics(outcomes, has_attack, record.certificate_unit)}
        curve = certified_curve(outcomes)
        if curve is not None:
            row["certified_curve"] = curve
        audit = audit_entry(store, record.cell_id) if "certified_accuracy" in row["metrics"] else None
        if audit is not None:
            row["audit"] = audit
        table["rows"].append(row)
    for submission in submissions:
        for submitted in submission["results"]["tables"]:
            table = table_for(submitted["task"], submitted["threat_id"], submitted["attack"],
                              submitted["description"], submitted.get("attack_params"))
            table["certificate_units"] = sorted(set(table["certificate_units"]) |
                                                set(submitted["certificate_units"]))
            # a submission written before tables recorded their kind: clean, or a test-time attack
            table.setdefault("kind", submitted.get("kind") or
                             (CLEAN if submitted["threat_id"] == "clean" else ATTACK))
            table.setdefault("ranked_by", RANKED_BY[table["kind"]])
            table["rows"] += [{**row, "submission": submission["entry"]} for row in submitted["rows"]]
    checks = {key: sanity.run_checks(group) for key, group in runs.items()}
    for key, check in collapse_checks(store, clean).items():
        checks.setdefault(key, []).append(check)
    for table in tables.values():
        for row in table["rows"]:
            found = checks.get((table["task"], row["defense"], row["model"]))
            if found:
                row["sanity"] = [c.to_dict() for c in found]
                row["sanity_summary"] = sanity.summarize(found)
    ordered = []
    for key in sorted(tables, key=lambda k: (k[0], k[1] != "clean", k[1])):
        table = tables[key]
        table["rows"].sort(key=lambda row: rank_key(row, row["metrics"], table["kind"]))
        ordered.append(table)
    matrices = build_matrices(ordered, attacked)
    not_done = [{"task": r.task, "defense": r.defense, "attack": r.attack, "status": r.status,
                 "reason": r.reason} for r in current if r.status in ("failed", "not_run")]
    # A run in progress or cut short: its cells' rows are missing, and the page must say so.
    stored = {r.cell_id for r in current}
    unfinished = sum(r.status == "running" for r in current) + \
        (len(set(cell_ids) - stored) if cell_ids is not None else 0)
    cells_total = len(cell_ids) if cell_ids is not None else len(current)
    runs = store.runs(suite)
    manifest = {k: runs[-1]["manifest"].get(k) for k in MANIFEST_KEYS} if runs else {}
    if manifest.get("data"):
        manifest["data"] = published_data(manifest["data"])
    # no start times: a leaderboard regenerated from the same seeds and code stays byte-identical
    history = [{"git_commit": run["manifest"].get("git_commit"),
                "git_dirty": run["manifest"].get("git_dirty")} for run in runs]
    return {"suite": suite, "interval": "95% Clopper-Pearson", "manifest": manifest,
            "runs": history, "matrices": matrices, "tables": ordered, "not_run": not_done,
            "unfinished": {"cells": unfinished, "of": cells_total}}


def collapse_checks(store: Store, clean: dict) -> dict:
    """The `collapsed` flag (benchmark/sanity.py) of each (task, defense, model) whose clean cell
    shows a collapsed model, against the vanilla row of its task (the same training seed's where
    the suite has one); shown only where it fires."""
    flags = {}
    for (task, defense, model), (record, outcomes) in clean.items():
        if record.spec["defense"]["name"] == "vanilla":
            continue
        seed = record.spec.get("train_seed")
        reference = (clean.get((task, replicate_label("vanilla", seed), model))
                     or clean.get((task, "vanilla", model)))
        check = sanity.check_collapsed(outcomes, reference[1] if reference else None,
                                       store.training_record(record.cell_id))
        if check.status == "flag":
            flags[(task, defense, model)] = check
    return flags


def format_metric(metric: dict) -> str:
    if "successes" in metric:
        if not metric["n"]:
            return "n/a (n=0)"
        return (f"{100 * metric['value']:.1f} [{100 * metric['low']:.1f}, "
                f"{100 * metric['high']:.1f}] (n={metric['n']})")
    if "low" in metric:  # a median with its interval; None is N/A (-infinity)
        low, value, high = ("N/A" if v is None else f"{v:.3g}"
                            for v in (metric["low"], metric["value"], metric["high"]))
        return f"{value} [{low}, {high}] (n={metric['n']})"
    return "n/a" if metric["value"] is None else f"{metric['value']:.3g} (n={metric['n']})"


def table_columns(table: dict) -> list[tuple[str, str]]:
    """(metric, label) of the columns a table has: its kind's metrics (benchmark.metrics) present
    in its rows, then certified accuracy at each reported radius; radii carry their unit."""
    kind = table.get("kind", CLEAN)
    keys = [m.key for m in columns(kind) if any(m.key in r["metrics"] for r in table["rows"])]
    keys += sorted({k for r in table["rows"] for k in r["metrics"] if k.startswith(AT_RADIUS)},
                   key=lambda k: float(k[len(AT_RADIUS):]))
    units = ", ".join(table["certificate_units"])
    return [(k, metric(k).label_in(kind) + (f" ({units})" if units and (
        k == "median_certified_radius" or k.startswith(AT_RADIUS)) else "")) for k in keys]


def ranked_by_text(table: dict) -> str:
    """How a table orders its rows, in words, for the page."""
    declared = metric(table["ranked_by"])
    text = (f"Ranked by {declared.label_in(table.get('kind'))}, "
            f"{'higher' if declared.direction > 0 else 'lower'} first")
    if table.get("kind") in (ATTACK, MATRIX):
        text += "; a row with a sanity flag after every unflagged row"
    return text + "."


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    present = table_columns(table)
    units = any(r["certificate_unit"] for r in table["rows"])
    headers = ["rank", "defense", "model"] + (["certificate unit"] if units else []) + [
        label for _, label in present]
    audited = any("certified_accuracy" in r["metrics"] for r in table["rows"])
    if audited:
        headers.append("certificate audit")
    flags = any(row.get("sanity_summary") for row in table["rows"])
    if flags:
        headers.append("sanity flags")
    rows = []
    for rank, row in enumerate(table["rows"], 1):
        defense = row["defense"] + (" (submission)" if row.get("submission") else "")
        rows.append([str(rank), defense, row["model"]] +
                    ([row["certificate_unit"] or ""] if units else []) +
                    [format_metric(row["metrics"][k]) if k in row["metrics"] else "" for k, _ in present]
                    + ([format_audit(row.get("audit")) if "certified_accuracy" in row["metrics"]
                        else ""] if audited else [])
                    + ([row.get("sanity_summary", "")] if flags else []))
    return headers, rows


def matrix_columns(matrix: dict) -> list[tuple[str, str]]:
    """(cell key, label) of a matrix's columns: the worst case it ranks by (first, so it is seen
    however many attacks follow), clean accuracy, accuracy under each attack, certified accuracy
    with its unit when a row certifies."""
    units = ", ".join(matrix["certificate_units"])
    found = [("worst_case_accuracy", metric("worst_case_accuracy").label),
             ("clean_accuracy", metric("clean_accuracy").label)]
    found += [(a["threat_id"], f"{a['label']} %") for a in matrix["attacks"]]
    if any("certified_accuracy" in r["cells"] for r in matrix["rows"]):
        found.append(("certified_accuracy", metric("certified_accuracy").label +
                      (f" ({units})" if units else "")))
    return found


def rank_interval(row: dict) -> str:
    low, high = row["rank"]
    return str(low) if low == high else f"{low}-{high}"


def matrix_rows(matrix: dict) -> tuple[list[str], list[list[str]]]:
    present = matrix_columns(matrix)
    several_units = len(matrix["certificate_units"]) > 1

    def cell(row, key):
        if key not in row["cells"]:
            return "not run" if key != "certified_accuracy" else ""
        text = format_metric(row["cells"][key])
        if key == "certified_accuracy" and several_units:
            text += f" ({row['certificate_unit']})"
        return text + (" FLAG" if key in row["flags"] else "")

    headers = ["tier", "rank", "defense", "model"] + [label for _, label in present]
    return headers, [[str(row["tier"]), rank_interval(row), row["defense"], row["model"]]
                     + [cell(row, key) for key, _ in present] for row in matrix["rows"]]


def data_text(info: dict) -> str:
    """A task's data as a page names it: its source and checksums."""
    checksums = ", ".join(f"{split} {digest}" for split, digest in sorted(
        (info.get("checksums") or {}).items()))
    return f"{info.get('source')}" + (f" (checksums: {checksums})" if checksums else "")


def sanity_lines(board: dict) -> list[tuple[str, list[dict]]]:
    """Each flagged or checked (task, defense, model)'s heading and checks, once."""
    seen, found = set(), []
    for table in board["tables"]:
        for row in table["rows"]:
            key = (table["task"], row["defense"], row["model"])
            if key in seen or not row.get("sanity_summary"):
                continue
            seen.add(key)
            found.append((f"{key[0]} / {key[1]} ({key[2]}): **{row['sanity_summary']}**", row["sanity"]))
    return found


def run_history(board: dict) -> str | None:
    """A resumed suite is measured over several runs, possibly at several commits: name them all,
    so a page never attributes every cell to the latest run's commit. None for a single run."""
    history = board.get("runs", [])
    if len(history) < 2:
        return None
    # git_commit is None outside a git checkout (an installed package)
    commits = list(dict.fromkeys((run["git_commit"] or "no git")[:7]
                                 + (" (dirty)" if run["git_dirty"] else "") for run in history))
    return (f"Measured over {len(history)} runs sharing this store (resumed or concurrent), at "
            f"commits {', '.join(commits)}; the commit above is the latest run's. A cell's batches "
            "may come from any of them; cells are keyed by their configuration's hash, so each row "
            "has one configuration.")


def unfinished_line(board: dict) -> str | None:
    """None when every cell of the suite has finished (done, not run or failed)."""
    unfinished = board["unfinished"]
    if not unfinished["cells"]:
        return None
    return (f"Unfinished: {unfinished['cells']} of the suite's {unfinished['of']} cells are not "
            f"measured yet (a run in progress or cut short; `rbench run` resumes it). Their rows "
            f"are missing from these tables, and claims on them are not testable here.")


def table_title(table: dict) -> str:
    return "clean inputs" if table["threat_id"] == "clean" else f"{table['attack']} ({table['threat_id']})"


def render_markdown(board: dict) -> str:
    manifest = board["manifest"]
    tasks: dict[str, list[dict]] = {}
    for table in board["tables"]:
        tasks.setdefault(table["task"], []).append(table)
    return TEMPLATES.get_template("leaderboard.md").render(
        board=board, manifest=manifest, machine=machine(manifest), history=run_history(board),
        unfinished=unfinished_line(board),
        tasks=tasks, data=manifest.get("data") or {}, sanity=sanity_lines(board),
        tabulate=lambda found: tabulate(found[1], found[0], tablefmt="github"),
        table_rows=table_rows, matrix_rows=matrix_rows, ranked_by_text=ranked_by_text,
        data_text=data_text, table_title=table_title, metric=metric)


def write_csv(board: dict, path: Path) -> None:
    with io.StringIO() as handle:
        writer = csv.writer(handle)
        writer.writerow(["suite", "task", "threat_id", "attack", "defense", "model", "metric",
                         "value", "n", "ci_low", "ci_high"])
        for table in board["tables"]:
            for row in table["rows"]:
                for name, value in row["metrics"].items():
                    writer.writerow([board["suite"], table["task"], table["threat_id"],
                                     table["attack"] or "", row["defense"], row["model"], name,
                                     value["value"], value["n"], value.get("low", ""),
                                     value.get("high", "")])
                if row.get("sanity_summary"):
                    writer.writerow([board["suite"], table["task"], table["threat_id"],
                                     table["attack"] or "", row["defense"], row["model"],
                                     "sanity_flags", row["sanity_summary"], "", "", ""])
        for matrix in board["matrices"]:
            for row in matrix["rows"]:
                worst = row["cells"]["worst_case_accuracy"]
                writer.writerow([board["suite"], matrix["task"], f"worst case: {matrix['family']}",
                                 "", row["defense"], row["model"], "worst_case_accuracy",
                                 worst["value"], worst["n"], worst["low"], worst["high"]])
        write_text(path, handle.getvalue())


def write_leaderboard(store: Store, suite: str, out_dir: Path, submissions: list[dict] = (),
                      cell_ids: set[str] | None = None) -> dict:
    board = build_leaderboard(store, suite, submissions, cell_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "leaderboard.json", board)
    write_text(out_dir / "leaderboard.md", render_markdown(board))
    write_csv(board, out_dir / "leaderboard.csv")
    return board
