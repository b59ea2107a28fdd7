"""Training-seed replicates: a suite defense's `seeds` expand into one row per seed without moving
any existing cell, and claims over seeds are decided by a stratified paired test over the seeds'
outcomes in a real SQLite store."""
import numpy as np
import pytest
from scipy.stats import binomtest

from benchmark.data import load_task
from benchmark.errors import UsageError
from benchmark.evaluate import build_cache_key, build_defended
from benchmark.reproduction import build_reproduction, load_claims
from benchmark.stats import paired_power
from benchmark.store import Store
from benchmark.suite import load_suite

# Cell ids of real-cpu and mini cells computed before training-seed replicates existed: the store
# of a run in progress keys its outcomes by them, so they must never move.
PINNED_IDS = {
    ("real-cpu", "digits", "vanilla", None): "ec0f44e3ca61b8cd",
    ("real-cpu", "digits", "madry", None): "bd024ce11889c59f",
    ("real-cpu", "digits", "madry", "pgd-linf"): "cb57ba9e9ad0731b",
    ("real-cpu", "digits", "causaladv-m", "cw-20"): "f7c0320df2def4fb",
    ("real-cpu", "digits", "trades", "pgd-linf"): "0c396a462847907b",
    ("real-cpu", "digits", "ciiv", None): "4827729958aa5374",
    # (ctoy gained seed replicates later: its seed-0 rows stay)
    ("real-cpu", "ctoy", "vanilla", "pgd-linf"): "9dde3a9967e0413d",
    ("real-cpu", "ctoy", "ciiv", "pgd-linf"): "0699715456c49690",
    ("real-cpu", "sst2", "ranmask-vote", "textfooler"): "94a8f2457b7a84c6",
    ("real-cpu", "sst2", "safer", None): "af9f6367899bbabe",
    ("mini", "digits", "madry", "pgd-linf"): "98096b8d84356766",
    ("mini", "digits", "vanilla", None): "aec66e37d2f4f37f",
    ("mini", "digits", "causaladv-t", "cw-20"): "2ad164541428b64b",
}


def test_existing_cells_keep_their_ids():
    suites = {name: load_suite(name) for name in ("real-cpu", "mini")}
    for (suite, task, defense, attack), cell_id in PINNED_IDS.items():
        found = [c.id for c in suites[suite].cells
                 if (c.task_label, c.defense_label, c.attack_label) == (task, defense, attack)]
        assert found == [cell_id], (suite, task, defense, attack)


SEEDED = """
name = "seeds-test"
seed = 0
[protocol]
n_examples = 40
batch_size = 40
[tasks.digits]
model = "smallcnn"
[defenses.vanilla]
params = {{ epochs = 1 }}
{seeds}
[attacks.fgsm]
"""


def write_suite(tmp_path, seeds: str, name="seeded.toml"):
    path = tmp_path / name
    path.write_text(SEEDED.format(seeds=seeds))
    return load_suite(str(path))


def test_seeds_expand_into_rows_and_the_task_seed_keeps_its_cell(tmp_path):
    plain = write_suite(tmp_path, "", "plain.toml")
    seeded = write_suite(tmp_path, "seeds = [0, 1, 2]")
    assert [(c.defense_label, c.attack_label, c.training_seed) for c in seeded.cells] == [
        ("vanilla", None, 0), ("vanilla", "fgsm", 0), ("vanilla@seed1", None, 1),
        ("vanilla@seed1", "fgsm", 1), ("vanilla@seed2", None, 2), ("vanilla@seed2", "fgsm", 2)]
    assert [c.id for c in seeded.cells[:2]] == [c.id for c in plain.cells]
    assert len({c.id for c in seeded.cells}) == 6
    task = load_task(plain.cells[0].task)
    keys = [build_cache_key(c, task) for c in seeded.cells if c.attack is None]
    assert keys[0] == build_cache_key(plain.cells[0], task) and len(set(keys)) == 3
    # the replicates differ only in their training seed: the same test examples, other weights
    first, second = (build_defended(c, task, tmp_path / "cache") for c in seeded.cells[::2][:2])
    assert not all(np.array_equal(a, b) for a, b in zip(
        first.module.state_dict().values(), second.module.state_dict().values()))


def test_seeds_by_task_replicate_only_that_task(tmp_path):
    path = tmp_path / "two-tasks.toml"
    path.write_text(SEEDED.format(seeds="seeds = { digits = [0, 3] }")
                    + '[tasks.ctoy]\nmodel = "smallcnn"\nparams = { size = 16 }\n')
    rows = {(c.task_label, c.defense_label) for c in load_suite(str(path)).cells}
    assert rows == {("digits", "vanilla"), ("digits", "vanilla@seed3"), ("ctoy", "vanilla")}


@pytest.mark.parametrize("seeds, where", [
    ("seeds = []", "seeds"), ("seeds = [1, 1]", "seeds"), ("seeds = [-1]", "seeds"),
    ('seeds = "0"', "seeds"), ("seeds = { digits = [true] }", "seeds.digits"),
    ("seeds = { digit = [0, 1] }", "seeds")])
def test_bad_seeds_are_refused_where_they_are(tmp_path, seeds, where):
    with pytest.raises(UsageError, match=rf"\[defenses.vanilla\], key '{where}'"):
        write_suite(tmp_path, seeds)


CLAIMS_SUITE = """
name = "seed-claims"
seed = 0
[protocol]
n_examples = {n}
batch_size = {n}
[tasks.digits]
model = "smallcnn"
[defenses.vanilla]
seeds = [0, 1, 2]
[defenses.madry]
seeds = [0, 1, 2]
[attacks.pgd]
"""


def ten_class(correct):
    """Rows of a 10-class sample: right where `correct[i]`, else the next class."""
    return [{"example_index": i, "label": i % 10,
             "clean_prediction": i % 10, "adversarial_prediction": i % 10 if ok else (i + 1) % 10,
             "success": not ok, "certified": None, "radius": None, "abstained": None, "extra": {}}
            for i, ok in enumerate(correct)]


def seeded_store(tmp_path, robust: dict, n: int):
    """A store with vanilla and madry clean cells right everywhere and each (defense, seed)'s PGD
    cell right on the examples robust[(defense, seed)] says."""
    path = tmp_path / "seed-claims.toml"
    path.write_text(CLAIMS_SUITE.format(n=n))
    suite = load_suite(str(path))
    store = Store(tmp_path / "store.sqlite")
    for cell in suite.cells:
        defense = cell.defense_label.split("@")[0]
        correct = robust[(defense, cell.training_seed)] if cell.attack_label else [True] * n
        store.open_cell(suite.name, cell, 1, "test", None)
        store.write_batch(cell.id, 0, ten_class(correct))
        store.finish_cell(cell.id)
    return suite, store


def claims(tmp_path, extra=""):
    path = tmp_path / "claims.toml"
    path.write_text(f"""[[claim]]
id = "madry-over-vanilla"
paper = "P"
statement = "s"
paper_figure = "f"
metric = "robust_accuracy"
seeds = [0, 1, 2]
better = {{ task = "digits", defense = "madry", attack = "pgd" }}
worse = {{ task = "digits", defense = "vanilla", attack = "pgd" }}
{extra}
""")
    return load_claims(path)


def pattern(n, wins, losses, both=0):
    """(better, worse) per-example rows: `wins` examples where only better is right, `losses` where
    only worse is, `both` where both are, the rest wrong for both."""
    better = [i < wins or wins + losses <= i < wins + losses + both for i in range(n)]
    worse = [wins <= i < wins + losses + both for i in range(n)]
    return better, worse


def test_a_true_effect_split_across_seeds_is_detected(tmp_path):
    """8 against 3 discordant pairs in each seed: no seed alone is significant (p = 0.11), the
    three together are (24 of 33 pooled, p = 0.007), and the seeds agree."""
    robust = {}
    for seed in (0, 1, 2):
        robust[("madry", seed)], robust[("vanilla", seed)] = pattern(100, 8, 3, both=50)
    suite, store = seeded_store(tmp_path, robust, 100)
    row = build_reproduction(claims(tmp_path), suite, store)["rows"][0]
    assert row["verdict"] == "holds", row
    assert "seed 0: 8-3, seed 1: 8-3, seed 2: 8-3" in row["detail"]
    assert row["p_value"] < 0.01
    assert "per seed 58.0 / 58.0 / 58.0" in row["ours_better"] and "(n=300)" in row["ours_better"]


def test_an_effect_in_one_seed_only_is_not_over_claimed(tmp_path):
    """Seed 0 shows a large win (30 to 2), seeds 1 and 2 none (10 to 10): the pooled count alone
    (50 to 22) would reject, but the seeds disagree, so the claim does not hold."""
    robust = {("madry", 0): pattern(100, 30, 2)[0], ("vanilla", 0): pattern(100, 30, 2)[1]}
    for seed in (1, 2):
        robust[("madry", seed)], robust[("vanilla", seed)] = pattern(100, 10, 10)
    suite, store = seeded_store(tmp_path, robust, 100)
    row = build_reproduction(claims(tmp_path), suite, store)["rows"][0]
    assert row["verdict"] == "does not hold", row
    assert "the training seeds disagree" in row["detail"]


def test_a_tiny_n_cannot_refute_the_paper_and_says_so(tmp_path):
    """A 0.6-point paper difference at 20 examples a seed: the test cannot reject and its power is
    far below 80%, so the verdict is "underpowered here" with the power, not "does not hold"."""
    robust = {}
    for seed in (0, 1, 2):
        robust[("madry", seed)], robust[("vanilla", seed)] = pattern(20, 1, 1, both=10)
    suite, store = seeded_store(tmp_path, robust, 20)
    row = build_reproduction(claims(tmp_path, "paper_difference = 0.006"), suite, store)["rows"][0]
    assert row["verdict"] == "underpowered here", row
    power = paired_power(0.006, 6 / 60, 60, 0.05)
    assert f"power {100 * power:.0f}% at n = 60 pairs" in row["detail"] and power < 0.1
    # the same outcomes with the paper's difference large enough to be seen: it does not hold
    row = build_reproduction(claims(tmp_path, "paper_difference = 0.5"), suite, store)["rows"][0]
    assert row["verdict"] == "does not hold", row


def test_a_bound_claim_over_seeds_needs_every_seed_below_the_bound(tmp_path):
    """Seeds 0 and 1 leave 0 of 100 right, seed 2 leaves 8: pooled, 8 of 300 is below 5% (exact
    binomial p = 0.04), but seed 2 alone is not, so the claim does not hold; with seed 2 at 0 too,
    every seed's test rejects (0.95^100 = 0.006) and it holds."""
    def bound(robust_seed_2):
        robust = {(d, s): [False] * 100 for d in ("madry", "vanilla") for s in (0, 1)}
        robust.update({(d, 2): [i < robust_seed_2 for i in range(100)] for d in ("madry", "vanilla")})
        (tmp_path / str(robust_seed_2)).mkdir()
        suite, store = seeded_store(tmp_path / str(robust_seed_2), robust, 100)
        path = tmp_path / f"bound-{robust_seed_2}.toml"
        path.write_text('[[claim]]\nid = "near-zero"\npaper = "P"\nstatement = "s"\n'
                        'paper_figure = "f"\nmetric = "robust_accuracy"\nseeds = [0, 1, 2]\n'
                        'at_most = 0.05\ncell = { task = "digits", defense = "vanilla", attack = "pgd" }\n')
        return build_reproduction(load_claims(path), suite, store)["rows"][0]

    row = bound(8)
    assert binomtest(8, 300, 0.05, alternative="less").pvalue < 0.05
    assert row["verdict"] == "does not hold", row
    assert row["p_value"] == pytest.approx(binomtest(8, 100, 0.05, alternative="less").pvalue)
    assert "per seed 0.0 / 0.0 / 8.0" in row["ours_better"]
    row = bound(0)
    assert row["verdict"] == "holds" and row["p_value"] == pytest.approx(0.95 ** 100)
    assert "every one of 3 training seeds" in row["detail"]


def test_a_missing_seed_makes_the_claim_not_testable(tmp_path):
    robust = {(d, s): [True] * 20 for d in ("madry", "vanilla") for s in (0, 1, 2)}
    suite, store = seeded_store(tmp_path, robust, 20)
    missing = next(c for c in suite.cells if c.defense_label == "madry@seed2" and c.attack_label)
    store.fail_cell(missing.id, "killed", "failed")
    row = build_reproduction(claims(tmp_path), suite, store)["rows"][0]
    assert row["verdict"] == "not testable here"
    assert "madry on digits, pgd (training seed 2): failed: killed" in row["detail"]


def test_paired_power_matches_the_normal_approximation():
    """Connor (1987)'s sample size for psi = 0.2, d = 0.1, one-sided alpha 0.05 and power 0.8 is
    n = (1.645 sqrt(0.2) + 0.842 sqrt(0.19))^2 / 0.01 = 121.5: the power crosses 80% there."""
    assert paired_power(0.1, 0.2, 121, 0.05) < 0.8 < paired_power(0.1, 0.2, 122, 0.05)
    assert paired_power(0.1, 0.2, 1000, 0.05) > 0.999
