"""End to end through the CLI: a tiny suite runs offline, writes leaderboards with n and intervals,
and bad input is refused with exit status 2 and a message that says what to fix."""
import json
import sqlite3
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.store import Store
from benchmark.suite import load_suite

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    store = out / "tiny.sqlite"
    assert main(["run", str(FIXTURES / "tiny.toml"), "--store", str(store)]) == 0
    assert main(["leaderboard", str(FIXTURES / "tiny.toml"), "--store", str(store),
                 "--out", str(out / "board")]) == 0
    return store, out / "board"


def test_every_cell_finishes_and_is_measured(tiny_run):
    store_path, board_dir = tiny_run
    store = Store(store_path)
    cells = store.cells("tiny")
    # digits: clean + fgsm + pgd; toy-sentiment: clean + deepwordbug (modalities never mix)
    assert sorted((c.task, c.attack or "clean") for c in cells) == [
        ("digits", "clean"), ("digits", "fgsm"), ("digits", "pgd-linf"),
        ("toy-sentiment", "clean"), ("toy-sentiment", "deepwordbug")]
    assert all(c.status == "done" for c in cells)
    for cell in cells:
        outcomes = store.outcomes(cell.cell_id)
        assert len(outcomes) == (40 if cell.task == "digits" else 10)


def test_leaderboard_files_carry_n_and_interval(tiny_run):
    _, board_dir = tiny_run
    board = json.loads((board_dir / "leaderboard.json").read_text())
    assert {(t["task"], t["attack"]) for t in board["tables"]} == {
        ("digits", None), ("digits", "fgsm"), ("digits", "pgd-linf"), ("toy-sentiment", None),
        ("toy-sentiment", "deepwordbug")}
    for table in board["tables"]:
        for row in table["rows"]:
            accuracy = row["metrics"]["clean_accuracy"]
            assert accuracy["n"] > 0 and accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    pgd = next(t for t in board["tables"] if t["attack"] == "pgd-linf")
    metrics = pgd["rows"][0]["metrics"]
    assert metrics["robust_accuracy"]["value"] < metrics["clean_accuracy"]["value"]
    assert "PGD-5" in pgd["description"] and "eps=0.2" in pgd["description"]
    markdown = (board_dir / "leaderboard.md").read_text()
    assert "(n=40)" in markdown and "deepwordbug" in markdown
    csv_lines = (board_dir / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[0].startswith("suite,task,threat_id")
    assert board["manifest"]["packages"]["torch"].startswith("2.")
    assert board["manifest"]["data"]["digits"]["checksums"]["test"]


def test_rerun_reuses_store_and_cached_model(tiny_run, capsys):
    store_path, _ = tiny_run
    before = sqlite3.connect(store_path).execute("SELECT count(*) FROM outcomes").fetchone()[0]
    assert main(["run", str(FIXTURES / "tiny.toml"), "--store", str(store_path)]) == 0
    after = sqlite3.connect(store_path).execute("SELECT count(*) FROM outcomes").fetchone()[0]
    assert before == after


def test_the_store_records_where_the_time_went(tiny_run, capsys):
    store_path, _ = tiny_run
    db = sqlite3.connect(store_path)
    # every committed batch has its seconds; every cell that ran has a build (train or load)
    assert db.execute("SELECT count(*) FROM batches").fetchone() == \
        db.execute("SELECT count(*) FROM batch_seconds WHERE seconds > 0").fetchone()
    assert db.execute("SELECT count(DISTINCT cell_id) FROM build_seconds").fetchone()[0] == 5
    cells = Store(store_path).cell_seconds("tiny")
    assert len(cells) == 5 and cells[0]["build"] + cells[0]["batches"] >= \
        cells[-1]["build"] + cells[-1]["batches"]
    # a finished suite run again does no work but still reports what the store recorded
    assert main(["run", str(FIXTURES / "tiny.toml"), "--store", str(store_path)]) == 0
    printed = capsys.readouterr().out
    assert "time recorded in the store" in printed and "by defense: vanilla" in printed
    assert "deepwordbug" in printed.split("by attack:")[1]


def test_different_budgets_are_different_threat_models(tmp_path):
    from benchmark.suite import load_suite

    suite_file = tmp_path / "budgets.toml"
    suite_file.write_text((FIXTURES / "tiny.toml").read_text() + """
[attacks.pgd-strong]
attack = "pgd"
params = { norm = "linf", eps = 0.3, steps = 5 }
""")
    cells = [c for c in load_suite(str(suite_file)).cells if c.attack and c.attack.name == "pgd"]
    assert len({c.threat_id for c in cells}) == 2


def test_list_prints_registered_components(capsys):
    assert main(["list", "defenses"]) == 0
    assert "vanilla" in capsys.readouterr().out
    assert main(["list", "attacks"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("fgsm", "pgd", "deepwordbug"))


def test_plugin_defense_appears_and_runs(tmp_path, capsys):
    plugin = tmp_path / "my_defense.py"
    plugin.write_text('''
from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit


@register_defense("noisy-training", modality="image")
class NoisyTraining:
    """Trains on inputs with uniform noise."""
    defaults = {**TRAIN_DEFAULTS, "noise": 0.1}

    def build(self, task, model_spec, config, context):
        import torch

        def noisy_loss(model, x, y):
            x = (x + config["noise"] * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
            return torch.nn.functional.cross_entropy(model(x), y)

        module = context.build_model(model_spec, task)
        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"], batch_size=config["batch_size"],
            lr=config["lr"], seed=context.seed, loss_fn=noisy_loss))
        return ClassifierModel(module, task.num_classes)
''')
    assert main(["--plugin", str(plugin), "list", "defenses"]) == 0
    assert "noisy-training" in capsys.readouterr().out
    suite = tmp_path / "plugin.toml"
    suite.write_text('''
name = "plugin"
[protocol]
n_examples = 20
batch_size = 10
[tasks.digits]
model = "smallcnn"
model_params = { width = 8, feature_dim = 32 }
train = { epochs = 1 }
[defenses.noisy-training]
params = { noise = 0.2 }
''')
    store = tmp_path / "plugin.sqlite"
    assert main(["--plugin", str(plugin), "run", str(suite), "--store", str(store)]) == 0
    cells = Store(store).cells("plugin")
    assert [(c.defense, c.status) for c in cells] == [("noisy-training", "done")]


BAD_SUITES = [
    ("unknown defense", '[tasks.digits]\nmodel = "smallcnn"\n[defenses.nonesuch]\n',
     "unknown defense 'nonesuch'; valid defense names: ", "vanilla"),
    ("unknown attack", '[tasks.digits]\nmodel = "smallcnn"\n[defenses.vanilla]\n[attacks.zap]\n',
     "unknown attack 'zap'", "pgd"),
    ("unknown task", '[tasks.mnist2]\nmodel = "smallcnn"\n[defenses.vanilla]\n',
     "unknown task 'mnist2'", "digits"),
    ("missing model", '[tasks.digits]\n[defenses.vanilla]\n', "missing key 'model'", "smallcnn"),
    ("wrong model modality", '[tasks.digits]\nmodel = "textcnn"\n[defenses.vanilla]\n',
     "model 'textcnn' is for text tasks", "digits"),
    ("wrong type", '[tasks.digits]\nmodel = "smallcnn"\ntrain = { epochs = "ten" }\n[defenses.vanilla]\n',
     "key 'epochs'", "expected int"),
    ("unknown parameter", '[tasks.digits]\nmodel = "smallcnn"\n[defenses.vanilla]\nparams = { epoch = 3 }\n',
     "unknown parameter(s) epoch", "valid parameters"),
    ("negative budget", '[tasks.digits]\nmodel = "smallcnn"\n[defenses.vanilla]\n[attacks.pgd]\nparams = { eps = -0.1 }\n',
     "eps must be >= 0", "pgd"),
    ("alpha out of range", '[protocol]\nalpha = 1.5\n[tasks.digits]\nmodel = "smallcnn"\n[defenses.vanilla]\n',
     "alpha must be in (0, 1)", "1.5"),
    ("no defenses", '[tasks.digits]\nmodel = "smallcnn"\n', "at least one entry under [defenses]", ""),
    ("not toml", 'name = \n', "is not valid TOML", ""),
    ("unknown top-level key", 'tsaks = 1\n', "unknown top-level key(s) tsaks", "tasks"),
    ("incompatible pairing", '[tasks.digits]\nmodel = "smallcnn"\n[defenses.vanilla]\n'
     '[attacks.deepwordbug]\ntasks = ["digits"]\n', "is for text tasks but is listed for image task", ""),
    ("unknown defense in a task's list", '[tasks.digits]\nmodel = "smallcnn"\ndefenses = ["vanila"]\n'
     '[defenses.vanilla]\n', "key 'defenses': vanila not in the suite's [defenses]", "labels: vanilla"),
]


def test_a_task_runs_only_the_defenses_and_attacks_it_lists(tmp_path):
    suite_file = tmp_path / "selected.toml"
    suite_file.write_text('[tasks.digits]\nmodel = "smallcnn"\n'
                          '[tasks.few]\ntask = "digits"\nmodel = "smallcnn"\n'
                          'defenses = ["madry"]\nattacks = []\n'
                          '[defenses.vanilla]\n[defenses.madry]\n[attacks.fgsm]\n')
    cells = {(c.task_label, c.defense_label, c.attack_label) for c in load_suite(str(suite_file)).cells}
    assert cells == {("digits", "vanilla", None), ("digits", "vanilla", "fgsm"),
                     ("digits", "madry", None), ("digits", "madry", "fgsm"), ("few", "madry", None)}
    # A submission replaces the file's defenses: its defense runs on every compatible task.
    submitted = load_suite(str(suite_file), defenses={"entry": {"defense": "vanilla"}})
    assert {(c.task_label, c.defense_label, c.attack_label) for c in submitted.cells} == {
        ("digits", "entry", None), ("digits", "entry", "fgsm"), ("few", "entry", None)}


@pytest.mark.parametrize("case, content, message, hint", BAD_SUITES, ids=[c[0] for c in BAD_SUITES])
def test_bad_suite_is_a_usage_error(tmp_path, capsys, case, content, message, hint):
    suite = tmp_path / "bad.toml"
    suite.write_text(content)
    assert main(["run", str(suite), "--store", str(tmp_path / "s.sqlite")]) == 2
    error = capsys.readouterr().err
    assert message in error and hint in error
    assert not (tmp_path / "s.sqlite").exists()  # nothing written


def test_unknown_builtin_suite_lists_the_valid_ones(capsys):
    assert main(["run", "no-such-suite"]) == 2
    assert "built-in suites: " in capsys.readouterr().err


def test_missing_data_directory_says_where_files_go(tmp_path, capsys):
    suite = tmp_path / "sst.toml"
    suite.write_text('[tasks.sst2]\nparams = { substitutions = "none" }\nmodel = "textcnn"\n'
                     '[defenses.vanilla]\n')
    assert main(["run", str(suite), "--data-root", str(tmp_path / "nowhere"),
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    error = capsys.readouterr().err
    assert "sst2" in error and "train.txt" in error


def test_a_process_builds_each_defended_model_once_per_deployment(tmp_path):
    """Cells of one defended model share one copy; entries that share trained weights but deploy
    them differently (RanMASK's vote and logit rows) each get their own."""
    from benchmark.data import load_task
    from benchmark.evaluate import build_defended
    from benchmark.registry import DEFENSES
    from benchmark.specs import Cell, DefenseSpec, ModelSpec, Protocol, TaskSpec
    from benchmark.suite import resolve_config

    task_spec = TaskSpec.make("toy-sentiment", {"seed": 0})
    task = load_task(task_spec)

    def cell(ensemble):
        config = resolve_config(DEFENSES.get("ranmask").obj.defaults,
                                {"rho": 0.7, "epochs": 1, "ensemble": ensemble}, "ranmask")
        return Cell(task_spec, ModelSpec.make("textcnn", {}), DefenseSpec.make("ranmask", config),
                    None, Protocol(), "toy-sentiment", f"ranmask-{ensemble}")

    vote = build_defended(cell("vote"), task, tmp_path)
    assert build_defended(cell("vote"), task, tmp_path) is vote
    logit = build_defended(cell("logit"), task, tmp_path)
    assert logit is not vote and (vote.config["ensemble"], logit.config["ensemble"]) == ("vote", "logit")
    assert len(list(tmp_path.glob("*-model.pt"))) == 1  # one training, shared through the cache


@pytest.mark.parametrize("defense, task_name, model, counts, shaping", [
    ("randomized-smoothing", "digits", "smallcnn", {"certify_n0": 10, "certify_n": 20,
                                                    "predict_samples": 5, "predict_alpha": 0.01},
     {"sigma": 0.5}),
    ("crowd", "toy-sentiment", "textcnn", {"certify_n0": 10, "certify_n": 20, "predict_samples": 5},
     {"set_size": 50}),
])
def test_sample_counts_share_one_trained_model(defense, task_name, model, counts, shaping):
    """Sample counts are inference keys: entries differing only in them share a cache entry,
    and a training setting does not."""
    from benchmark.data import load_task
    from benchmark.evaluate import build_cache_key
    from benchmark.registry import DEFENSES
    from benchmark.specs import Cell, DefenseSpec, ModelSpec, Protocol, TaskSpec
    from benchmark.suite import resolve_config

    task_spec = TaskSpec.make(task_name, {"seed": 0})
    task = load_task(task_spec)

    def key(params):
        config = resolve_config(DEFENSES.get(defense).obj.defaults, params, defense)
        return build_cache_key(Cell(task_spec, ModelSpec.make(model, {}),
                                    DefenseSpec.make(defense, config), None, Protocol(), task_name,
                                    defense), task)

    assert key(counts) == key({})
    assert key(shaping) != key({})


def test_a_suite_run_task_by_task_and_merged_equals_the_whole_run(tiny_run, tmp_path, capsys):
    """`run --task` on two machines, then `merge`: the same cells, outcomes and tables."""
    whole_store, whole_board = tiny_run
    suite = str(FIXTURES / "tiny.toml")
    parts = []
    for task in ("digits", "toy-sentiment"):
        part = tmp_path / f"{task}.sqlite"
        assert main(["run", suite, "--task", task, "--store", str(part)]) == 0
        assert {c.task for c in Store(part).cells("tiny")} == {task}
        parts.append(str(part))
    merged = tmp_path / "merged.sqlite"
    assert main(["merge", suite, *parts, "--store", str(merged)]) == 0
    assert main(["merge", suite, *parts, "--store", str(merged)]) == 0  # again: nothing changes
    assert main(["leaderboard", suite, "--store", str(merged), "--out", str(tmp_path / "b")]) == 0
    whole, combined = Store(whole_store), Store(merged)
    assert sorted(c.cell_id for c in combined.cells("tiny")) == sorted(
        c.cell_id for c in whole.cells("tiny"))
    for cell in whole.cells("tiny"):
        assert combined.outcomes(cell.cell_id) == whole.outcomes(cell.cell_id)
    assert len(combined.runs("tiny")) == 2
    tables = [json.loads((board / "leaderboard.json").read_text())["tables"]
              for board in (whole_board, tmp_path / "b")]
    assert tables[0] == tables[1]


def test_an_unknown_task_is_refused_with_the_suites_tasks(tmp_path, capsys):
    assert main(["run", str(FIXTURES / "tiny.toml"), "--task", "mnist",
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "has no task mnist; its tasks are digits, toy-sentiment" in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_merge_refuses_a_file_that_is_not_a_store(tmp_path, capsys):
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)")
    assert main(["merge", str(FIXTURES / "tiny.toml"), str(foreign),
                 "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "not an rbench results store" in capsys.readouterr().err
