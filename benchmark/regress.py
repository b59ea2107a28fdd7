"""`rbench regress`: did any robustness number of a suite move by more than sampling noise since a
baseline?

`rbench regress --suite S --write-baseline B.json` runs the suite and writes its baseline: the
leaderboard of the run (benchmark/leaderboard.py) with, on every row, each example's own value of
every gated metric keyed by example index (`examples`), and the hash of each defense's code
(`defenses`). `rbench regress --suite S --baseline B.json` runs the suite again and compares every
metric of every (task, threat model, defense, model) row with the baseline:

- Both runs evaluate the same seeded examples, so the test is paired: an exact two-sided sign test
  on the examples both runs counted (the ones that moved down against the ones that moved up). On
  a rate (each example 1 or 0) this is the exact McNemar test; on a median (certified radius, MCB,
  MCR) it asks whether the examples' radii fell more often than they rose. It is exact at any n
  and much more powerful than comparing the two rates as independent samples: the examples that
  stayed the same carry no noise.
- Every metric's better direction comes from benchmark/metrics.py; a metric declared there with no
  better direction (query count, perturbation size) is shown but never tested, since it can never
  fail the gate, and an undeclared metric is an error (exit 2). Clean accuracy, measured again in
  every attack cell, is tested once per (task, defense, model): in its clean-inputs row (else its
  first row).
- The tested p-values are Holm-adjusted together, so an unchanged suite fails with probability at
  most alpha however many metrics it has.

Exit 1 on a regression: a significant change in the bad direction, a row or metric of the baseline
missing now (a crashed cell), or a metric the two runs measured on no shared example (it cannot be
tested). Exit 2 when the baseline cannot decide anything: not a baseline file, another suite, no
rows, or no row of this run.
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from statsmodels.stats.multitest import multipletests
from tabulate import tabulate

from benchmark.errors import UsageError
from benchmark.metrics import metric
from benchmark.paths import REPO_ROOT
from benchmark.stats import paired_changes, sign_test

FORMAT = "rbench-regress-baseline/1"
DEFAULT_ALPHA = 0.05
FAILING = ("regressed", "missing", "untested")
NOT_COUNTED = "-"  # an example outside a rate's denominator (attack success: the clean-wrong ones)


# Each example's own values -----------------------------------------------------------------------
def example_values(record, outcomes: list[dict]) -> dict[str, str]:
    """A row's per-example values of every metric with a better direction, computed by the
    leaderboard's own metric functions on each example alone: a rate's value is 1 or 0 (not
    counted where that example is outside its denominator), a median's is the example's radius
    (-inf for RanMASK's N/A). Encoded one string per metric, aligned with `index`."""
    from benchmark.leaderboard import backdoor_metrics, cell_metrics

    if record.spec.get("poison") is not None:  # the same dispatch as build_leaderboard's rows
        singles = [backdoor_metrics([outcome]) for outcome in outcomes]
    else:
        singles = [cell_metrics([outcome], record.attack is not None, record.certificate_unit)
                   for outcome in outcomes]
    names = {name for single in singles for name in single if metric(name).direction}
    values = {name: [] for name in sorted(names)}
    for single in singles:
        for name, column in values.items():
            one = single.get(name)
            if one is None or one["n"] == 0:
                column.append(NOT_COUNTED)
            elif "successes" in one:
                column.append(str(one["successes"]))
            else:
                column.append("-inf" if one["value"] is None else repr(float(one["value"])))
    return {"index": " ".join(str(o["example_index"]) for o in outcomes),
            **{name: " ".join(column) for name, column in values.items()}}


def check_examples(table: dict, row: dict) -> None:
    """Every gated metric of the row must have per-example values that add up to it, or the gate
    could not pair the runs on it (a metric computed across cells, say)."""
    for name, value in row["metrics"].items():
        if not metric(name).direction:
            continue
        counted = decode(row["examples"], name) if name in row["examples"] else None
        if counted is None or ("successes" in value and (
                len(counted) != value["n"] or sum(counted.values()) != value["successes"])):
            raise UsageError(f"metric '{name}' of row {table['task']} / {table['threat_id']} / "
                             f"{row['defense']} has no per-example form the gate can pair: add it "
                             f"to benchmark/regress.py's example_values")


def decode(examples: dict, name: str) -> dict[int, float]:
    """example index -> value of metric `name`, for the examples it counts."""
    index = [int(i) for i in examples["index"].split()]
    return {i: float(v) for i, v in zip(index, examples[name].split()) if v != NOT_COUNTED}


# Measuring ---------------------------------------------------------------------------------------
def measure(suite, store_path: Path | None, cache_dir: Path | None) -> dict:
    """Run (or read and complete) the suite; its leaderboard in baseline form: every row with its
    `examples`, and `defenses` with each defense's code hash."""
    from benchmark.evaluate import run_suite
    from benchmark.leaderboard import build_leaderboard
    from benchmark.store import Store

    cell_ids = {cell.id for cell in suite.cells}
    with tempfile.TemporaryDirectory(prefix="rbench-regress-") as scratch:
        # Without --store every cell is re-run in a scratch store; trained models still come from
        # the cache, whose keys cover the code and every setting that shaped them.
        store = Store(store_path or Path(scratch) / "regress.sqlite")
        try:
            run_suite(suite, store, cache_dir)
            board = build_leaderboard(store, suite.name, cell_ids=cell_ids)
            records = {record.cell_id: record for record in store.cells(suite.name)}
            for table in board["tables"]:
                for row in table["rows"]:
                    row["examples"] = example_values(records[row["cell_id"]],
                                                     store.outcomes(row["cell_id"]))
                    check_examples(table, row)
        finally:
            store.close()
    return {"format": FORMAT, **board, "defenses": defense_code(suite)}


def defense_code(suite) -> dict:
    """Per defense of the suite: its registered name, file and the SHA-256 of its code with every
    local module it imports (for a plugin, its plugin hash), so a comparison can say when the gated
    defense changed."""
    from benchmark.evaluate import source_hash
    from benchmark.registry import DEFENSES

    code = {}
    for cell in suite.cells:
        defense = DEFENSES.get(cell.defense.name).obj
        path = Path(inspect.getsourcefile(defense)).resolve()
        shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else Path(path.name)
        code[cell.defense_label] = {"defense": cell.defense.name, "file": shown.as_posix(),
                                    "sha256": source_hash(defense)}
    return code


def harness_rows(board: dict) -> dict[tuple, dict]:
    """(task, threat id, defense, model) -> row, for the harness's own rows (submitted entries are
    not re-run)."""
    return {(table["task"], table["threat_id"], row["defense"], row["model"]): row
            for table in board["tables"] for row in table["rows"] if not row.get("submission")}


def write_baseline(suite_ref: str, path: Path, store_path: Path | None = None, data_root=None,
                   cache_dir: Path | None = None) -> str:
    """Run the suite and write its baseline to `path`. Refuses to write one that could not gate
    anything: a suite with a failed cell, or no finished cell at all."""
    from benchmark.suite import load_suite

    suite = load_suite(suite_ref, data_root)
    board = measure(suite, store_path, cache_dir)
    failed = [c for c in board["not_run"] if c["status"] == "failed"]
    if failed:
        raise UsageError(f"{len(failed)} cell(s) of suite '{suite.name}' failed, so no baseline was "
                         f"written:\n" + "\n".join(f"  - {c['task']} / {c['defense']} / "
                                                   f"{c['attack'] or 'clean'}: {c['reason']}"
                                                   for c in failed))
    rows = harness_rows(board)
    if not rows:
        raise UsageError(f"suite '{suite.name}' finished no cell, so no baseline was written "
                         f"(a baseline with no rows would pass any run)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{os.getpid()}")
    partial.write_text(json.dumps(board, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(partial, path)  # a killed run never leaves a truncated baseline behind
    return (f"wrote the baseline of suite '{suite.name}' ({len(rows)} rows, "
            f"{sum(len(r['metrics']) for r in rows.values())} metrics) to {path}")


# Comparing ---------------------------------------------------------------------------------------
def read_baseline(path: Path, suite) -> dict:
    """The baseline at `path`, checked to be one this run can be compared with."""
    rewrite = f"write one with `rbench regress --suite {suite.name} --write-baseline {path}`"
    try:
        baseline = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"baseline not found: {path}; {rewrite}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"baseline {path} is not JSON ({error}); {rewrite}") from None
    if not isinstance(baseline, dict) or baseline.get("format") != FORMAT:
        raise UsageError(f"{path} is not an rbench regress baseline (expected \"format\": "
                         f"\"{FORMAT}\": a leaderboard.json has no per-example outcomes to pair "
                         f"the runs on); write one with `rbench regress --suite {suite.name} "
                         f"--write-baseline <baseline.json>`")
    if baseline.get("suite") != suite.name:
        raise UsageError(f"baseline {path} is for suite '{baseline.get('suite')}', not "
                         f"'{suite.name}'; {rewrite}")
    rows = harness_rows(baseline)
    if not rows:
        raise UsageError(f"baseline {path} has no rows: it would pass any run; {rewrite}")
    for key, row in rows.items():
        missing = [name for name in row["metrics"] if metric(name).direction
                   and name not in row.get("examples", {})]
        if missing:
            raise UsageError(f"baseline {path}, row {' / '.join(key)}: no per-example values for "
                             f"{', '.join(missing)}; {rewrite}")
    return baseline


def compare(baseline: dict, current: dict, alpha: float = DEFAULT_ALPHA) -> list[dict]:
    """One record per metric of either board: its paired changes (examples down, up, shared),
    p-value, Holm-adjusted p-value and verdict: same, regressed, improved, missing (in the baseline,
    not measured now), new, untested (no shared example) or not gated (never tested: no better
    direction, or clean accuracy already tested in another row)."""
    before, after = harness_rows(baseline), harness_rows(current)
    if before and not before.keys() & after.keys():
        raise UsageError("no row of the baseline is a row of this run (another suite's baseline "
                         "under this name?): nothing to compare; rewrite the baseline with "
                         "--write-baseline")
    gated_clean = {}  # (task, defense, model) -> the one row whose clean accuracy is tested
    for key in sorted(before.keys() & after.keys(), key=lambda k: (k[1] != "clean", k)):
        gated_clean.setdefault((key[0], key[2], key[3]), key)
    records = []
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key), after.get(key)
        names = list((old or new)["metrics"]) + [n for n in (new or {}).get("metrics", {})
                                                 if old and n not in old["metrics"]]
        for name in names:
            declared = metric(name)  # an undeclared metric is an error, never a silent pass
            record = {"task": key[0], "threat_id": key[1], "defense": key[2], "model": key[3],
                      "metric": name, "baseline": old and old["metrics"].get(name),
                      "current": new and new["metrics"].get(name), "changes": None, "p": None,
                      "p_holm": None, "direction": declared.direction}
            if record["current"] is None:
                record["verdict"] = "missing"
            elif record["baseline"] is None:
                record["verdict"] = "new"
            elif not declared.direction:
                record["verdict"], record["why"] = "not gated", "no better direction"
            elif name == "clean_accuracy" and gated_clean[(key[0], key[2], key[3])] != key:
                tested_in = gated_clean[(key[0], key[2], key[3])][1]
                record["verdict"], record["why"] = "not gated", f"tested once, in the {tested_in} row"
            else:
                then, now = decode(old["examples"], name), decode(new["examples"], name)
                down, up, shared = paired_changes(then, now)
                record["changes"] = (down, up, shared)
                if shared:
                    record["p"], record["verdict"] = sign_test(down, up), "same"
                else:  # nothing both runs counted: same only if neither counted anything
                    record["verdict"] = "untested" if then or now else "same"
            records.append(record)
    tested = [r for r in records if r["p"] is not None]
    if tested:
        reject, adjusted, _, _ = multipletests([r["p"] for r in tested], alpha=alpha, method="holm")
        for record, significant, p_holm in zip(tested, reject, adjusted):
            record["p_holm"] = float(p_holm)
            if significant:
                down, up, _ = record["changes"]
                worse = down > up if record["direction"] > 0 else up > down
                record["verdict"] = "regressed" if worse else "improved"
    return records


def failures(records: list[dict]) -> list[dict]:
    return [r for r in records if r["verdict"] in FAILING]


def code_notes(baseline: dict, current: dict, suite) -> list[str]:
    """What changed besides the numbers: the suite file and each defense's code."""
    notes = []
    then_sha = (baseline.get("manifest") or {}).get("suite_sha256")
    if then_sha and then_sha != suite.sha256:
        notes.append(f"The suite file changed since the baseline (sha256 `{then_sha[:12]}` then, "
                     f"`{suite.sha256[:12]}` now).")
    for label, now in current["defenses"].items():
        then = baseline.get("defenses", {}).get(label)
        if then is None:
            notes.append(f"Defense `{label}` has no code hash in the baseline.")
        elif then["sha256"] != now["sha256"]:
            notes.append(f"Defense `{label}` (`{now['file']}`): its code or a local module it "
                         f"imports changed since the baseline (sha256 `{then['sha256'][:12]}` then, "
                         f"`{now['sha256'][:12]}` now).")
    return notes


def _show(value: dict | None) -> str:
    if value is None:
        return "-"
    if value.get("value") is None:
        return f"n/a (n={value['n']})"
    if "successes" in value:
        return (f"{100 * value['value']:.1f}% [{100 * value['low']:.1f}, {100 * value['high']:.1f}] "
                f"({value['successes']}/{value['n']})")
    return f"{value['value']:.4g} (n={value['n']})"


def _change(record: dict) -> str:
    old, new = record["baseline"], record["current"]
    if not old or not new or old.get("value") is None or new.get("value") is None:
        return ""
    delta = new["value"] - old["value"]
    return f"{100 * delta:+.1f} pt" if "successes" in old else f"{delta:+.4g}"


ORDER = ("regressed", "missing", "untested", "improved", "new", "same", "not gated")


def render(records: list[dict], alpha: float, suite_name: str, baseline_path,
           notes: list[str]) -> str:
    """The report, in Markdown: the verdict, what changed in the code, and every metric."""
    rows = [[r["task"], r["threat_id"], r["defense"], r["metric"], _show(r["baseline"]),
             _show(r["current"]), _change(r),
             "" if r["changes"] is None else "{} / {} of {}".format(*r["changes"]),
             "" if r["p"] is None else f"{r['p']:.3g}",
             "" if r["p_holm"] is None else f"{r['p_holm']:.3g}",
             (r["verdict"].upper() if r["verdict"] in FAILING else r["verdict"])
             + (f" ({r['why']})" if r.get("why") else "")]
            for r in sorted(records, key=lambda r: ORDER.index(r["verdict"]))]
    counts = {}
    for record in records:
        counts[record["verdict"]] = counts.get(record["verdict"], 0) + 1
    summary = ", ".join(f"{counts[v]} {v}" for v in ORDER if v in counts)
    bad = failures(records)
    status = (f"**FAILED**: {len(bad)} significant regression(s), missing or untestable result(s)"
              if bad else "**passed**: no significant regression")
    lines = [f"# rbench regress: suite `{suite_name}`", "",
             f"{status} against `{baseline_path}` ({len(records)} metrics: {summary}).", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += [tabulate(rows, ["task", "threat model", "defense", "metric", "baseline", "now",
                              "change", "examples down / up of shared", "p", "p (Holm)", "verdict"],
                       tablefmt="github"), "",
              f"Paired on the shared examples: exact two-sided sign test (exact McNemar on rates); "
              f"Holm-adjusted at family-wise alpha = {alpha:g} over the "
              f"{sum(r['p'] is not None for r in records)} tested metrics.", ""]
    return "\n".join(lines)


def junit(records: list[dict], suite_name: str) -> str:
    """A JUnit XML report, one test case per metric of a row, which CI systems show."""
    bad = failures(records)
    skipped = [r for r in records if r["verdict"] == "not gated"]
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name=f"rbench regress {suite_name}",
                          tests=str(len(records)), failures=str(len(bad)),
                          skipped=str(len(skipped)), errors="0")
    for r in records:
        case = ET.SubElement(suite, "testcase", classname=f"{r['task']}.{r['threat_id']}."
                             f"{r['defense']}.{r['model']}", name=r["metric"])
        detail = f"{_show(r['baseline'])} -> {_show(r['current'])}"
        if r["p"] is not None:
            down, up, shared = r["changes"]
            detail += (f"; {down} examples down, {up} up of {shared} shared; p = {r['p']:.3g}, "
                       f"Holm-adjusted {r['p_holm']:.3g}")
        if r["verdict"] in FAILING:
            ET.SubElement(case, "failure", message=f"{r['verdict']}: {detail}", type=r["verdict"])
        elif r["verdict"] == "not gated":
            ET.SubElement(case, "skipped", message=f"not gated: {r['why']}")
        else:
            ET.SubElement(case, "system-out").text = f"{r['verdict']}: {detail}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def regress(suite_ref: str, baseline_path: Path, store_path: Path | None = None,
            alpha: float = DEFAULT_ALPHA, data_root=None, cache_dir: Path | None = None,
            summary_path: Path | None = None, junit_path: Path | None = None) -> tuple[int, str]:
    """Run (or read) the suite and compare it with the baseline. Returns (exit status, report);
    writes the report as Markdown to `summary_path` and as JUnit XML to `junit_path` when given."""
    from benchmark.suite import load_suite

    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be in (0, 1), got {alpha}")
    suite = load_suite(suite_ref, data_root)
    baseline = read_baseline(Path(baseline_path), suite)
    current = measure(suite, store_path, cache_dir)
    records = compare(baseline, current, alpha)
    notes = code_notes(baseline, current, suite) + [
        f"Cell {c['task']} / {c['defense']} / {c['attack'] or 'clean'} {c['status']}: {c['reason']}"
        for c in current["not_run"]]
    report = render(records, alpha, suite.name, baseline_path, notes)
    for path, text in ((summary_path, report), (junit_path, junit(records, suite.name))):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    return (1 if failures(records) else 0), report
