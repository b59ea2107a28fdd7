"""The Ray executor gives the local executor's per-example outcomes, trains each model once, and an
interrupted run on either executor is finished by the other without losing a committed batch.

Runs on a local Ray instance with 2 CPUs; skipped (with the reason) where `ray` is not installed.
"""
import os
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import UsageError
from benchmark.evaluate import run_suite
from benchmark.registry import load_plugin_file
from benchmark.specs import ModelSpec
from benchmark.store import Store
from benchmark.suite import load_suite

FIXTURES = Path(__file__).parent / "fixtures"
SUITE = FIXTURES / "executor.toml"
N_BATCHES = 16  # digits: 3 cells x 4 batches; toy-sentiment: 2 cells x 2 batches
COLUMNS = ("cell_id, example_index, batch_index, label, clean_prediction, adversarial_prediction, "
           "success, queries, perturbation, certified, radius, abstained, p_lower, adversarial_text, "
           "extra")


def outcomes(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute(f"SELECT {COLUMNS} FROM outcomes ORDER BY cell_id, example_index").fetchall()


def batch_count(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT count(*) FROM batches").fetchone()[0]


class StopAfter(Store):
    """A store whose run is interrupted (as by Ctrl-C) when it is about to commit batch n + 1."""

    def __init__(self, path, n: int):
        super().__init__(path)
        self.left = n

    def write_batch(self, cell_id, batch_index, outcomes, seconds=None):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        super().write_batch(cell_id, batch_index, outcomes, seconds)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the Ray executor tests need `ray` (pip install 'rbench[ray]')")
    directory = tmp_path_factory.mktemp("executor")
    # Set before the instance starts, so its workers inherit it.
    os.environ["COUNTING_TRAIN_LOG"] = str(directory / "trainings.log")
    load_plugin_file(FIXTURES / "counting_defense.py")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield directory
    ray.shutdown()


@pytest.fixture(scope="module")
def both_runs(cluster):
    """The suite on Ray with an empty model cache, then locally with the cache Ray filled."""
    from benchmark.ray_executor import run_suite_ray

    suite, cache = load_suite(str(SUITE)), cluster / "cache"
    ray_store, local_store = cluster / "ray.sqlite", cluster / "local.sqlite"
    assert run_suite_ray(suite, Store(ray_store), cache) == {"done": 5}
    trainings_after_ray = (cluster / "trainings.log").read_text().split()
    assert run_suite(suite, Store(local_store), cache) == {"done": 5}
    trainings = (cluster / "trainings.log").read_text().split()
    return ray_store, local_store, trainings_after_ray, trainings, suite, cache


def test_ray_outcomes_equal_local_outcomes(both_runs):
    ray_store, local_store, *_ = both_runs
    expected = outcomes(local_store)
    assert len(expected) == 3 * 40 + 2 * 10
    assert any(row[13] for row in expected)  # DeepWordBug wrote adversarial texts: random edits
    assert outcomes(ray_store) == expected
    manifest = Store(ray_store).runs("executor")[-1]["manifest"]
    assert manifest["executor"] == "ray" and manifest["ray_resources"]["CPU"] == 2


def test_each_model_is_trained_once(both_runs):
    _, _, trainings_after_ray, trainings, *_ = both_runs
    # Two build keys (digits and toy-sentiment models), each trained once on Ray, for five cells
    # and sixteen batches; the local run reused what the Ray run cached.
    assert len(trainings_after_ray) == 2 and len(set(trainings_after_ray)) == 2
    assert trainings == trainings_after_ray


def test_interrupted_ray_run_resumes_locally(both_runs, tmp_path):
    from benchmark.ray_executor import run_suite_ray

    _, local_store, _, _, suite, cache = both_runs
    store = tmp_path / "store.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_suite_ray(suite, StopAfter(store, 5), cache)
    assert batch_count(store) == 5
    assert run_suite(suite, Store(store), cache) == {"done": 5}
    assert batch_count(store) == N_BATCHES
    assert outcomes(store) == outcomes(local_store)


def test_interrupted_local_run_resumes_on_ray(both_runs, tmp_path):
    from benchmark.ray_executor import run_suite_ray

    _, local_store, _, _, suite, cache = both_runs
    store = tmp_path / "store.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, StopAfter(store, 6), cache)
    assert batch_count(store) == 6
    assert run_suite_ray(suite, Store(store), cache) == {"done": 5}
    assert batch_count(store) == N_BATCHES
    assert outcomes(store) == outcomes(local_store)


def test_a_failing_cell_is_recorded_and_the_others_finish(cluster, tmp_path):
    from benchmark.ray_executor import run_suite_ray

    suite = load_suite(str(SUITE))
    # A model that cannot be built fails its build unit, and so every cell that needs it.
    bad_model = ModelSpec.make("smallcnn", {"no_such_param": 1})
    suite.cells = [replace(c, model=bad_model) if c.task_label == "digits" else c for c in suite.cells]
    store = Store(tmp_path / "store.sqlite")
    assert run_suite_ray(suite, store, cluster / "cache") == {"done": 2, "failed": 3}
    failed = store.cells(suite.name, "failed")
    assert {c.task for c in failed} == {"digits"}
    assert all("no_such_param" in c.reason for c in failed)


BACKDOOR_SUITE = """
name = "executor-backdoor"
seed = 1
[protocol]
n_examples = 20
batch_size = 10
[tasks.toy-sentiment]
params = { n_train = 300, n_test = 60 }
model = "textcnn"
model_params = { embedding_dim = 16, filters = 16 }
train = { epochs = 2 }
[defenses.none]
defense = "vanilla"
cells = ["backdoor"]
[poisoners.badnets]
params = { rate = 0.2, target_label = 1 }
[poisoners.synbkd]
params = { rate = 0.1, target_label = 1 }
"""


def test_backdoor_cells_run_on_ray_as_locally(cluster, tmp_path):
    from benchmark.ray_executor import run_suite_ray

    (tmp_path / "suite.toml").write_text(BACKDOOR_SUITE)
    suite = load_suite(str(tmp_path / "suite.toml"))
    ray_store, local_store = tmp_path / "ray.sqlite", tmp_path / "local.sqlite"
    # SynBkd without a paraphrase model is not run, on either executor, for the same reason.
    assert run_suite_ray(suite, Store(ray_store), tmp_path / "ray-cache") == {"done": 1, "not_run": 1}
    assert run_suite(suite, Store(local_store), tmp_path / "local-cache") == {"done": 1, "not_run": 1}
    assert [(c.attack, c.reason) for c in Store(ray_store).cells(suite.name, "not_run")] == \
        [(c.attack, c.reason) for c in Store(local_store).cells(suite.name, "not_run")]
    expected = outcomes(local_store)
    assert len(expected) == 20 and any(row[13] for row in expected)  # triggered texts recorded
    assert outcomes(ray_store) == expected
    assert batch_count(ray_store) == 2


# --- without Ray: the suite's placement keys and the CLI's options --------------------------

def test_resources_are_placement_not_protocol(tmp_path):
    plain = load_suite(str(FIXTURES / "tiny.toml"))
    placed_file = tmp_path / "placed.toml"
    placed_file.write_text((FIXTURES / "tiny.toml").read_text().replace(
        '[tasks.digits]', '[resources]\nnum_gpus = 0.5\n\n[tasks.digits]\nresources = { num_gpus = 1 }'))
    placed = load_suite(str(placed_file))
    assert plain.resources["digits"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert placed.resources == {"digits": {"num_cpus": 1.0, "num_gpus": 1.0},
                                "toy-sentiment": {"num_cpus": 1.0, "num_gpus": 0.5}}
    # Placement never changes an outcome, so it never changes a cell's identity.
    assert [c.id for c in placed.cells] == [c.id for c in plain.cells]


@pytest.mark.parametrize("table, message", [
    ("[resources]\nnum_gpu = 1", "unknown parameter(s) num_gpu"),
    ("[resources]\nnum_cpus = -1", "must be >= 0"),
    ("[resources]\nnum_gpus = 'one'", "expected float"),
])
def test_bad_resources_are_usage_errors(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text((FIXTURES / "tiny.toml").read_text().replace("[tasks.digits]", f"{table}\n\n[tasks.digits]"))
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_suite(str(path))


def test_ray_options_need_the_ray_executor(capsys):
    assert main(["run", str(FIXTURES / "tiny.toml"), "--address", "auto"]) == 2
    assert "--executor ray" in capsys.readouterr().err


def test_missing_ray_is_a_usage_error(monkeypatch):
    from benchmark.ray_executor import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'rbench\[ray\]'"):
        import_ray()
