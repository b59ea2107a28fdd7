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
from benchmark.stats import rate
from benchmark.store import Store

REPORT_ALPHA = 0.05  # every reported interval is a 95% interval
# Radii at which certified accuracy is reported, per certificate unit (certified and correct with a
# radius of at least r); units not listed get only the overall certified accuracy.
CERTIFIED_RADII = {"l2": (0.0, 0.25, 0.5, 0.75, 1.0)}
MANIFEST_KEYS = ("suite", "suite_sha256", "seed", "git_commit", "git_dirty", "packages", "python",
                 "device", "torch_threads", "data", "protocols")


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
        metrics["robust_accuracy"] = rate((attacked == labels).sum(), len(labels), REPORT_ALPHA).to_dict()
        # Attack success is counted over the examples the defense got right (TextAttack's convention).
        metrics["attack_success_rate"] = rate(success.sum(), correct.sum(), REPORT_ALPHA).to_dict()
        metrics["mean_queries"] = _mean(queries[correct])
        metrics["mean_perturbation"] = _mean(perturbation[success])
    certified = [o for o in outcomes if o["certified"] is not None]
    if certified:
        flags = np.array([o["certified"] for o in certified], dtype=bool)
        abstained = np.array([o["abstained"] for o in certified], dtype=bool)
        metrics["certified_accuracy"] = rate(flags.sum(), len(certified), REPORT_ALPHA).to_dict()
        metrics["abstain_rate"] = rate(abstained.sum(), len(certified), REPORT_ALPHA).to_dict()
        radii = np.array([o["radius"] for o in certified], dtype=float)
        metrics["median_certified_radius"] = {"value": float(np.median(np.where(flags, radii, 0.0))),
                                              "n": len(certified)}
        for radius in CERTIFIED_RADII.get(unit, ()):
            metrics[f"certified_accuracy@{radius:g}"] = rate(
                (flags & (radii >= radius)).sum(), len(certified), REPORT_ALPHA).to_dict()
    return metrics


def _mean(values: np.ndarray) -> dict:
    return {"value": float(values.mean()) if len(values) else None, "n": int(len(values))}


HEADLINE = ("certified_accuracy", "robust_accuracy", "clean_accuracy")


def _rank_key(row: dict):
    for name in HEADLINE:
        if name in row["metrics"] and row["metrics"][name]["value"] is not None:
            return -row["metrics"][name]["value"]
    return 0.0


def build_leaderboard(store: Store, suite: str) -> dict:
    tables: dict[tuple, dict] = {}
    runs: dict[tuple, list] = {}
    for record in store.cells(suite, status="done"):
        outcomes = store.outcomes(record.cell_id)
        run = sanity.run_from_cell(record.attack or "", record.spec, outcomes)
        if run is not None:
            runs.setdefault((record.task, record.defense, record.model), []).append(run)
        key = (record.task, record.threat_id)
        table = tables.setdefault(key, {
            "task": record.task, "threat_id": record.threat_id, "attack": record.attack,
            "description": record.threat_description, "certificate_units": [], "rows": []})
        if record.certificate_unit and record.attack is None:
            table["certificate_units"] = sorted(set(table["certificate_units"]) | {record.certificate_unit})
        table["rows"].append({
            "defense": record.defense, "model": record.model, "cell_id": record.cell_id,
            "certificate_unit": record.certificate_unit if record.attack is None else None,
            "metrics": cell_metrics(outcomes, record.attack is not None,
                                    record.certificate_unit)})
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
                 "reason": r.reason} for r in store.cells(suite) if r.status in ("failed", "not_run")]
    runs = store.runs(suite)
    manifest = {k: runs[-1]["manifest"].get(k) for k in MANIFEST_KEYS} if runs else {}
    return {"suite": suite, "interval": "95% Clopper-Pearson", "manifest": manifest,
            "tables": ordered, "not_run": not_done}


COLUMNS = [("clean_accuracy", "clean acc %"), ("robust_accuracy", "acc under attack %"),
           ("attack_success_rate", "attack success %"), ("mean_queries", "avg queries"),
           ("mean_perturbation", "avg perturbation"), ("certified_accuracy", "certified acc %"),
           ("abstain_rate", "abstain %"), ("median_certified_radius", "median radius")]


def format_metric(metric: dict) -> str:
    if "successes" in metric:
        if not metric["n"]:
            return "n/a (n=0)"
        return (f"{100 * metric['value']:.1f} [{100 * metric['low']:.1f}, "
                f"{100 * metric['high']:.1f}] (n={metric['n']})")
    return "n/a" if metric["value"] is None else f"{metric['value']:.3g} (n={metric['n']})"


def _radius_columns(table: dict) -> list[tuple[str, str]]:
    keys = sorted({k for r in table["rows"] for k in r["metrics"] if k.startswith("certified_accuracy@")},
                  key=lambda k: float(k.split("@")[1]))
    units = ", ".join(table["certificate_units"])
    return [(k, f"certified acc % at r={k.split('@')[1]}" + (f" ({units})" if units else ""))
            for k in keys]


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    present = [(k, label) for k, label in COLUMNS if any(k in r["metrics"] for r in table["rows"])]
    present += _radius_columns(table)
    headers = ["rank", "defense", "model"] + [
        f"{label} ({', '.join(table['certificate_units'])})" if k == "median_certified_radius" and
        table["certificate_units"] else label for k, label in present]
    flags = any(row.get("sanity_summary") for row in table["rows"])
    if flags:
        headers.append("sanity flags")
    rows = []
    for rank, row in enumerate(table["rows"], 1):
        rows.append([str(rank), row["defense"], row["model"]] +
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


def render_markdown(board: dict) -> str:
    lines = [f"# Leaderboard: suite `{board['suite']}`", "",
             f"Every rate is a percentage with its {board['interval']} interval and sample count n. "
             "Tables are keyed by threat model: rows in one table share the attack and all its "
             "constraints.", ""]
    manifest = board["manifest"]
    if manifest:
        lines += [f"Measured at commit `{manifest.get('git_commit')}` on {manifest.get('device')}, "
                  f"torch {manifest.get('packages', {}).get('torch')}, suite sha256 "
                  f"`{(manifest.get('suite_sha256') or '')[:12]}`.", ""]
    task = None
    for table in board["tables"]:
        if table["task"] != task:
            task = table["task"]
            source = manifest.get("data", {}).get(task, {}).get("source", "")
            lines += [f"## {task}", "", f"Data: {source}.", ""] if source else [f"## {task}", ""]
        title = "clean inputs" if table["threat_id"] == "clean" else f"{table['attack']} (`{table['threat_id']}`)"
        lines += [f"### {title}", "", f"Threat model: {table['description']}.", ""]
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


def write_leaderboard(store: Store, suite: str, out_dir: Path) -> dict:
    board = build_leaderboard(store, suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "leaderboard.json").write_text(json.dumps(board, indent=1, sort_keys=True) + "\n")
    (out_dir / "leaderboard.md").write_text(render_markdown(board))
    write_csv(board, out_dir / "leaderboard.csv")
    return board
