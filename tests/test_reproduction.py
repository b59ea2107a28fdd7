"""The reproduction table's verdicts, from outcomes written to a real SQLite store for the cells of
a small suite file (nothing is trained: the outcomes are chosen so each verdict is known), and the
committed real-cpu claims file against the real-cpu suite."""
import numpy as np
import pytest
from scipy.stats import binomtest

from benchmark.errors import UsageError
from benchmark.reproduction import (build_reproduction, claims_path, load_claims,
                                    render_reproduction)
from benchmark.stats import rate
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
    with pytest.raises(UsageError, match="at_most must be a rate in"):
        claims_file(tmp_path, bound_claim("x", "robust_accuracy", '{ task = "a", defense = "b" }', 5))
    with pytest.raises(UsageError, match="at_most must be a rate in"):
        claims_file(tmp_path, bound_claim("x", "colour_block_share", '{ task = "a", defense = "b" }', 0.5))
    with pytest.raises(UsageError, match="a bound claim .* names one side"):
        claims_file(tmp_path, bound_claim("x", "robust_accuracy", '{ task = "a", defense = "b" }', 0.5)
                    + 'worse = { task = "a", defense = "c" }\n')
    with pytest.raises(UsageError, match="missing keys \\['cell'\\]"):
        claims_file(tmp_path, '[[claim]]\nid = "x"\npaper = "P"\nstatement = "s"\n'
                              'paper_figure = "f"\nmetric = "robust_accuracy"\nat_most = 0.1\n')


def bound_claim(id, metric, cell, at_most):
    return (f'[[claim]]\nid = "{id}"\npaper = "P"\nstatement = "s"\npaper_figure = "f"\n'
            f'metric = "{metric}"\ncell = {cell}\nat_most = {at_most}\n')


def test_a_bound_claim_tests_one_cell_against_its_bound(setup):
    """`at_most`: an exact one-sided binomial test of the cell's rate against the bound."""
    suite, store, tmp_path = setup
    claims = claims_file(tmp_path, "".join([
        # 5 of 100: P(X <= 5 | n = 100, p = 0.15) = 0.002
        bound_claim("below", "robust_accuracy", '{ task = "digits", defense = "vanilla", attack = "pgd" }', 0.15),
        # 5 of 100 against 5%: P(X <= 5) = 0.62, not below
        bound_claim("at", "robust_accuracy", '{ task = "digits", defense = "vanilla", attack = "pgd" }', 0.05),
        bound_claim("above", "robust_accuracy", '{ task = "digits", defense = "madry", attack = "pgd" }', 0.15),
        bound_claim("unrun", "robust_accuracy", '{ task = "digits", defense = "madry", attack = "cw" }', 0.15),
    ]))
    rows = {row["id"]: row for row in build_reproduction(claims, suite, store)["rows"]}
    assert rows["below"]["verdict"] == "holds"
    assert rows["below"]["p_value"] == pytest.approx(binomtest(5, 100, 0.15, alternative="less").pvalue)
    assert rows["below"]["worse"] == "at most 15%" and rows["below"]["ours_worse"] is None
    assert rows["below"]["ours_better"] == "5.0 [1.6, 11.3] (n=100)"
    assert rows["at"]["verdict"] == "does not hold" and "not significant" in rows["at"]["detail"]
    assert rows["above"]["verdict"] == "does not hold"
    assert "the opposite is significant" in rows["above"]["detail"]
    assert rows["unrun"]["verdict"] == "not testable here" and "needs a GPU" in rows["unrun"]["detail"]
    assert "at most 15%" in render_reproduction(build_reproduction(claims, suite, store))


def test_a_test_time_attack_success_rate_counts_the_correctly_classified_examples(setup):
    """As the leaderboard counts it: of the examples right before the attack, the share it turned
    wrong (an example the model already got wrong is not a failed attack)."""
    suite, store, tmp_path = setup
    cell = next(c for c in suite.cells if (c.defense_label, c.attack_label) == ("mixup", "fgsm"))
    store.open_cell(suite.name, cell, 1, "test", None)
    # right on the first 60 examples before the attack; the attack turns 30 of them wrong
    store.write_batch(cell.id, 0, outcomes([i < 60 for i in range(100)], [i < 30 for i in range(100)]))
    store.finish_cell(cell.id)
    claims = claims_file(tmp_path, bound_claim(
        "flips", "attack_success_rate", '{ task = "digits", defense = "mixup", attack = "fgsm" }', 0.9))
    row = build_reproduction(claims, suite, store)["rows"][0]
    assert row["ours_better"] == rate(30, 60).format()


def test_colour_block_shares_are_compared_by_rank(setup):
    """Per-example shares recorded by pgd-block-share (outcome extra): lower is better, one-sided
    Mann-Whitney U."""
    suite, store, tmp_path = setup
    cells = {(c.defense_label, c.attack_label): c for c in suite.cells}
    rng = np.random.default_rng(1)
    written = {}
    for key, centre in ((("mixup", "pgd"), 0.55), (("vanilla", "cw"), 0.7)):
        rows = outcomes([True] * 100, [False] * 100)
        written[key] = rng.normal(centre, 0.1, 100).clip(0, 1)
        for row, share in zip(rows, written[key]):
            row["extra"] = {"colour_block_share": float(share)}
        store.open_cell(suite.name, cells[key], 1, "test", None)
        store.write_batch(cells[key].id, 0, rows)
        store.finish_cell(cells[key].id)
    mixup = '{ task = "digits", defense = "mixup", attack = "pgd" }'
    vanilla = '{ task = "digits", defense = "vanilla", attack = "cw" }'
    claims = claims_file(tmp_path, claim("less", "colour_block_share", mixup, vanilla)
                         + claim("more", "colour_block_share", vanilla, mixup))
    rows = {row["id"]: row for row in build_reproduction(claims, suite, store)["rows"]}
    assert rows["less"]["verdict"] == "holds" and "Mann-Whitney" in rows["less"]["detail"]
    assert rows["more"]["verdict"] == "does not hold"
    assert "the opposite is significant" in rows["more"]["detail"]
    assert rows["less"]["ours_better"].startswith("median 0.5") and "(n=100)" in rows["less"]["ours_better"]
    # the leaderboard's attack table shows the mean share
    from benchmark.leaderboard import build_leaderboard

    board = build_leaderboard(store, suite.name)
    shown = next(r for t in board["tables"] if t["attack"] == "pgd" for r in t["rows"]
                 if r["defense"] == "mixup")
    assert shown["metrics"]["colour_block_share"]["value"] == pytest.approx(written[("mixup", "pgd")].mean())


def test_real_cpu_claims_name_cells_of_the_real_cpu_suite():
    """Every side of every committed claim is a cell the real-cpu suite runs."""
    suite = load_suite("real-cpu")
    labels = {(c.task_label, c.defense_label, c.attack_label) for c in suite.cells}
    claims = load_claims(claims_path("real-cpu"))
    assert len(claims) >= 10
    for item in claims:
        for side in item.sides:
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
