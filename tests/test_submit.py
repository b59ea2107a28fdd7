"""Submitting a defense: contract errors, then the README's workflow end to end on a small suite:
the worked example submits, merges into the leaderboard (tables and site), and verifies; edited
numbers, edited results and an edited plugin file are all caught."""
import json
import textwrap

import pytest
import torch

from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.paths import REPO_ROOT
from benchmark.submit import load_defense_plugin, results_hash, submit, verify

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
    """A scratch cache and results directory, one torch thread (tiny models), the test suite."""
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RBENCH_RESULTS", str(tmp_path / "results"))
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


def test_submit_merge_and_verify(env, tmp_path, capsys):
    board_dir = tmp_path / "board"
    submissions = board_dir / "submissions"
    assert main(["submit", str(EXAMPLE), "--suite", str(env), "--name", "noise-0.1",
                 "--out", str(submissions)]) == 0
    path = submissions / "noise-0.1.json"
    entry = json.loads(path.read_text())
    assert entry["plugin"] == {"file": "examples/my_defense.py", "sha256": entry["plugin"]["sha256"]}
    assert entry["results_sha256"] == results_hash(entry["results"])
    assert entry["defense"]["name"] == "gaussian-augment"
    assert entry["defense"]["config"]["digits"]["sigma"] == 0.1
    assert entry["defense"]["config"]["digits"]["epochs"] == 3  # the suite's training settings
    assert {"git_commit", "packages", "data", "suite_sha256"} <= set(entry["manifest"])
    tables = {t["threat_id"]: t for t in entry["results"]["tables"]}
    assert set(tables) == {"clean", "fgsm-78dc3839"}
    fgsm = tables["fgsm-78dc3839"]["rows"][0]
    assert fgsm["defense"] == "noise-0.1" and fgsm["metrics"]["robust_accuracy"]["n"] == 120

    # The suite's own run, then the leaderboard with the submission merged in.
    assert main(["run", str(env)]) == 0
    assert main(["leaderboard", str(env), "--out", str(board_dir), "--html"]) == 0
    board = json.loads((board_dir / "leaderboard.json").read_text())
    rows = {r["defense"]: r for t in board["tables"] if t["threat_id"] == "fgsm-78dc3839"
            for r in t["rows"]}
    assert set(rows) == {"vanilla", "noise-0.1"} and rows["noise-0.1"]["submission"] == "noise-0.1"
    assert "noise-0.1 (submission)" in (board_dir / "leaderboard.md").read_text()
    assert 'href="submissions/noise-0.1.json"' in (board_dir / "digits--fgsm-78dc3839.html").read_text()

    # Verify: hashes, then a seeded subsample re-run agrees with the submitted numbers.
    capsys.readouterr()
    assert main(["verify", str(path), "--examples", "40"]) == 0
    report = capsys.readouterr().out
    assert "results hash: ok" in report and "plugin hash: ok" in report and "verified" in report
    assert report.count("| ok ") == 4  # clean accuracy; clean, robust accuracy, attack success under FGSM

    # Inflated numbers with a recomputed hash: the hash passes, the re-run does not.
    forged = json.loads(path.read_text())
    robust = forged["results"]["tables"][1]["rows"][0]["metrics"]["robust_accuracy"]
    robust.update(value=0.99, successes=int(0.99 * robust["n"]))
    forged["results_sha256"] = results_hash(forged["results"])
    forged_path = tmp_path / "forged.json"
    forged_path.write_text(json.dumps(forged))
    passed, report = verify(forged_path, examples=40)
    assert not passed and "robust_accuracy 99.0% lies outside the re-run's interval" in report

    # Edited numbers without a new hash: refused by verify and by the leaderboard.
    forged["results_sha256"] = entry["results_sha256"]
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
