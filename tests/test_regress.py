"""`rbench regress`: the statistics on made-up leaderboards, then the real gate: the committed
ci-regress baseline passes an unchanged re-run and fails when the defense is weakened."""
import copy
import json

import pytest
import torch

from benchmark.cli import main
from benchmark.paths import REPO_ROOT
from benchmark.regress import compare, failures
from benchmark.stats import rate

BASELINE = REPO_ROOT / "leaderboards" / "ci-regress" / "leaderboard.json"
SUITE = REPO_ROOT / "benchmark" / "suites" / "ci-regress.toml"


def board(clean=(530, 540), robust=(300, 540), queries=(10.0, 0.0, 500)) -> dict:
    metrics = {"clean_accuracy": rate(*clean).to_dict(), "robust_accuracy": rate(*robust).to_dict(),
               "mean_queries": {"value": queries[0], "sd": queries[1], "n": queries[2]}}
    return {"suite": "s", "tables": [{"task": "digits", "threat_id": "pgd-1", "rows": [
        {"defense": "vanilla", "model": "smallcnn", "cell_id": "c1", "metrics": metrics}]}]}


def verdicts(records) -> dict:
    return {r["metric"]: r["verdict"] for r in records}


def test_identical_numbers_pass():
    records = compare(board(), board())
    assert verdicts(records) == dict.fromkeys(["clean_accuracy", "robust_accuracy", "mean_queries"], "same")
    assert all(r["p"] == 1.0 for r in records) and not failures(records)


def test_noise_is_not_a_regression_but_a_real_drop_is():
    # 3 of 540 examples flipping (what another CPU's rounding may do) is noise.
    assert not failures(compare(board(), board(clean=(527, 540), robust=(297, 540))))
    records = compare(board(), board(robust=(240, 540)))  # 55.6% -> 44.4%
    assert verdicts(records)["robust_accuracy"] == "regressed"
    record = next(r for r in records if r["metric"] == "robust_accuracy")
    assert record["p"] < 1e-3 and record["p_holm"] >= record["p"]
    assert failures(records) == [record]


def test_direction_missing_rows_and_means():
    # Better numbers are reported, not failed; attack success going up is a regression.
    assert verdicts(compare(board(), board(robust=(400, 540))))["robust_accuracy"] == "improved"
    base, now = board(), board()
    base["tables"][0]["rows"][0]["metrics"]["attack_success_rate"] = rate(100, 500).to_dict()
    now["tables"][0]["rows"][0]["metrics"]["attack_success_rate"] = rate(200, 500).to_dict()
    assert verdicts(compare(base, now))["attack_success_rate"] == "regressed"
    # A mean that moved is "changed": reported with its p-value, never fatal by itself.
    records = compare(board(), board(queries=(12.0, 1.0, 500)))
    assert verdicts(records)["mean_queries"] == "changed" and not failures(records)
    # A row of the baseline that the new run lacks (a crashed cell) fails the gate.
    gone = copy.deepcopy(board())
    gone["tables"][0]["rows"] = []
    assert {r["verdict"] for r in failures(compare(board(), gone))} == {"missing"}


def test_holm_keeps_many_borderline_metrics_from_failing():
    # Each drop alone is p = 0.038 (Fisher); over 20 metrics Holm calls none of them significant.
    base, now = board(), board()
    for i in range(20):
        base["tables"][0]["rows"][0]["metrics"][f"extra{i}_accuracy"] = rate(150, 200).to_dict()
        now["tables"][0]["rows"][0]["metrics"][f"extra{i}_accuracy"] = rate(130, 200).to_dict()
    records = [r for r in compare(base, now) if r["metric"].startswith("extra")]
    assert all(0.01 < r["p"] < 0.05 for r in records)
    assert all(r["verdict"] == "same" for r in records)


def test_baseline_must_match_the_suite(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"suite": "mini", "tables": []}))
    assert main(["regress", "--suite", str(SUITE), "--baseline", str(other)]) == 2
    assert "is for suite 'mini'" in capsys.readouterr().err
    assert main(["regress", "--suite", str(SUITE), "--baseline", str(tmp_path / "none.json")]) == 2


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Nothing cached: the gate re-trains, as it does on a clean CI machine. One thread: these
    models are tiny, and a second thread only adds synchronisation when other processes share the
    cores (10 times the CPU time measured here)."""
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_unchanged_run_passes_the_committed_baseline(fresh_cache, capsys):
    assert main(["regress", "--suite", "ci-regress", "--baseline", str(BASELINE)]) == 0
    out = capsys.readouterr().out
    assert "passed: no significant regression" in out and "REGRESSED" not in out


def test_weakened_defense_fails(fresh_cache, tmp_path, capsys):
    # The same suite with the defense trained for zero epochs: its numbers fall to chance.
    weakened = tmp_path / "ci-regress.toml"
    weakened.write_text(SUITE.read_text().replace("[defenses.vanilla]",
                                                  "[defenses.vanilla]\nparams = { epochs = 0 }"))
    assert main(["regress", "--suite", str(weakened), "--baseline", str(BASELINE)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "clean_accuracy" in [line.split("|")[4].strip() for line in out.splitlines()
                                if "REGRESSED" in line]
