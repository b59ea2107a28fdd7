"""The certificate audit (benchmark/audit.py) on real defenses, and the two defects it came with:
the certified-accuracy curve and the substitution table's case."""
import dataclasses

import numpy as np
import pytest
import torch

from benchmark.audit import AUDIT_DEFAULTS, Judge, audit_suite, audit_text, row_verdict
from benchmark.data import load_task
from benchmark.data.base import SubstitutionTable
from benchmark.evaluate import build_defended, cell_batches, run_cell
from benchmark.leaderboard import build_leaderboard, cell_metrics, certified_curve
from benchmark.models.text import WordTokenizer
from benchmark.registry import DEFENSES
from benchmark.specs import DefenseSpec
from benchmark.store import Store
from benchmark.suite import load_suite
from defenses.text import intervals

SMALL_BUDGETS = {**AUDIT_DEFAULTS, "guide_samples": 16, "judge_candidates": 16, "beam_width": 4,
                 "random_combinations": 16, "pgd_steps": 10, "eot_samples": 4, "judge_samples": 500}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Shared by the tests below, so mini's models are trained once."""
    return tmp_path_factory.mktemp("audit-cache")


def mini_cell(label: str, **params):
    cell = next(c for c in load_suite("mini").cells if c.defense_label == label and c.attack is None)
    return dataclasses.replace(cell, defense=DefenseSpec.make(cell.defense.name,
                                                              {**cell.defense.params, **params}))


def ranmask_audit(cache, beta: str, count: int) -> tuple[int, list[dict]]:
    """Certify the first `count` of mini's toy-sentiment sample with mini's RanMASK (vote) under
    `beta` and audit the certified ones: (checked, evidence of each falsified)."""
    cell = mini_cell("ranmask-vote", beta=beta)
    task = load_task(cell.task, None)
    model = build_defended(cell, task, cache, torch.device("cpu"))
    indices = np.concatenate(cell_batches(cell, task))[:count]
    certificates = model.certify(task.test.inputs(indices), task.test.ys[indices], 0.05, seed=0)
    outcomes = [{"example_index": int(i), "label": int(task.test.ys[i]), "radius": c.radius,
                 "p_lower": c.p_lower, "extra": c.details}
                for i, c in zip(indices, certificates) if c.certified]
    results = list(audit_text(model, task, "words", outcomes, SMALL_BUDGETS,
                              Judge(model, SMALL_BUDGETS, 0)))
    return len(results), [e for _, falsified, e in results if falsified]


def test_ranmask_beta_p_c_certificates_are_broken_and_beta_one_holds(cache):
    """The issue's finding: RanMASK's certificate with the paper's beta ~ p_c is broken by a word
    edit at d = 1, with vote shares counted exactly over every mask, on texts whose exact vote share
    is at least the certificate's p_lower (so the bound is wrong, not the sampling). The default
    beta = 1 certifies fewer texts and none of them is broken that way."""
    checked, broken = ranmask_audit(cache, "p_c", 24)
    assert checked >= 5
    unsound = [e for e in broken if e["p_lower_held"]]
    assert unsound, (checked, broken)
    assert all(e["exact"] and e["share"] <= 0.5 for e in broken)
    checked, broken = ranmask_audit(cache, "one", 24)
    assert checked >= 1
    assert not [e for e in broken if e["p_lower_held"]], broken
    assert not row_verdict(checked, len(broken), True, 0.05)["broken"]


def test_mini_certified_cells_pass_the_audit(tmp_path, cache):
    """CI's audit of mini: every certifying clean cell of the mini suite (its own defenses and
    settings) at a small n, run into a scratch store and audited; no row's certificates broken,
    and the audit lands on the leaderboard row."""
    suite = load_suite("mini")
    store = Store(tmp_path / "mini.sqlite")
    cells = [c for c in suite.cells if c.attack is None and c.poison is None
             and DEFENSES.get(c.defense.name).tags.get("certifies")]
    cells = [dataclasses.replace(c, protocol=dataclasses.replace(c.protocol, n_examples=12,
                                                                 batch_size=12)) for c in cells]
    suite = dataclasses.replace(suite, cells=cells)
    tasks = {}
    for cell in cells:
        task = tasks.setdefault(cell.task_label, load_task(cell.task, None))
        run_cell(cell, suite.name, store, task, cache, torch.device("cpu"))
    summaries = audit_suite(suite, store, SMALL_BUDGETS, cache, torch.device("cpu"),
                            log=lambda _: None)
    certifying = {(s["task"], s["defense"]) for s in summaries}
    assert {("toy-sentiment", "ibp"), ("toy-sentiment", "ciss"), ("toy-sentiment", "safer"),
            ("toy-sentiment", "ranmask-vote"), ("digits", "randomized-smoothing")} <= certifying
    assert not [s for s in summaries if s["broken"]]
    assert sum(s["checked"] for s in summaries) > 0
    board = build_leaderboard(store, suite.name)
    rows = [r for t in board["tables"] for r in t["rows"] if "certified_accuracy" in r["metrics"]]
    # every certified example is audited (certified accuracy counts those also deployed correctly)
    assert rows and all(r["audit"]["checked"] >= r["metrics"]["certified_accuracy"]["successes"]
                        for r in rows)


def test_an_audit_resumes_and_keeps_each_budget_apart(tmp_path, cache):
    """A second audit under the same budget checks nothing again; another budget is its own audit."""
    suite = load_suite("mini")
    cell = next(c for c in suite.cells if c.defense_label == "ibp" and c.attack is None)
    cell = dataclasses.replace(cell, protocol=dataclasses.replace(cell.protocol, n_examples=6,
                                                                  batch_size=6))
    suite = dataclasses.replace(suite, cells=[cell])
    store = Store(tmp_path / "s.sqlite")
    run_cell(cell, suite.name, store, load_task(cell.task, None), cache, torch.device("cpu"))
    first = audit_suite(suite, store, SMALL_BUDGETS, cache, log=lambda _: None)[0]
    assert first["checked"] >= 1
    kept = first["examples"][0]["example_index"]
    store.write_audit(cell.id, first["config_hash"], kept, False, {"search": "kept"})
    again = audit_suite(suite, store, SMALL_BUDGETS, cache, log=lambda _: None)[0]
    assert again["checked"] == first["checked"]
    assert again["examples"][0]["evidence"] == {"search": "kept"}  # done examples are not redone
    other = audit_suite(suite, store, {**SMALL_BUDGETS, "exhaustive_cap": 1}, cache,
                        log=lambda _: None)[0]
    assert other["config_hash"] != first["config_hash"]
    assert "beam" in other["examples"][0]["evidence"]["search"]


def test_a_deterministic_certificate_allows_no_violation_a_randomized_one_alpha():
    assert row_verdict(100, 1, False, 0.05)["broken"]
    assert not row_verdict(100, 0, False, 0.05)["broken"]
    assert not row_verdict(100, 5, True, 0.05)["broken"]  # 5% violations: what alpha allows
    assert row_verdict(100, 12, True, 0.05)["broken"]
    assert row_verdict(0, 0, True, 0.05)["upper"] is None


def test_certified_curve_counts_only_deployed_correct_examples():
    """At r = 0 the curve is certified accuracy, so it cannot exceed clean accuracy: an example
    certified with more draws than the deployed rule uses, but predicted wrong, does not count."""
    outcomes = [{"label": 1, "clean_prediction": p, "certified": c, "radius": 1.0, "abstained": 0,
                 "extra": {}} for p, c in ((1, 1), (0, 1), (0, 1), (1, 0))]
    curve = certified_curve(outcomes)
    clean = cell_metrics(outcomes, has_attack=False)["clean_accuracy"]["value"]
    assert curve["accuracy"][0] == 0.25 <= clean


def test_an_upper_case_table_gives_the_boxes_the_tokenizer_reads():
    """Table words are lowercased where the table is made, as the tokenizer lowercases input: the
    substitute a user's text holds ("Superb" is read as "superb") is inside the box of the word."""
    table = SubstitutionTable({"Great": ["Superb", "fine"], "great": ["Nice"]})
    assert table["great"] == ["superb", "fine", "nice"]
    tokenizer = WordTokenizer.from_texts(["the movie was great"], sorted(table.vocabulary()))
    rows = intervals.candidate_matrix(tokenizer, table)
    great = tokenizer.ids("great")[0]
    for substitute in ("Superb", "fine", "NICE"):
        assert tokenizer.ids(substitute)[0] in rows[great].tolist()
    assert "Superb" not in tokenizer.stoi
