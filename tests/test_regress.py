"""`rbench regress`: the paired statistics on made-up baselines, the fail-closed baseline checks, the
model cache key over a plugin's helper modules, then the real gate: the committed ci-regress
baseline passes an unchanged re-run and fails when a defense is weakened, and a user's plugin suite
is gated with Markdown and JUnit reports."""
import copy
import json
import sys
import xml.etree.ElementTree as ET

import pytest

from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.paths import REPO_ROOT
from benchmark.regress import FORMAT, compare, decode, failures
from benchmark.stats import rate

BASELINE = REPO_ROOT / "leaderboards" / "ci-regress" / "baseline.json"
SUITE = REPO_ROOT / "benchmark" / "suites" / "ci-regress.toml"


def series(bits) -> str:
    return " ".join("-" if b is None else str(b) for b in bits)


def row(threat_id="pgd-1", clean=None, robust=None, extra=None, queries=10.0) -> dict:
    """A row of 200 examples; `clean` / `robust` are per-example 0/1 lists."""
    clean = clean if clean is not None else [1] * 190 + [0] * 10
    metrics = {"clean_accuracy": rate(sum(clean), len(clean)).to_dict()}
    examples = {"index": " ".join(map(str, range(len(clean)))), "clean_accuracy": series(clean)}
    if robust is not None:
        metrics["robust_accuracy"] = rate(sum(robust), len(robust)).to_dict()
        metrics["mean_queries"] = {"value": queries, "sd": 1.0, "n": len(clean)}
        examples["robust_accuracy"] = series(robust)
    for name, (metric, values) in (extra or {}).items():
        metrics[name], examples[name] = metric, series(values)
    return {"defense": "vanilla", "model": "smallcnn", "cell_id": threat_id, "metrics": metrics,
            "examples": examples}


def board(*rows_by_threat) -> dict:
    return {"format": FORMAT, "suite": "s", "defenses": {}, "not_run": [],
            "tables": [{"task": "digits", "threat_id": t, "rows": [r]} for t, r in rows_by_threat]}


ROBUST = [1] * 120 + [0] * 80


def verdicts(records) -> dict:
    return {(r["threat_id"], r["metric"]): r["verdict"] for r in records}


def test_identical_runs_pass_and_metrics_without_direction_are_not_tested():
    records = compare(board(("pgd-1", row(robust=ROBUST))), board(("pgd-1", row(robust=ROBUST))))
    assert verdicts(records) == {("pgd-1", "clean_accuracy"): "same",
                                 ("pgd-1", "robust_accuracy"): "same",
                                 ("pgd-1", "mean_queries"): "not gated"}
    assert not failures(records)
    queries = next(r for r in records if r["metric"] == "mean_queries")
    assert queries["p"] is None and queries["why"] == "no better direction"


def test_the_paired_test_sees_a_drop_an_unpaired_test_would_miss():
    # 12 of 120 robust examples lost, none gained: 60.0% -> 54.0%. Fisher's exact test on the two
    # rates as independent samples gives p = 0.27; the exact McNemar test on the pairs 2 * 0.5^12.
    weaker = [1] * 108 + [0] * 92
    records = compare(board(("pgd-1", row(robust=ROBUST))), board(("pgd-1", row(robust=weaker))))
    record = next(r for r in records if r["metric"] == "robust_accuracy")
    assert record["changes"] == (12, 0, 200)
    assert record["p"] == pytest.approx(2 * 0.5 ** 12)
    assert record["verdict"] == "regressed" and failures(records) == [record]
    # Examples swapping places (6 lost, 6 gained) is no change at all.
    swapped = [0] * 6 + [1] * 120 + [0] * 74
    assert not failures(compare(board(("pgd-1", row(robust=ROBUST))),
                                board(("pgd-1", row(robust=swapped)))))


def test_direction_comes_from_the_metric_schema():
    # attack success rising is a regression; robust accuracy rising an improvement
    asr_then, asr_now = [0] * 150 + [1] * 50, [0] * 130 + [1] * 70
    base = board(("pgd-1", row(robust=ROBUST, extra={
        "attack_success_rate": (rate(50, 200).to_dict(), asr_then)})))
    now = board(("pgd-1", row(robust=[1] * 150 + [0] * 50, extra={
        "attack_success_rate": (rate(70, 200).to_dict(), asr_now)})))
    found = verdicts(compare(base, now))
    assert found[("pgd-1", "attack_success_rate")] == "regressed"
    assert found[("pgd-1", "robust_accuracy")] == "improved"


def test_benign_and_certified_accuracy_at_a_radius_are_gated():
    # the metrics the old gate left out: a 10-point drop of each fails
    then, now = [1] * 180 + [0] * 20, [1] * 160 + [0] * 40
    for name in ("benign_accuracy", "certified_accuracy@0.5"):
        base = board(("clean", row(extra={name: (rate(180, 200).to_dict(), then)})))
        lower = board(("clean", row(extra={name: (rate(160, 200).to_dict(), now)})))
        assert verdicts(compare(base, lower))[("clean", name)] == "regressed"


def test_medians_are_paired_on_per_example_radii():
    # RanMASK's MCB: -inf (N/A) is the lowest radius; a third of the examples losing a word fails
    radii_then = ["-inf"] * 20 + [2.0] * 180
    radii_now = ["-inf"] * 20 + [1.0] * 60 + [2.0] * 120
    mcb = {"value": 2.0, "low": 2.0, "high": 2.0, "n": 200}
    base = board(("clean", row(extra={"mcb": (mcb, radii_then)})))
    lower = board(("clean", row(extra={"mcb": (mcb, radii_now)})))
    record = next(r for r in compare(base, lower) if r["metric"] == "mcb")
    assert record["changes"] == (60, 0, 200) and record["verdict"] == "regressed"
    assert decode(base["tables"][0]["rows"][0]["examples"], "mcb")[0] == float("-inf")


def test_clean_accuracy_is_tested_once_per_model():
    # every attack cell measures clean accuracy again: one test (the clean row's), not three
    base = board(("clean", row("clean")), ("fgsm-1", row("fgsm-1", robust=ROBUST)),
                 ("pgd-1", row("pgd-1", robust=ROBUST)))
    records = compare(base, copy.deepcopy(base))
    clean = {r["threat_id"]: r for r in records if r["metric"] == "clean_accuracy"}
    assert clean["clean"]["p"] == 1.0
    assert clean["fgsm-1"]["verdict"] == clean["pgd-1"]["verdict"] == "not gated"
    assert sum(r["p"] is not None for r in records) == 3  # clean + two robust accuracies


def test_holm_keeps_many_borderline_metrics_from_failing():
    # each drop alone is p = 0.039 (8 down, 1 up); over 20 metrics Holm calls none significant
    then, now = [1] * 150 + [0] * 50, [0] * 8 + [1] * 142 + [1] + [0] * 49
    extra_then = {f"certified_accuracy@{i}": (rate(150, 200).to_dict(), then) for i in range(20)}
    extra_now = {f"certified_accuracy@{i}": (rate(143, 200).to_dict(), now) for i in range(20)}
    records = [r for r in compare(board(("clean", row(extra=extra_then))),
                                  board(("clean", row(extra=extra_now))))
               if r["metric"].startswith("certified")]
    assert all(0.03 < r["p"] < 0.05 for r in records)
    assert all(r["verdict"] == "same" for r in records)


def test_missing_rows_fail_and_foreign_or_unknown_fail_closed():
    base = board(("clean", row("clean")), ("pgd-1", row("pgd-1", robust=ROBUST)))
    crashed = board(("clean", row("clean")))  # the attack cell failed
    assert {r["verdict"] for r in failures(compare(base, crashed))} == {"missing"}
    foreign = board(("other-1", row("other-1")))
    with pytest.raises(UsageError, match="no row of the baseline is a row of this run"):
        compare(base, foreign)
    odd = board(("clean", row("clean", extra={"clean_acc": (rate(1, 2).to_dict(), [1, 0])})))
    with pytest.raises(UsageError, match="unknown metric 'clean_acc'"):
        compare(odd, odd)


def write(path, content) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize("case, content, message", [
    ("empty", {"format": FORMAT, "suite": "ci-regress", "tables": []}, "has no rows"),
    ("only submissions", {"format": FORMAT, "suite": "ci-regress", "tables": [
        {"task": "digits", "threat_id": "clean", "rows": [{**row(), "submission": "x"}]}]},
     "has no rows"),
    ("a leaderboard.json", {"suite": "ci-regress", "tables": []}, "not an rbench regress baseline"),
    ("another suite", {"format": FORMAT, "suite": "mini", "tables": []}, "is for suite 'mini'"),
    ("no per-example values", {"format": FORMAT, "suite": "ci-regress", "tables": [
        {"task": "digits", "threat_id": "clean",
         "rows": [{**row(), "examples": {"index": "0"}}]}]}, "no per-example values"),
    ("not JSON", "{", "is not JSON"),
])
def test_a_baseline_that_cannot_decide_exits_2(tmp_path, capsys, case, content, message):
    baseline = write(tmp_path / "baseline.json", content)
    assert main(["regress", "--suite", str(SUITE), "--baseline", baseline]) == 2, case
    err = capsys.readouterr().err
    assert message in err and "--write-baseline" in err, case


def test_regress_options_and_an_empty_leaderboard_are_usage_errors(tmp_path, capsys):
    assert main(["regress", "--suite", str(SUITE)]) == 2
    assert "exactly one of --baseline" in capsys.readouterr().err
    assert main(["regress", "--suite", str(SUITE), "--baseline", str(tmp_path / "none.json")]) == 2
    assert "baseline not found" in capsys.readouterr().err
    # a store without one cell of the suite: writing its leaderboard would make an empty baseline
    from benchmark.store import Store

    Store(tmp_path / "other.sqlite").close()
    out = tmp_path / "board"
    assert main(["leaderboard", "ci-regress", "--store", str(tmp_path / "other.sqlite"),
                 "--out", str(out)]) == 2
    assert "no finished cell of suite 'ci-regress'" in capsys.readouterr().err
    assert not out.exists()


PLUGIN = '''
from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit
import {helper}


@register_defense("{name}", modality="image")
class HelperTrained:
    """Trains for the helper module's EPOCHS."""
    defaults = dict(TRAIN_DEFAULTS)

    def build(self, task, model_spec, config, context):
        module = context.build_model(model_spec, task)
        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs={helper}.EPOCHS,
            batch_size=config["batch_size"], lr=config["lr"], seed=context.seed))
        return ClassifierModel(module, task.num_classes)
'''

PLUGIN_SUITE = '''
name = "my-gate"
seed = 0
[protocol]
n_examples = 120
batch_size = 120
[tasks.digits]
model = "smallcnn"
model_params = {{ width = 8, feature_dim = 32 }}
[defenses.{name}]
[attacks.fgsm]
params = {{ eps = 0.1 }}
'''


def plugin_files(tmp_path, monkeypatch, name: str, epochs: int):
    """A user's plugin that imports a helper module of its own (named after the defense: each
    test imports its own), which sets the epochs."""
    monkeypatch.syspath_prepend(str(tmp_path))
    helper = tmp_path / f"{name.replace('-', '_')}_helper.py"
    helper.write_text(f"EPOCHS = {epochs}\n")
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN.format(name=name, helper=helper.stem))
    suite = tmp_path / "my-gate.toml"
    suite.write_text(PLUGIN_SUITE.format(name=name))
    return plugin, suite, helper


def test_cache_key_and_plugin_hash_cover_a_plugins_helper_module(tmp_path, monkeypatch):
    from benchmark.data import load_task
    from benchmark.evaluate import build_cache_key
    from benchmark.registry import load_plugin_file, local_source_files, plugin_sha256
    from benchmark.suite import load_suite

    plugin, suite_file, helper = plugin_files(tmp_path, monkeypatch, "helper-trained", 3)
    load_plugin_file(plugin)
    cell = load_suite(str(suite_file)).cells[0]
    task = load_task(cell.task)
    files = local_source_files(plugin)
    assert helper in files
    assert not any("site-packages" in str(f) or f.name == "os.py" for f in files)
    key, sha = build_cache_key(cell, task), plugin_sha256(plugin)
    helper.write_text("EPOCHS = 2\n")
    assert build_cache_key(cell, task) != key
    assert plugin_sha256(plugin) != sha


def test_a_users_plugin_is_gated_with_markdown_and_junit_reports(tmp_path, monkeypatch, capsys):
    plugin, suite, helper = plugin_files(tmp_path, monkeypatch, "helper-gated", 2)
    baseline = tmp_path / "ci" / "baseline.json"
    assert main(["regress", "--suite", str(suite), "--plugin", str(plugin),
                 "--write-baseline", str(baseline)]) == 0
    written = json.loads(baseline.read_text())
    assert written["format"] == FORMAT
    from benchmark.registry import plugin_sha256

    assert written["defenses"]["helper-gated"] == {
        "defense": "helper-gated", "file": "my_plugin.py", "sha256": plugin_sha256(plugin)}
    summary, report = tmp_path / "summary.md", tmp_path / "junit.xml"
    gate = ["regress", "--suite", str(suite), "--plugin", str(plugin), "--baseline", str(baseline),
            "--summary", str(summary), "--junit", str(report)]
    assert main(gate) == 0
    assert "**passed**" in summary.read_text()
    cases = ET.parse(report).getroot().find("testsuite")
    assert cases.get("failures") == "0" and int(cases.get("tests")) >= 5
    # The helper's EPOCHS cut to zero: a new cache key, an untrained model, a failing gate, and
    # the note that the defense's code changed. (A CI run is a new process; this one has the
    # helper imported already, so its attribute is set as a fresh import would set it.)
    helper.write_text("EPOCHS = 0\n")
    monkeypatch.setattr(sys.modules[helper.stem], "EPOCHS", 0)
    capsys.readouterr()
    assert main(gate) == 1
    out = capsys.readouterr().out
    assert "**FAILED**" in out and "Defense `helper-gated` (`my_plugin.py`): its code" in out
    failed = [case.get("name") for case in ET.parse(report).getroot().iter("testcase")
              if case.find("failure") is not None]
    assert "clean_accuracy" in failed


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """Nothing cached at first: the gate re-trains, as it does on a clean CI machine. The store of
    that run is kept, so the weakened run below computes only the cells it changed."""
    import os

    before = os.environ["RBENCH_CACHE"]
    folder = tmp_path_factory.mktemp("ci-run")
    os.environ["RBENCH_CACHE"] = str(folder / "cache")
    yield folder / "ci-regress.sqlite"
    os.environ["RBENCH_CACHE"] = before


def report_table(out: str) -> list[dict]:
    """The rows of the report's Markdown table, by column name."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    names = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(names, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def test_unchanged_run_passes_the_committed_baseline(fresh_run, capsys):
    assert main(["regress", "--suite", "ci-regress", "--baseline", str(BASELINE),
                 "--store", str(fresh_run)]) == 0
    out = capsys.readouterr().out
    assert "**passed**" in out and "REGRESSED" not in out
    # every gated kind of metric is tested
    tested = {row["metric"] for row in report_table(out) if row["p"]}
    assert {"clean_accuracy", "robust_accuracy", "attack_success_rate", "certified_accuracy",
            "certified_accuracy@0.25", "median_certified_radius", "abstain_rate",
            "benign_accuracy"} <= tested


def test_weakened_defense_fails(fresh_run, tmp_path, capsys):
    # The same suite with vanilla trained for zero epochs: its numbers fall to chance. (Its other
    # cells come from the unchanged run's store: their ids, the hash of their configuration, are
    # the same.)
    import shutil

    weakened = tmp_path / "ci-regress.toml"
    weakened.write_text(SUITE.read_text().replace("[defenses.vanilla]",
                                                  "[defenses.vanilla]\nparams = { epochs = 0 }"))
    store = shutil.copy(fresh_run, tmp_path / "ci-regress.sqlite")
    assert main(["regress", "--suite", str(weakened), "--baseline", str(BASELINE),
                 "--store", str(store)]) == 1
    rows = report_table(capsys.readouterr().out)
    regressed = {(row["task"], row["defense"], row["metric"]) for row in rows
                 if row["verdict"] == "REGRESSED"}
    assert {("digits", "vanilla", "clean_accuracy"), ("toy-sentiment", "vanilla", "benign_accuracy")} \
        <= regressed
    assert not any(row["defense"] == "madry" for row in rows if row["verdict"] == "REGRESSED")


def test_the_ci_recipe_runs_as_written(capsys):
    # The workflow's gate command, its variables filled in with the example's files, parses; its
    # suite loads with the example plugin; and the example baseline is one for that suite.
    import re
    import shlex

    from benchmark.cli import build_parser
    from benchmark.registry import load_plugin_file
    from benchmark.regress import read_baseline
    from benchmark.suite import load_suite

    workflow = (REPO_ROOT / "examples" / "ci" / "rbench-regress.yml").read_text()
    command = re.search(r"^\s*(rbench regress .*?)\n\s*-", workflow.replace("\\\n", " "),
                        re.S | re.M).group(1)
    files = {"$SUITE": "examples/ci/my-gate.toml", "$PLUGIN": "examples/my_defense.py",
             "$BASELINE": "examples/ci/baseline.json", "$GITHUB_STEP_SUMMARY": "summary.md"}
    for variable, value in files.items():
        command = command.replace(f'"{variable}"', value)
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.suite, args.subcommand_plugins, args.baseline, args.summary, args.junit) == (
        "examples/ci/my-gate.toml", ["examples/my_defense.py"], "examples/ci/baseline.json",
        "summary.md", "rbench-regress.xml")
    load_plugin_file(REPO_ROOT / args.subcommand_plugins[0])
    suite = load_suite(str(REPO_ROOT / args.suite))
    assert {cell.defense.name for cell in suite.cells} == {"gaussian-augment", "vanilla"}
    assert read_baseline(REPO_ROOT / args.baseline, suite)["defenses"]["gaussian-augment"][
        "file"] == "examples/my_defense.py"
