"""Leaderboards from the results store: one table per task and threat model, as md, csv and json.

A table's key is the attack's threat-model id (the attack and every constraint of its config), so
rows measured under different budgets or constraints never share a column. Every rate carries its
sample count and a 95% Clopper-Pearson interval.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmark import sanity
from benchmark.certify import median_certified
from benchmark.stats import median_interval, rate
from benchmark.store import Store

REPORT_ALPHA = 0.05  # every reported interval is a 95% interval
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
        metrics["attack_success_rate"] = rate(success.sum(), correct.sum(), REPORT_ALPHA).to_dict()
        metrics["mean_queries"] = _mean(queries[correct])
        metrics["mean_perturbation"] = _mean(perturbation[success])
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
        if unit == "words":  # RanMASK's l0 certificate: MCB and MCR, wrong or abstained = -infinity
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
    # The sample standard deviation lets `rbench regress` test a change of the mean (Welch's t).
    return {"value": float(values.mean()) if len(values) else None, "n": int(len(values)),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None}


CURVE_POINTS = 200  # at most this many radii per certified-accuracy curve


def certified_curve(outcomes: list[dict]) -> dict | None:
    """Certified accuracy against radius (Cohen et al. 2019, Fig. 1): at radius r, the fraction of
    the n evaluated examples that are certified correct with a radius of at least r. The points are
    (0 and) every distinct certified radius, or a regular grid when there are too many of them."""
    certified = [o for o in outcomes if o["certified"] is not None]
    if not certified:
        return None
    radii = np.array([o["radius"] if o["certified"] else -np.inf for o in certified], dtype=float)
    finite = radii[np.isfinite(radii)]
    grid = np.unique(np.concatenate([[0.0], finite[finite > 0]]))
    if len(grid) > CURVE_POINTS:
        grid = np.linspace(0.0, grid[-1], CURVE_POINTS)
    accuracy = [(radii >= r).sum() / len(certified) for r in grid]
    return {"n": len(certified), "radius": [float(r) for r in grid],
            "accuracy": [float(a) for a in accuracy]}


HEADLINE = ("certified_accuracy", "robust_accuracy", "clean_accuracy")


def _rank_key(row: dict):
    if "attack_success_rate" in row["metrics"] and "benign_accuracy" in row["metrics"]:
        # backdoor tables: the lowest attack success first, then the highest benign accuracy
        asr = row["metrics"]["attack_success_rate"]["value"]
        return (1.0 if asr is None else asr, -row["metrics"]["benign_accuracy"]["value"])
    for name in HEADLINE:
        if name in row["metrics"] and row["metrics"][name]["value"] is not None:
            return -row["metrics"][name]["value"]
    return 0.0


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

    runs: dict[tuple, list] = {}
    current = [r for r in store.cells(suite) if cell_ids is None or r.cell_id in cell_ids]
    for record in (r for r in current if r.status == "done"):
        attack = record.spec.get("attack")
        backdoor = record.spec.get("poison") is not None
        has_attack = record.attack is not None and not backdoor
        table = table_for(record.task, record.threat_id, record.attack, record.threat_description,
                          attack["params"] if attack else None)
        table["kind"] = "backdoor" if backdoor else "attack" if has_attack else "clean"
        if record.certificate_unit and not has_attack:
            table["certificate_units"] = sorted(set(table["certificate_units"]) | {record.certificate_unit})
        outcomes = store.outcomes(record.cell_id)
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
        table["rows"].append(row)
    for submission in submissions:
        for submitted in submission["results"]["tables"]:
            table = table_for(submitted["task"], submitted["threat_id"], submitted["attack"],
                              submitted["description"], submitted.get("attack_params"))
            table["certificate_units"] = sorted(set(table["certificate_units"]) |
                                                set(submitted["certificate_units"]))
            table["rows"] += [{**row, "submission": submission["entry"]} for row in submitted["rows"]]
    checks = {key: sanity.run_checks(group) for key, group in runs.items()}
    for table in tables.values():
        for row in table["rows"]:
            found = checks.get((table["task"], row["defense"], row["model"]))
            if found:
                row["sanity"] = [c.to_dict() for c in found]
                row["sanity_summary"] = sanity.summarize(found)
    ordered = []
    for key in sorted(tables, key=lambda k: (k[0], k[1] != "clean", k[1])):
        table = tables[key]
        table["rows"].sort(key=lambda row: (_rank_key(row), row["defense"], row["model"]))
        ordered.append(table)
    not_done = [{"task": r.task, "defense": r.defense, "attack": r.attack, "status": r.status,
                 "reason": r.reason} for r in current if r.status in ("failed", "not_run")]
    runs = store.runs(suite)
    manifest = {k: runs[-1]["manifest"].get(k) for k in MANIFEST_KEYS} if runs else {}
    # no start times: a leaderboard regenerated from the same seeds and code stays byte-identical
    history = [{"git_commit": run["manifest"].get("git_commit"),
                "git_dirty": run["manifest"].get("git_dirty")} for run in runs]
    return {"suite": suite, "interval": "95% Clopper-Pearson", "manifest": manifest,
            "runs": history, "tables": ordered, "not_run": not_done}


COLUMNS = [("clean_accuracy", "clean acc %"), ("robust_accuracy", "acc under attack %"),
           ("attack_success_rate", "attack success %"), ("mean_queries", "avg queries"),
           ("mean_perturbation", "avg perturbation"), ("certified_accuracy", "certified acc %"),
           ("abstain_rate", "abstain %"), ("median_certified_radius", "median radius"),
           ("mcb", "MCB (words)"), ("mcr", "MCR (d/h)")]


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


BACKDOOR_COLUMNS = [("benign_accuracy", "benign acc %"), ("attack_success_rate", "ASR %"),
                    ("certified_accuracy", "certified acc on triggered %"),
                    ("median_certified_radius", "median radius")]


def _radius_columns(table: dict) -> list[tuple[str, str]]:
    keys = sorted({k for r in table["rows"] for k in r["metrics"] if k.startswith("certified_accuracy@")},
                  key=lambda k: float(k.split("@")[1]))
    units = ", ".join(table["certificate_units"])
    return [(k, f"certified acc % at r={k.split('@')[1]}" + (f" ({units})" if units else ""))
            for k in keys]


def table_columns(table: dict) -> list[tuple[str, str]]:
    """(metric, label) of the columns a table has: the backdoor set or the test-time set."""
    columns = BACKDOOR_COLUMNS if table.get("kind") == "backdoor" else COLUMNS
    return [(k, label) for k, label in columns if any(k in r["metrics"] for r in table["rows"])]


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    present = table_columns(table)
    present += _radius_columns(table)
    units = any(r["certificate_unit"] for r in table["rows"])
    headers = ["rank", "defense", "model"] + (["certificate unit"] if units else []) + [
        f"{label} ({', '.join(table['certificate_units'])})" if k == "median_certified_radius" and
        table["certificate_units"] else label for k, label in present]
    flags = any(row.get("sanity_summary") for row in table["rows"])
    if flags:
        headers.append("sanity flags")
    rows = []
    for rank, row in enumerate(table["rows"], 1):
        defense = row["defense"] + (" (submission)" if row.get("submission") else "")
        rows.append([str(rank), defense, row["model"]] +
                    ([row["certificate_unit"] or ""] if units else []) +
                    [format_metric(row["metrics"][k]) if k in row["metrics"] else "" for k, _ in present]
                    + ([row.get("sanity_summary", "")] if flags else []))
    return headers, rows


def sanity_section(board: dict) -> list[str]:
    """Each (task, defense, model)'s checks in full, once, after the tables."""
    seen, lines = set(), []
    for table in board["tables"]:
        for row in table["rows"]:
            key = (table["task"], row["defense"], row["model"])
            if key in seen or not row.get("sanity_summary"):
                continue
            seen.add(key)
            lines.append(f"- {key[0]} / {key[1]} ({key[2]}): **{row['sanity_summary']}**")
            lines += [f"  - {c['name']}: {c['status']}: {c['detail']}" for c in row["sanity"]]
    if not lines:
        return []
    return ["## Sanity checks", "",
            "In the spirit of Carlini et al. (2019), from the cells this suite ran; a flag means "
            "a one-sided exact test at level 0.01 found the violation (benchmark/sanity.py).", ""] \
        + lines + [""]


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


def render_markdown(board: dict) -> str:
    lines = [f"# Leaderboard: suite `{board['suite']}`", "",
             f"Every rate is a percentage with its {board['interval']} interval and sample count n. "
             "Tables are keyed by threat model: rows in one table share the attack and all its "
             "constraints.", ""]
    manifest = board["manifest"]
    if manifest:
        lines += [f"Measured at commit `{manifest.get('git_commit')}` on {manifest.get('device')}, "
                  f"torch {(manifest.get('packages') or {}).get('torch')}, suite sha256 "
                  f"`{(manifest.get('suite_sha256') or '')[:12]}`.", ""]
    history = run_history(board)
    if history:
        lines += [history, ""]
    task = None
    for table in board["tables"]:
        if table["task"] != task:
            task = table["task"]
            source = ((manifest.get("data") or {}).get(task) or {}).get("source", "")
            lines += [f"## {task}", "", f"Data: {source}.", ""] if source else [f"## {task}", ""]
        title = "clean inputs" if table["threat_id"] == "clean" else f"{table['attack']} (`{table['threat_id']}`)"
        if table.get("kind") == "backdoor":
            title = f"backdoor: {title}"
        lines += [f"### {title}", "", f"Threat model: {table['description']}.", ""]
        if table.get("kind") == "backdoor":
            lines += ["Each defense is trained on the poisoned training split. Benign accuracy: clean "
                      "test inputs; ASR: triggered test inputs whose true label is not the target, "
                      "classified as the target; certified accuracy: those triggered inputs "
                      "certified with their true label.", ""]
        headers, rows = table_rows(table)
        lines += [tabulate(rows, headers, tablefmt="github"), ""]
    lines += sanity_section(board)
    if board["not_run"]:
        lines += ["## Cells not run", ""]
        lines += [f"- {c['task']} / {c['defense']} / {c['attack'] or 'clean'}: {c['status']}: "
                  f"{c['reason']}" for c in board["not_run"]] + [""]
    return "\n".join(lines)


def write_csv(board: dict, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["suite", "task", "threat_id", "attack", "defense", "model", "metric",
                         "value", "n", "ci_low", "ci_high"])
        for table in board["tables"]:
            for row in table["rows"]:
                for name, metric in row["metrics"].items():
                    writer.writerow([board["suite"], table["task"], table["threat_id"],
                                     table["attack"] or "", row["defense"], row["model"], name,
                                     metric["value"], metric["n"], metric.get("low", ""),
                                     metric.get("high", "")])
                if row.get("sanity_summary"):
                    writer.writerow([board["suite"], table["task"], table["threat_id"],
                                     table["attack"] or "", row["defense"], row["model"],
                                     "sanity_flags", row["sanity_summary"], "", "", ""])


def write_leaderboard(store: Store, suite: str, out_dir: Path, submissions: list[dict] = (),
                      cell_ids: set[str] | None = None) -> dict:
    board = build_leaderboard(store, suite, submissions, cell_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "leaderboard.json").write_text(json.dumps(board, indent=1, sort_keys=True) + "\n")
    (out_dir / "leaderboard.md").write_text(render_markdown(board))
    write_csv(board, out_dir / "leaderboard.csv")
    return board
