"""Submitting a defense: contract errors, then the README's workflow end to end on a small suite:
the worked example submits, merges into the leaderboard (tables and site), and verifies; a changed
outcome, edited numbers, edited results, an edited plugin file, a reused name and a stale suite
file are all caught, and a backdoor entry is re-run through the backdoor path."""
import json
import textwrap
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.paths import REPO_ROOT
from benchmark.stats import rate
from benchmark.submit import chosen_batches, load_defense_plugin, results_hash, submit, verify

EXAMPLE = REPO_ROOT / "examples" / "my_defense.py"
SUITE = """
name = "submit-test"
seed = 0
[protocol]
n_examples = 120
batch_size = 60
[tasks.digits]
model = "smallcnn"
model_params = { width = 8, feature_dim = 32 }
train = { epochs = 3 }
[defenses.vanilla]
[attacks.fgsm]
params = { eps = 0.1 }
"""


def plugin(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text("from benchmark.registry import register_defense\n" + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("name, body, message", [
    ("no_defense", "x = 1\n", "registers no defense"),
    ("two_defenses", """
        @register_defense("sub-two-a", modality="image")
        class A:
            def build(self, task, model_spec, config, context): ...
        @register_defense("sub-two-b", modality="image")
        class B:
            def build(self, task, model_spec, config, context): ...
        """, "registers 2 defenses (sub-two-a, sub-two-b)"),
    ("bad_build", """
        @register_defense("sub-bad-build", modality="image")
        class A:
            def build(self, task): ...
        """, "cannot be called as build(task, model_spec, config, context)"),
    ("no_build", """
        @register_defense("sub-no-build", modality="image")
        class A:
            pass
        """, "has no build(task, model_spec, config, context) method"),
    ("needs_args", """
        @register_defense("sub-needs-args", modality="image")
        class A:
            def __init__(self, strength):
                self.strength = strength
            def build(self, task, model_spec, config, context): ...
        """, "constructs a defense without arguments"),
    ("bad_tags", """
        @register_defense("sub-bad-tags", modality="video", certifies=True)
        class A:
            defaults = {"schedule": object()}
            def build(self, task, model_spec, config, context): ...
        """, "modality='video'"),
    ("a_function", """
        @register_defense("sub-function", modality="image")
        def build(task, model_spec, config, context): ...
        """, "decorate a class"),
    ("broken", "import not_a_module_anywhere\n", "failed to load: ModuleNotFoundError"),
])
def test_contract_errors_are_clear(tmp_path, name, body, message):
    with pytest.raises(UsageError) as error:
        load_defense_plugin(plugin(tmp_path, name, body))
    assert message in str(error.value)
    if name == "bad_tags":  # every problem is listed at once
        assert "needs unit=" in str(error.value) and "JSON values" in str(error.value)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A scratch cache, results and leaderboards directory, one torch thread (tiny models), the
    test suite."""
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("RBENCH_LEADERBOARDS", str(tmp_path / "leaderboards"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    suite = tmp_path / "submit-test.toml"
    suite.write_text(SUITE)
    yield suite
    torch.set_num_threads(threads)


def test_a_model_that_breaks_the_contract_fails_its_cells(env, tmp_path):
    path = plugin(tmp_path, "returns_none", """
        @register_defense("sub-returns-none", modality="image")
        class A:
            def build(self, task, model_spec, config, context):
                return None
        """)
    with pytest.raises(UsageError) as error:
        submit(path, str(env), "none-entry", out_dir=tmp_path / "subs")
    assert "build() returned a NoneType that breaks the DefendedModel contract" in str(error.value)
    assert "nothing was written" in str(error.value) and not (tmp_path / "subs").exists()


def test_entry_names(env, tmp_path):
    with pytest.raises(UsageError, match="entry name"):
        submit(EXAMPLE, str(env), "../escape", out_dir=tmp_path)
    with pytest.raises(UsageError, match="already a defense of suite"):
        submit(EXAMPLE, str(env), "vanilla", out_dir=tmp_path)


def forge(path, tmp_path, name: str, change) -> Path:
    """A copy of the submission at `path` with `change(submission)` applied and its results hash
    recomputed, as a forger would."""
    forged = json.loads(path.read_text())
    change(forged)
    forged["results_sha256"] = results_hash(forged["results"])
    forged_path = tmp_path / "forged" / f"{name}.json"
    forged_path.parent.mkdir(exist_ok=True)
    forged_path.write_text(json.dumps(forged))
    return forged_path


def fgsm_row(submission: dict) -> dict:
    return next(t for t in submission["results"]["tables"] if t["threat_id"] == "fgsm-78dc3839")["rows"][0]


def test_submit_merge_and_verify(env, tmp_path, capsys):
    submissions = tmp_path / "leaderboards" / "submit-test" / "submissions"
    assert main(["submit", str(EXAMPLE), "--suite", str(env), "--name", "noise-0.1"]) == 0
    path = submissions / "noise-0.1.json"
    entry = json.loads(path.read_text())
    assert entry["plugin"] == {"file": "examples/my_defense.py", "sha256": entry["plugin"]["sha256"]}
    assert entry["suite_file"] == "submit-test.toml"  # outside the repository: the name alone
    assert str(tmp_path) not in path.read_text()  # no path of this machine
    assert entry["results_sha256"] == results_hash(entry["results"])
    assert entry["defense"]["name"] == "gaussian-augment"
    assert entry["defense"]["config"]["digits"]["sigma"] == 0.1
    assert entry["defense"]["config"]["digits"]["epochs"] == 3  # the suite's training settings
    assert {"git_commit", "packages", "data", "suite_sha256"} <= set(entry["manifest"])
    tables = {t["threat_id"]: t for t in entry["results"]["tables"]}
    assert set(tables) == {"clean", "fgsm-78dc3839"}
    fgsm = tables["fgsm-78dc3839"]["rows"][0]
    assert fgsm["defense"] == "noise-0.1" and fgsm["metrics"]["robust_accuracy"]["n"] == 120
    assert len(entry["results"]["outcome_hashes"][fgsm["cell_id"]]) == 120  # one per example

    # The suite's own run, then the leaderboard, written elsewhere with --out: the suite's own
    # submissions are merged (and copied next to the pages that link them).
    board_dir = tmp_path / "board"
    assert main(["run", str(env)]) == 0
    assert main(["leaderboard", str(env), "--out", str(board_dir), "--html"]) == 0
    board = json.loads((board_dir / "leaderboard.json").read_text())
    rows = {r["defense"]: r for t in board["tables"] if t["threat_id"] == "fgsm-78dc3839"
            for r in t["rows"]}
    assert set(rows) == {"vanilla", "noise-0.1"} and rows["noise-0.1"]["submission"] == "noise-0.1"
    assert "noise-0.1 (submission)" in (board_dir / "leaderboard.md").read_text()
    assert 'href="submissions/noise-0.1.json"' in (board_dir / "digits--fgsm-78dc3839.html").read_text()
    assert (board_dir / "submissions" / "noise-0.1.json").read_bytes() == path.read_bytes()

    # Verify: hashes, rates, then every batch re-run, outcome by outcome and metric by metric.
    capsys.readouterr()
    assert main(["verify", str(path), "--suite-file", str(env)]) == 0
    report = capsys.readouterr().out
    assert "results hash: ok" in report and "plugin hash: ok" in report and "verified" in report
    assert report.count("| 120/120 ") == 2 and report.count("| equal ") == 2

    # One outcome changed, the counts, values and intervals made to agree and the hash
    # recomputed: only the re-run can tell, and it does.
    def one_outcome(forged):
        row = fgsm_row(forged)
        metric = row["metrics"]["robust_accuracy"]
        metric.update(rate(metric["successes"] + 1, metric["n"]).to_dict())
        forged["results"]["outcome_hashes"][row["cell_id"]][7] = "0" * 16
    passed, report = verify(forge(path, tmp_path, "one", one_outcome), suite_file=env)
    assert not passed
    assert "digits / smallcnn / noise-0.1 / fgsm: 1 of 120 re-run examples have another outcome" in report
    assert "submitted metrics differ from the re-run's: robust_accuracy" in report
    # A spot check of whole batches finds it when it re-runs the batch that holds it (the first of
    # the two batches of 60), and only then.
    seeds = {tuple(chosen_batches([range(60)] * 2, 60, seed)): seed for seed in range(10)}
    with_it, without_it = seeds[(0,)], seeds[(1,)]
    passed, report = verify(forge(path, tmp_path, "one", one_outcome), examples=60, seed=with_it,
                            suite_file=env)
    assert not passed and "1 of 60 re-run examples have another outcome" in report
    passed, report = verify(forge(path, tmp_path, "one", one_outcome), examples=60, seed=without_it,
                            suite_file=env)
    assert passed and "a changed outcome outside them is not detected" in report

    # A raised rate with the hash recomputed but its counts left: refused without a re-run, and
    # by the leaderboard.
    def raised(forged):
        forged["entry"] = "raised"
        fgsm_row(forged)["metrics"]["robust_accuracy"].update(value=0.99)
    forged_path = forge(path, tmp_path, "raised", raised)
    passed, report = verify(forged_path, suite_file=env)
    assert not passed and "robust_accuracy: value 0.99 lies outside its own interval" in report
    (submissions / "raised.json").write_text(forged_path.read_text())
    assert main(["leaderboard", str(env), "--out", str(board_dir)]) == 2
    assert "its rates do not follow from their counts" in capsys.readouterr().err
    (submissions / "raised.json").unlink()

    # Edited numbers without a new hash: refused by verify and by the leaderboard.
    forged = json.loads(path.read_text())
    fgsm_row(forged)["metrics"]["robust_accuracy"].update(value=0.99, successes=int(0.99 * 120))
    (submissions / "forged.json").write_text(json.dumps(forged))
    passed, report = verify(submissions / "forged.json")
    assert not passed and "results hash: MISMATCH" in report
    assert main(["leaderboard", str(env), "--out", str(board_dir)]) == 2
    (submissions / "forged.json").unlink()

    # A plugin file that is not the submitted one.
    edited = tmp_path / "edited_defense.py"
    edited.write_text(EXAMPLE.read_text() + "\n# edited\n")
    passed, report = verify(path, plugin_file=edited)
    assert not passed and "plugin hash: MISMATCH" in report

    # The same name for another plugin file: refused unless --replace.
    other = tmp_path / "other_defense.py"
    other.write_text(EXAMPLE.read_text().replace('"gaussian-augment"', '"noise-other"'))
    assert main(["submit", str(other), "--suite", str(env), "--name", "noise-0.1"]) == 2
    assert "is the submission of another plugin file (examples/my_defense.py" in capsys.readouterr().err
    assert json.loads(path.read_text()) == entry

    # The suite file changes: the submission is stale, left out of the leaderboard (and named).
    env.write_text(SUITE.replace("n_examples = 120", "n_examples = 60"))
    assert main(["run", str(env)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", str(env), "--out", str(board_dir)]) == 0
    assert f"left out stale submission {path}" in capsys.readouterr().err
    board = json.loads((board_dir / "leaderboard.json").read_text())
    assert not any(r.get("submission") for t in board["tables"] for r in t["rows"])
    passed, report = verify(path, suite_file=env)
    assert not passed and "changed since the submission" in report


def test_a_plugin_outside_the_repository_is_recorded_by_name(env, tmp_path):
    outside = tmp_path / "elsewhere" / "noise_defense.py"
    outside.parent.mkdir()
    outside.write_text(EXAMPLE.read_text().replace('"gaussian-augment"', '"noise-outside"'))
    path = submit(outside, str(env), "outside", out_dir=tmp_path / "subs")
    entry = json.loads(path.read_text())
    assert entry["plugin"]["file"] == "noise_defense.py" and str(tmp_path) not in path.read_text()
    with pytest.raises(UsageError, match="pass the file's path with --plugin-file"):
        verify(path)
    passed, report = verify(path, examples=60, plugin_file=outside, suite_file=env)
    assert passed, report


BACKDOOR_SUITE = """
name = "submit-backdoor-test"
seed = 0
[protocol]
n_examples = 40
batch_size = 20
[tasks.toy-sentiment]
params = { n_train = 200, n_test = 60 }
model = "textcnn"
model_params = { embedding_dim = 8, filters = 8 }
train = { epochs = 1, batch_size = 32 }
[defenses.vanilla]
[poisoners.badnets]
params = { rate = 0.2, target_label = 1 }
"""


def test_verify_reruns_backdoor_cells_through_the_backdoor_path(env, tmp_path):
    """A backdoor-capable entry's backdoor cell is re-run on the poisoned training split: a forged
    benign accuracy (with its one outcome) is caught."""
    suite = tmp_path / "backdoor.toml"
    suite.write_text(BACKDOOR_SUITE)
    defense = plugin(tmp_path, "text_defense", """
        from benchmark.defended import ClassifierModel
        from benchmark.train import TRAIN_DEFAULTS, fit

        @register_defense("sub-backdoor-text", modality="text", backdoor=True)
        class Text:
            defaults = dict(TRAIN_DEFAULTS)
            def build(self, task, model_spec, config, context):
                module = context.build_model(model_spec, task)
                fit(module, task.train.xs, task.train.ys, epochs=config["epochs"],
                    batch_size=config["batch_size"], lr=config["lr"], seed=context.seed)
                return ClassifierModel(module.eval(), task.num_classes)
        """)
    path = submit(defense, str(suite), "text-entry", out_dir=tmp_path / "subs")
    passed, report = verify(path, plugin_file=defense, suite_file=suite)
    assert passed, report
    assert "badnets" in report and "| 40/40 " in report

    def raise_benign(forged):
        table = next(t for t in forged["results"]["tables"] if t.get("kind") == "backdoor")
        row = table["rows"][0]
        metric = row["metrics"]["benign_accuracy"]
        assert metric["successes"] < metric["n"]
        metric.update(rate(metric["successes"] + 1, metric["n"]).to_dict())
        forged["results"]["outcome_hashes"][row["cell_id"]][0] = "0" * 16
    passed, report = verify(forge(path, tmp_path, "benign", raise_benign), plugin_file=defense,
                            suite_file=suite)
    assert not passed and "badnets: 1 of 40 re-run examples have another outcome" in report
    assert "submitted metrics differ from the re-run's: benign_accuracy" in report


def test_a_cell_whose_attack_does_not_apply_is_submitted_as_not_run_and_verified(env, tmp_path):
    """AutoAttack's rand version does not apply to a deterministic defense: the submission is
    written with that cell not run and its reason, verify checks it still does not run, and an
    edited reason (its hash recomputed) is refused."""
    env.write_text(SUITE + '[attacks.autoattack-rand]\nattack = "autoattack"\n'
                   'params = { version = "rand", eps = 0.1 }\n')
    assert main(["submit", str(EXAMPLE), "--suite", str(env), "--name", "noise"]) == 0
    path = tmp_path / "leaderboards" / "submit-test" / "submissions" / "noise.json"
    entry = json.loads(path.read_text())
    [skipped] = entry["results"]["not_run"]
    assert skipped["attack"] == "autoattack-rand" and "deterministic" in skipped["reason"]
    passed, report = verify(path, suite_file=env)
    assert passed, report
    skipped["reason"] = "needs a GPU"
    entry["results_sha256"] = results_hash(entry["results"])
    path.write_text(json.dumps(entry))
    passed, report = verify(path, suite_file=env)
    assert not passed and "submitted as not run (needs a GPU), now not run because" in report
