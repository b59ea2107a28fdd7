"""The reproduction table's verdicts, from outcomes written to a real SQLite store for the cells of
a small suite file (nothing is trained: the outcomes are chosen so each verdict is known), and the
committed real-cpu claims file against the real-cpu suite."""
import numpy as np
import pytest

from benchmark.errors import UsageError
from benchmark.reproduction import (build_reproduction, claims_path, load_claims,
                                    render_reproduction)
from benchmark.store import Store
from benchmark.suite import load_suite

SUITE = """
name = "claims-test"
seed = 0
[protocol]
n_examples = 100
batch_size = 100
[tasks.digits]
model = "smallcnn"
[defenses.vanilla]
[defenses.madry]
[defenses.trades]
[defenses.mixup]
[attacks.fgsm]
[attacks.pgd]
params = { eps = 0.1 }
[attacks.cw]
[attacks.autoattack]
params = { eps = 0.1 }
"""


def outcomes(correct_clean, correct_adversarial=None, radius=None, abstained=None):
    """Rows for a 2-class sample with alternating labels (so a majority class is right half the time)."""
    rows = []
    for i, clean in enumerate(correct_clean):
        label = i % 2
        adversarial = None if correct_adversarial is None else \
            (label if correct_adversarial[i] else 1 - label)
        rows.append({"example_index": i, "label": label,
                     "clean_prediction": label if clean else 1 - label,
                     "adversarial_prediction": adversarial,
                     "success": None if adversarial is None else adversarial != label,
                     "certified": None if radius is None else bool(radius[i] >= 0),
                     "radius": None if radius is None else float(max(radius[i], 0)),
                     "abstained": None if radius is None else bool(abstained and abstained[i]),
                     "extra": {} if radius is None else {"certified_prediction": label}})
    return rows


@pytest.fixture
def setup(tmp_path):
    suite_file = tmp_path / "claims-test.toml"
    suite_file.write_text(SUITE)
    suite = load_suite(str(suite_file))
    store = Store(tmp_path / "store.sqlite")
    cells = {(c.defense_label, c.attack_label): c for c in suite.cells}
    everything = [True] * 100

    def write(defense, attack, rows, status="done", reason=None):
        cell = cells[(defense, attack)]
        store.open_cell(suite.name, cell, 1, "test", None)
        if status == "done":
            store.write_batch(cell.id, 0, rows)
            store.finish_cell(cell.id)
        else:
            store.fail_cell(cell.id, reason, status)

    rng = np.random.default_rng(0)
    write("vanilla", None, outcomes(everything, radius=rng.integers(-1, 3, 100)))
    write("madry", None, outcomes(everything, radius=rng.integers(2, 8, 100)))
    # mixup abstains on 60 of 100: its median certified robustness is N/A (-infinity)
    write("mixup", None, outcomes(everything, radius=rng.integers(0, 3, 100),
                                  abstained=[i < 60 for i in range(100)]))
    write("vanilla", "pgd", outcomes(everything, [i < 5 for i in range(100)]))
    write("madry", "pgd", outcomes(everything, [i < 60 for i in range(100)]))
    write("vanilla", "fgsm", outcomes(everything, [i < 50 for i in range(100)]))
    write("madry", "fgsm", outcomes(everything, [i < 52 for i in range(100)]))
    write("madry", "cw", [], status="not_run", reason="needs a GPU")
    # AutoAttack leaving madry more accurate than PGD at the same budget fails a sanity check
    write("madry", "autoattack", outcomes(everything, [i < 90 for i in range(100)]))
    # trades predicts one class: right on the half of the examples labelled 0, whatever happens
    write("trades", "pgd", outcomes([i % 2 == 0 for i in range(100)], [i % 2 == 0 for i in range(100)]))
    return suite, store, tmp_path


def claims_file(tmp_path, body):
    path = tmp_path / "claims.toml"
    path.write_text(body)
    return load_claims(path)


def claim(id, metric, better, worse, extra=""):
    return (f'[[claim]]\nid = "{id}"\npaper = "P"\nstatement = "s"\npaper_figure = "f"\n'
            f'metric = "{metric}"\nbetter = {better}\nworse = {worse}\n{extra}\n')


def test_each_verdict_comes_from_the_stored_outcomes(setup):
    suite, store, tmp_path = setup
    madry_pgd = '{ task = "digits", defense = "madry", attack = "pgd" }'
    vanilla_pgd = '{ task = "digits", defense = "vanilla", attack = "pgd" }'
    claims = claims_file(tmp_path, "".join([
        claim("robust", "robust_accuracy", madry_pgd, vanilla_pgd),            # 60% vs 5%
        claim("reversed", "robust_accuracy", vanilla_pgd, madry_pgd),          # the opposite
        claim("tie", "robust_accuracy", '{ task = "digits", defense = "madry", attack = "fgsm" }',
              '{ task = "digits", defense = "vanilla", attack = "fgsm" }'),   # 52% vs 50%
        claim("radius", "certified_radius", '{ task = "digits", defense = "madry" }',
              '{ task = "digits", defense = "vanilla" }'),
        claim("radius-na", "certified_radius", '{ task = "digits", defense = "madry" }',
              '{ task = "digits", defense = "mixup" }'),
        claim("gpu", "robust_accuracy", '{ task = "digits", defense = "madry", attack = "cw" }',
              vanilla_pgd),
        claim("absent", "robust_accuracy", '{ task = "digits", defense = "ciiv", attack = "pgd" }',
              vanilla_pgd),
        claim("constant", "robust_accuracy", '{ task = "digits", defense = "trades", attack = "pgd" }',
              vanilla_pgd),
        claim("cost", "clean_accuracy", '{ task = "digits", defense = "madry" }',
              '{ task = "digits", defense = "vanilla" }', "margin = 0.05"),
        claim("declared", "robust_accuracy", madry_pgd, vanilla_pgd,
              'not_testable = "the paper\'s setting needs ImageNet"'),
    ]))
    table = build_reproduction(claims, suite, store)
    verdicts = {row["id"]: row["verdict"] for row in table["rows"]}
    assert verdicts == {"robust": "holds", "reversed": "does not hold", "tie": "does not hold",
                        "radius": "holds", "radius-na": "holds", "gpu": "not testable here",
                        "absent": "not testable here", "constant": "not testable here",
                        "cost": "holds", "declared": "not testable here"}
    rows = {row["id"]: row for row in table["rows"]}
    assert "the opposite is significant" in rows["reversed"]["detail"]
    assert "not significant" in rows["tie"]["detail"]
    assert "needs a GPU" in rows["gpu"]["detail"]
    assert "no cell ciiv on digits" in rows["absent"]["detail"]
    assert "not above always predicting the majority class (50.0%)" in rows["constant"]["detail"]
    assert rows["constant"]["ours_worse"].startswith("5.0 [")  # the measured side is still shown
    assert rows["robust"]["ours_better"] == "60.0 [49.7, 69.7] (n=100)"
    assert "McNemar" in rows["robust"]["detail"]
    assert "sanity flag on madry on digits: autoattack: AutoAttack weaker than PGD" \
        in rows["robust"]["detail"] and "sanity flag" not in rows["radius"]["detail"]
    assert rows["radius-na"]["ours_worse"].startswith("N/A [N/A, ") and "(n=100)" in rows["radius-na"]["ours_worse"]
    assert table["counts"] == {"holds": 4, "does not hold": 2, "underpowered here": 0,
                               "not testable here": 4}
    page = render_reproduction(table)
    assert page.count("\n| **P**") == 10 and "4 holds, 2 does not hold, 0 underpowered here, 4 not testable here" in page


def test_malformed_claims_are_refused_with_the_fix(tmp_path):
    with pytest.raises(UsageError, match="metric 'speed' is not one of"):
        claims_file(tmp_path, claim("x", "speed", '{ task = "a", defense = "b" }',
                                    '{ task = "a", defense = "c" }'))
    with pytest.raises(UsageError, match="missing keys"):
        claims_file(tmp_path, '[[claim]]\nid = "x"\n')
    with pytest.raises(UsageError, match="better must be a table with task, defense"):
        claims_file(tmp_path, claim("x", "clean_accuracy", '"vanilla"', '{ task = "a", defense = "c" }'))


def test_real_cpu_claims_name_cells_of_the_real_cpu_suite():
    """Every side of every committed claim is a cell the real-cpu suite runs."""
    suite = load_suite("real-cpu")
    labels = {(c.task_label, c.defense_label, c.attack_label) for c in suite.cells}
    claims = load_claims(claims_path("real-cpu"))
    assert len(claims) >= 10
    for item in claims:
        for side in (item.better, item.worse):
            assert (side["task"], side["defense"], side.get("attack")) in labels, (item.id, side)


def test_cells_of_an_earlier_suite_version_stay_off_the_leaderboard(setup):
    from benchmark.leaderboard import build_leaderboard

    suite, store, tmp_path = setup
    edited = tmp_path / "claims-test.toml"
    edited.write_text(SUITE.replace("[defenses.madry]", "[defenses.madry]\nparams = { eps = 0.2 }"))
    old_madry = next(c for c in load_suite(str(edited)).cells
                     if c.defense_label == "madry" and c.attack_label == "pgd")
    store.open_cell(suite.name, old_madry, 1, "test", None)
    store.write_batch(old_madry.id, 0, outcomes([True] * 100, [True] * 100))
    store.finish_cell(old_madry.id)

    def madry_pgd_rows(board):
        return [row for table in board["tables"] for row in table["rows"]
                if row["defense"] == "madry" and table["attack"] == "pgd"]

    assert len(madry_pgd_rows(build_leaderboard(store, suite.name))) == 2
    current = build_leaderboard(store, suite.name, cell_ids={c.id for c in suite.cells})
    assert [row["cell_id"] for row in madry_pgd_rows(current)] == \
        [c.id for c in suite.cells if c.defense_label == "madry" and c.attack_label == "pgd"]


def test_a_collapsed_model_is_not_evidence(setup):
    """Adversarial training at a large budget can collapse to a few classes far below the vanilla
    model: above the majority class (10% of 10 classes) but not a defense worth comparing."""
    suite, store, tmp_path = setup
    cells = {(c.defense_label, c.attack_label): c for c in suite.cells}

    def ten_class(correct, predicted):
        return [{"example_index": i, "label": i % 10, "clean_prediction": predicted(i) if not correct(i)
                 else i % 10, "adversarial_prediction": i % 10 if correct(i) else predicted(i),
                 "success": not correct(i), "certified": None, "radius": None, "abstained": None,
                 "extra": {}} for i in range(100)]

    # mixup predicts classes 0 and 1 only; the fixture's vanilla clean cell is right everywhere
    cell = cells[("mixup", "cw")]
    store.open_cell(suite.name, cell, 1, "test", None)
    store.write_batch(cell.id, 0, ten_class(lambda i: i % 10 < 2, lambda i: i % 2))
    store.finish_cell(cell.id)
    claims = claims_file(tmp_path, claim(
        "collapse", "robust_accuracy", '{ task = "digits", defense = "mixup", attack = "cw" }',
        '{ task = "digits", defense = "madry", attack = "pgd" }'))
    row = build_reproduction(claims, suite, store)["rows"][0]
    assert row["verdict"] == "not testable here"
    assert "not above always predicting the majority class" not in row["detail"]
    assert "collapsed: it predicts 2 of the 10 classes in the sample" in row["detail"]
    assert "below half of the vanilla model's (100.0%)" in row["detail"]


def test_a_model_whose_training_loss_stayed_at_chance_is_flagged(setup):
    """A model whose last training epoch's mean cross-entropy is near ln C learnt next to nothing: its
    claims are not testable, and the leaderboard flags its row (`collapsed`), ranking it after the
    unflagged rows."""
    from benchmark.leaderboard import build_leaderboard

    suite, store, tmp_path = setup
    cells = {(c.defense_label, c.attack_label): c for c in suite.cells}
    madry = claim("robust", "robust_accuracy", '{ task = "digits", defense = "madry", attack = "pgd" }',
                  '{ task = "digits", defense = "vanilla", attack = "pgd" }')
    assert build_reproduction(claims_file(tmp_path, madry), suite, store)["rows"][0]["verdict"] == "holds"
    for attack in (None, "pgd"):
        store.add_training_record(cells[("madry", attack)].id,
                                  {"final_cross_entropy": 0.68, "epochs": 20, "num_classes": 2})
    row = build_reproduction(claims_file(tmp_path, madry), suite, store)["rows"][0]
    assert row["verdict"] == "not testable here"
    assert "last training epoch's mean cross-entropy 0.68 is near ln 2 = 0.693" in row["detail"]
    board = build_leaderboard(store, suite.name)
    madry_rows = [r for t in board["tables"] for r in t["rows"] if r["defense"] == "madry"]
    assert madry_rows and all("collapsed" in r["sanity_summary"] for r in madry_rows)
    vanilla_rows = [r for t in board["tables"] for r in t["rows"] if r["defense"] == "vanilla"]
    assert not any("collapsed" in r.get("sanity_summary", "") for r in vanilla_rows)
