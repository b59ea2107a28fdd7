"""A run killed with SIGKILL part-way and started again ends with the same per-example outcomes as
an uninterrupted run, and recomputes none of the examples whose batch had been committed."""
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
N_EXAMPLES = 60  # resume.toml: 6 batches of 10 per cell
COLUMNS = "cell_id, example_index, label, clean_prediction, adversarial_prediction, success, perturbation"


def start_run(store: Path, cache: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RBENCH_CACHE": str(cache), "COUNTING_ATTACK_LOG": str(log)}
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "--plugin", str(FIXTURES / "counting_attack.py"),
         "run", str(FIXTURES / "resume.toml"), "--store", str(store)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def committed_batches(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM batches").fetchone()[0]


def outcomes(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute(f"SELECT {COLUMNS} FROM outcomes ORDER BY cell_id, example_index").fetchall()


def attacked_examples(store: Path) -> set:
    with sqlite3.connect(store) as db:
        cell = db.execute("SELECT cell_id FROM cells WHERE attack IS NOT NULL").fetchone()
        return {row[0] for row in db.execute(
            "SELECT example_index FROM outcomes WHERE cell_id = ?", cell)} if cell else set()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    process = start_run(directory / "store.sqlite", directory / "cache", directory / "log")
    assert process.wait(timeout=300) == 0
    return outcomes(directory / "store.sqlite")


# Kill points: while the model trains (before any batch), in the clean cell, in the attack cell.
@pytest.mark.parametrize("kill_after_batches", [0, 3, 8])
def test_killed_run_resumes_to_identical_outcomes(tmp_path, reference, kill_after_batches):
    store, cache, log = tmp_path / "store.sqlite", tmp_path / "cache", tmp_path / "log"
    process = start_run(store, cache, log)
    deadline = time.time() + 120
    if kill_after_batches == 0:
        while not store.exists() and time.time() < deadline:
            time.sleep(0.05)
    else:
        while committed_batches(store) < kill_after_batches and time.time() < deadline:
            time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = attacked_examples(store) if store.exists() else set()
    attacked_before = collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()

    resumed = start_run(store, cache, log)
    assert resumed.wait(timeout=300) == 0
    assert outcomes(store) == reference

    # Each committed example was attacked exactly once over both runs: the resume skipped it.
    attacked_total = collections.Counter(log.read_text().split())
    assert sum(attacked_total.values()) >= N_EXAMPLES
    if finished_before:
        recomputed = sum(attacked_total.values()) - N_EXAMPLES
        in_flight = sum(attacked_before.values()) - len(finished_before)
        assert recomputed == in_flight  # only the batch that was running when killed is redone
