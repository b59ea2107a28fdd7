"""`make perf`: what the suite's work costs, for fixed seeds and inputs, in one table.

- forward: each mini model's raw batched forward passes (examples/s) next to the evaluator's
  examples/s on the same examples: a clean cell end to end (model look-up, predictions, store
  writes; a process loads each model once and the first cell of a model pays for it), and its
  batch loop alone; the three are timed in turn (interleaved), so the machine's load reaches all
  alike. Where the evaluator's overhead
  exceeds 10%, a cell is profiled (cProfile) and the shares of its time are printed and kept
  (cProfile's own cost inflates code of many small Python calls, such as the store's row
  conversion, against the model's few large ones: read the shares as an upper bound).
- store: per-batch commits (the kill -9 guarantee) against one transaction per cell, per batch.
- attacks: PGD and AutoAttack (pyautoattack, custom APGD-CE + APGD-T) images/s, DeepWordBug
  queries/s; PGD and DeepWordBug also through the evaluator, for its overhead on an attack cell.
- certification: benchmarks/perf_certify.py, when present, is run as it is (see CERTIFY_HOOK).
- ray: a small suite on the local executor and on a local Ray instance with 1 and 2 CPUs (one unit
  per CPU), and the speed-up; skipped, with the reason, where `ray` is not installed.

Results go to benchmarks/results/perf.json (committed), and a run prints the previous file's
numbers beside its own. Timings are wall-clock on whatever else the machine is doing: the JSON
records the load average. Nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import itertools
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the tables (nor in Ray workers)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmark.data import load_task
from benchmark.evaluate import (batch_seed, build_defended, cell_batches, default_device,
                                make_attack, run_batch, run_cell, run_suite)
from benchmark.paths import default_cache_dir
from benchmark.store import OUTCOME_COLUMNS, Store, _sql_value
from benchmark.suite import load_suite
from benchmark.train import set_seed

HERE = Path(__file__).resolve().parent
SUITE = HERE / "perf.toml"
RAY_SUITE = HERE / "perf_ray.toml"  # the Ray section's units worth distributing
RESULTS = HERE / "results" / "perf.json"
# The certification harness is another script; it is run as-is, with RBENCH_PERF_JSON naming a
# file where it may write {"rows": [{"section", "name", "unit", "values": {...}, "ratio"}]}; its
# printed table is shown, and its rows join this file's.
CERTIFY_HOOK = HERE / "perf_certify.py"
MIN_SECONDS = 1.0  # a timing repeats its work until at least this long has passed
OVERHEAD_LIMIT = 0.10
ALL = 10**9  # n_examples meaning "every test example"


def timed(work, setup=None, min_seconds: float = MIN_SECONDS,
          min_calls: int = 3) -> tuple[float, object]:
    """The fastest call of `work()` (with an untimed `setup()` before each call, whose result it
    gets) over at least `min_calls` calls and `min_seconds`, and the last call's result. The
    fastest call is the one least disturbed by whatever else the machine runs."""
    times, result = [], None
    while len(times) < min_calls or sum(times) < min_seconds:
        state = setup() if setup else None
        start = time.perf_counter()
        result = work(state) if setup else work()
        times.append(time.perf_counter() - start)
    return min(times), result


def interleaved(works, calls: int = 15) -> list[float]:
    """The fastest call of each `(work, setup)` of `works` (`work(setup())`, the setup untimed; a
    setup of None: `work()`), called in turn, so that a change in the machine's load reaches them
    all alike."""
    best = [float("inf")] * len(works)
    for _ in range(calls):
        for k, (work, setup) in enumerate(works):
            state = setup() if setup else None
            start = time.perf_counter()
            work(state) if setup else work()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


class Evaluator:
    """Runs single cells through the evaluator, each into a fresh store (store creation untimed).
    The store gets its run record first, as `rbench run` writes it before any cell: a new store's
    first write sets up its write-ahead log (~8 ms), a cost of the run, not of each cell."""

    def __init__(self, directory: Path, cache: Path):
        self.directory, self.cache, self.runs = directory, cache, 0

    def fresh_store(self) -> Store:
        self.runs += 1
        store = Store(self.directory / f"evaluator-{self.runs}.sqlite")
        store.add_run("perf", "", {})
        return store

    def seconds(self, cell, task, min_calls: int = 3) -> float:
        work, setup = self.cell_run(cell, task)
        seconds, _ = timed(work, setup=setup, min_calls=min_calls)
        return seconds

    def cell_run(self, cell, task):
        """(work, setup) of a whole cell through the evaluator, into a fresh store."""
        return lambda store: run_cell(cell, "perf", store, task, self.cache), self.fresh_store

    def batch_loop(self, cell, task, defended):
        """(work, setup) of the evaluator's loop alone (evaluate and commit each batch), the model
        already built."""
        batches = cell_batches(cell, task)

        def setup():
            store = self.fresh_store()
            store.open_cell("perf", cell, len(batches), "perf", None)
            return store

        def work(store):
            for index in range(len(batches)):
                store.write_batch(cell.id, index, run_batch(cell, defended, None, task, batches, index))

        return work, setup

    def profile(self, cell, task, runs: int = 5) -> dict:
        """Where a clean cell's time goes: shares of the cell's wall time by part of the evaluator
        (cumulative time of the functions named), and the functions with the most own time."""
        profiler = cProfile.Profile()
        for _ in range(runs):
            profiler.runcall(run_cell, cell, "perf", self.fresh_store(), task, self.cache)
        stats = pstats.Stats(profiler).stats

        def cumulative(*names) -> float:
            return sum(ct for (file, _, name), (_, _, _, ct, _) in stats.items()
                       if (Path(file).name, name) in names)

        total = cumulative(("evaluate.py", "run_cell"))
        parts = {
            "model forward (predict)": cumulative(("defended.py", "predict")),
            "model load (build_defended)": cumulative(("evaluate.py", "build_defended")),
            "store (SQLite)": cumulative(*[("store.py", n) for n in (
                "open_cell", "cell_status", "done_batches", "write_batch", "finish_cell")]),
            "seeding each batch (set_seed)": sum(
                caller_ct for (file, _, name), (*_, callers) in stats.items()
                if (Path(file).name, name) == ("train.py", "set_seed")
                for (caller_file, _, caller), (_, _, _, caller_ct) in callers.items()
                if caller == "evaluate_batch"),
        }
        parts["other (checks, rows, attack set-up)"] = total - sum(parts.values())
        top = sorted(stats.items(), key=lambda item: -item[1][2])[:6]
        return {"cell_ms": round(1000 * total / runs, 2),
                "shares": {k: round(v / total, 3) for k, v in parts.items()},
                "top_own_time": [f"{Path(f).name}:{line}({name}) {1000 * tt / runs:.1f} ms"
                                 for (f, line, name), (_, _, tt, _, _) in top]}


def with_examples(cell, n: int, batch_size: int):
    return replace(cell, protocol=replace(cell.protocol, n_examples=n, batch_size=batch_size))


def row(section, name, unit, values: dict, ratio=None, **extra) -> dict:
    return {"section": section, "name": name, "unit": unit,
            "values": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()},
            "ratio": None if ratio is None else round(ratio, 4), **extra}


def forward_rows(cells, tasks, evaluator: Evaluator) -> list[dict]:
    rows = []
    for label in ("digits", "ctoy", "toy-sentiment"):
        cell = with_examples(cells[(label, None)], ALL, 100)
        task = tasks[label]
        defended = build_defended(cell, task, evaluator.cache)
        module = defended.module
        inputs = [task.test.inputs(batch) for batch in cell_batches(cell, task)]
        n = sum(len(x) for x in inputs)

        @torch.no_grad()
        def forward():
            for x in inputs:
                logits = module.classify(x) if isinstance(x, list) else module(torch.as_tensor(x))
                logits.argmax(dim=1).numpy()

        # A process builds (or loads) a model once and every cell of it shares it: the cell timed
        # here finds it built, as every cell but a model's first does in a suite.
        raw, evaluated, looped = interleaved([(forward, None), evaluator.cell_run(cell, task),
                                              evaluator.batch_loop(cell, task, defended)])
        extra = {"overhead": round(evaluated / raw - 1, 4),
                 "overhead_batches_only": round(looped / raw - 1, 4), "examples": n}
        if evaluated / raw - 1 > OVERHEAD_LIMIT:
            extra["profile"] = evaluator.profile(cell, task)
        rows.append(row("forward", f"{label} / {cell.model.name}", "examples/s",
                        {"direct": n / raw, "evaluator": n / evaluated,
                         "evaluator, batches only": n / looped}, raw / evaluated, **extra))
    return rows


def store_rows(cells, tasks, evaluator: Evaluator) -> list[dict]:
    """The price of the kill -9 guarantee: a digits clean cell's outcomes committed one transaction
    per batch (what the evaluator does: a kill loses at most the batch being computed) against all
    of its batches in one transaction (a kill would lose the whole cell), beside the batches'
    compute. Batches of 20 and 100 examples."""
    rows = []
    task = tasks["digits"]
    for size in (20, 100):
        cell = with_examples(cells[("digits", None)], ALL, size)
        defended = build_defended(cell, task, evaluator.cache)
        batches = cell_batches(cell, task)
        compute, outcomes = timed(lambda: [run_batch(cell, defended, None, task, batches, index)
                                           for index in range(len(batches))])

        def setup():
            store = evaluator.fresh_store()
            store.open_cell("perf", cell, len(batches), "perf", None)
            return store

        def per_batch(store):
            for index, batch_rows in enumerate(outcomes):
                store.write_batch(cell.id, index, batch_rows)

        def one_transaction(store):
            cell_id = cell.id
            store.db.execute("BEGIN IMMEDIATE")
            for index, batch_rows in enumerate(outcomes):
                store.db.executemany(
                    f"INSERT INTO outcomes (cell_id, batch_index, {', '.join(OUTCOME_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * (len(OUTCOME_COLUMNS) + 2))})",
                    [(cell_id, index, *(_sql_value(o.get(c)) for c in OUTCOME_COLUMNS))
                     for o in batch_rows])
                store.db.execute("INSERT INTO batches (cell_id, batch_index) VALUES (?, ?)",
                                 (cell_id, index))
            store.db.execute("COMMIT")

        separate, together = interleaved([(per_batch, setup), (one_transaction, setup)])
        n = len(batches)
        rows.append(row("store", f"digits clean cell, {n} batches of {size}", "ms a batch",
                        {"compute": 1000 * compute / n, "commit per batch": 1000 * separate / n,
                         "one transaction": 1000 * together / n}, together / separate,
                        commit_share_of_batch=round(separate / (compute + separate), 4),
                        note="ratio: one transaction's time over per-batch commits'; "
                             "commit_share_of_batch: what per-batch commits add to a batch"))
    return rows


def attack_direct(cell, task, defended) -> tuple[float, list]:
    """Seconds for the cell's attack on its batches, seeded as the evaluator seeds them."""
    attack = make_attack(cell)
    batches = cell_batches(cell, task)

    def work():
        outcomes = []
        for index, batch in enumerate(batches):
            seed = batch_seed(cell.protocol.seed, cell.id, index)
            set_seed(seed)
            outcomes += attack.run(defended, task.test.inputs(batch), task.test.ys[batch], seed)
        return outcomes

    return timed(work, min_calls=1)


def attack_rows(cells, tasks, evaluator: Evaluator) -> list[dict]:
    rows = []
    cell = with_examples(cells[("digits", "pgd-linf")], 200, 100)
    task = tasks["digits"]
    defended = build_defended(cell, task, evaluator.cache)
    attack_direct(with_examples(cell, 10, 10), task, defended)  # warm-up, untimed
    seconds, _ = attack_direct(cell, task, defended)
    evaluated = evaluator.seconds(cell, task, min_calls=1)
    rows.append(row("attacks", "PGD-20 l-inf, digits / smallcnn", "images/s",
                    {"direct": 200 / seconds, "evaluator": 200 / evaluated}, seconds / evaluated,
                    examples=200))
    rows.append(autoattack_row(defended, task, cell))

    cell = with_examples(cells[("toy-sentiment", "deepwordbug")], 40, 20)
    task = tasks["toy-sentiment"]
    defended = build_defended(cell, task, evaluator.cache)
    attack_direct(with_examples(cell, 1, 1), task, defended)  # TextAttack's import (~9 s) untimed
    seconds, outcomes = attack_direct(cell, task, defended)
    queries = sum(o.queries for o in outcomes)
    evaluated = evaluator.seconds(cell, task, min_calls=1)
    rows.append(row("attacks", "DeepWordBug, toy-sentiment / textcnn", "queries/s",
                    {"direct": queries / seconds, "evaluator": queries / evaluated},
                    seconds / evaluated, examples=40, queries=queries,
                    examples_per_s=round(40 / seconds, 3)))
    return rows


def autoattack_row(defended, task, cell, n: int = 64) -> dict:
    from pyautoattack import AutoAttack

    from attacks.vision.common import DefendedLogits

    eps = cell.attack.params["eps"]
    xs = torch.as_tensor(task.test.inputs(cell_batches(cell, task)[0][:n]))
    ys = torch.as_tensor(task.test.ys[cell_batches(cell, task)[0][:n]])

    def work():
        attack = AutoAttack(DefendedLogits(defended), norm="Linf", eps=eps, version="custom",
                            attacks=["apgd-ce", "apgd-t"], device="cpu", seed=0)
        attack.apgd.n_restarts = 1  # the standard version's APGD settings, as in AutoAttack's paper
        attack.apgd_targeted.n_target_classes = 9
        with contextlib.redirect_stdout(io.StringIO()):
            adversarial, _ = attack.run_standard_evaluation(xs, ys, batch_size=n)
        with torch.no_grad():
            return float((defended.logits(adversarial).argmax(1) == ys).float().mean())

    seconds, robust = timed(work, min_seconds=0, min_calls=1)
    return row("attacks", "AutoAttack APGD-CE + APGD-T (100 it.), digits / smallcnn", "images/s",
               {"direct": n / seconds}, examples=n, robust_accuracy=round(robust, 3))


def certify_rows() -> list[dict]:
    if not CERTIFY_HOOK.exists():
        print(f"(certification: {CERTIFY_HOOK.name} is not in this checkout yet; when it is, "
              f"`make perf` runs it here)")
        return []
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "certify.json"
        completed = subprocess.run([sys.executable, str(CERTIFY_HOOK)],
                                   env={**os.environ, "RBENCH_PERF_JSON": str(out)})
        if completed.returncode != 0:
            return [row("certification", CERTIFY_HOOK.name, "exit status",
                        {"returncode": completed.returncode})]
        return json.loads(out.read_text()).get("rows", []) if out.exists() else []


def ray_rows(suite, cache: Path, directory: Path) -> list[dict]:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("(ray: not installed, so no Ray timings; pip install 'rbench[ray]')")
        return []

    def sized(cell):
        return with_examples(cell, ALL, 60) if cell.task_label == "digits" else with_examples(cell, 20, 10)

    small = replace(suite, cells=[sized(c) for c in suite.cells if c.task_label != "ctoy"])
    return (ray_workload_rows(small, "digits + toy-sentiment", cache, directory)
            + ray_workload_rows(load_suite(str(RAY_SUITE)), "RanMASK certification", cache, directory))


def ray_workload_rows(suite, label: str, cache: Path, directory: Path) -> list[dict]:
    """The suite locally and on a local Ray instance of 1 and 2 CPUs, cold (workers start and
    import) and warm (the same again on the started workers), and where Ray starts to pay.

    With N units of u seconds each (the local run's time per unit), o seconds of Ray overhead per
    unit (warm 1-CPU run minus local, per unit) and a cold start of C seconds (cold minus warm run
    on 1 CPU, plus ray.init), W workers finish sooner than one local process once
    N / W > C / ((W - 1) u - o) (warm: C = 0, so whenever (W - 1) u > o). The break-even printed is
    that N / W for W = 2, from the 1-CPU runs; the measured 2-CPU speed-ups are beside it (on a
    shared machine two CPUs are rarely both free)."""
    import ray

    from benchmark.ray_executor import run_suite_ray

    units = sum(len(cell_batches(c, load_task(c.task, suite.data_root))) for c in suite.cells)
    builds = len({c.defense for c in suite.cells})
    name = f"{label}: {len(suite.cells)} cells, {units} batches"
    run_suite(suite, Store(directory / f"run-{next(_runs)}.sqlite"), cache)  # train, untimed
    local = _run_seconds(lambda s: run_suite(suite, s, cache), directory)
    seconds = {}
    for cpus in (1, 2):
        start = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="warning")
        seconds[f"init_{cpus}"] = time.perf_counter() - start
        try:  # cold: workers start and import; warm: the same again on the started workers
            for run in ("cold", "warm"):
                seconds[f"{run}_{cpus}"] = _run_seconds(lambda s: run_suite_ray(suite, s, cache),
                                                        directory)
        finally:
            ray.shutdown()
    per_unit = local / units
    overhead = (seconds["warm_1"] - local) / (units + builds)
    cold_start = seconds["cold_1"] - seconds["warm_1"] + seconds["init_1"]
    gain = per_unit - overhead  # (W - 1) u - o for W = 2
    break_even = round(cold_start / gain, 1) if gain > 0 else "never"
    note = ("wall seconds; ratio: speed-up of 2 CPUs (two units at once) over 1; cold includes "
            "worker start-up and imports (TextAttack's ~9 s in each worker), not ray.init")
    common = {"unit_s": round(per_unit, 4), "ray_overhead_per_unit_s": round(overhead, 4),
              "cold_start_s": round(cold_start, 2),
              "break_even_units_per_worker_2_workers_cold": break_even,
              "pays_warm_with_2_workers": gain > 0,
              "speedup_2_cpus_over_local": {"warm": round(local / seconds["warm_2"], 3),
                                            "cold": round(local / seconds["cold_2"], 3)}}
    return [row("ray", f"{name}, warm", "s", {"local": local, "1 cpu": seconds["warm_1"],
                                               "2 cpus": seconds["warm_2"]},
                seconds["warm_1"] / seconds["warm_2"], note=note, **common),
            row("ray", f"{name}, cold", "s", {"local": local, "1 cpu": seconds["cold_1"],
                                               "2 cpus": seconds["cold_2"]},
                seconds["cold_1"] / seconds["cold_2"],
                ray_init_s=[round(seconds["init_1"], 2), round(seconds["init_2"], 2)], **common)]


_runs = itertools.count()


def _run_seconds(run, directory: Path) -> float:
    store = Store(directory / f"run-{next(_runs)}.sqlite")
    start = time.perf_counter()
    counts = run(store)
    assert set(counts) == {"done"}, counts
    return time.perf_counter() - start


def previous_values() -> dict:
    if not RESULTS.exists():
        return {}
    old = json.loads(RESULTS.read_text())
    return {(r["section"], r["name"]): r for r in old.get("rows", [])}


def print_table(rows: list[dict], previous: dict) -> None:
    for section in dict.fromkeys(r["section"] for r in rows):
        members = [r for r in rows if r["section"] == section]
        keys = list(dict.fromkeys(k for r in members for k in r["values"]))
        table = []
        for r in members:
            old = previous.get((section, r["name"]))
            table.append([r["name"], r["unit"], *[_fmt(r["values"].get(k)) for k in keys],
                          _fmt(r["ratio"]), _fmt(old["ratio"]) if old else "",
                          " ".join(_fmt(old["values"].get(k)) for k in keys) if old else ""])
        ratio = {"forward": "evaluator/direct", "attacks": "evaluator/direct",
                 "store": "one txn/per batch", "ray": "speed-up"}.get(section, "ratio")
        print(f"\n## {section}\n")
        print(tabulate(table, headers=["measurement", "unit", *keys, ratio, "prev ratio",
                                       "prev values"], tablefmt="github"))
        for r in members:
            if r["section"] == "ray" and r["name"].endswith(", cold"):
                print(f"\n{r['name'][:-len(', cold')]}: {r['unit_s']} s a unit locally, Ray adds "
                      f"{r['ray_overhead_per_unit_s']} s a unit, cold start {r['cold_start_s']} s; "
                      f"2 workers pay (cold) from {r['break_even_units_per_worker_2_workers_cold']} "
                      f"units per worker, warm: {'always' if r['pays_warm_with_2_workers'] else 'never'}; "
                      f"measured 2 CPUs / local: {r['speedup_2_cpus_over_local']}")
            if r.get("profile"):
                profile = r["profile"]
                shares = ", ".join(f"{k} {v:.0%}" for k, v in profile["shares"].items())
                print(f"\nevaluator overhead {r['overhead']:.0%} on {r['name']} "
                      f"({profile['cell_ms']:.0f} ms a cell): {shares}")


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["forward", "store", "attacks", "certification", "ray"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steady on a shared machine, and what one "
                             "Ray unit of 1 CPU gets)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    cache = default_cache_dir()
    suite = load_suite(str(SUITE))
    cells = {(c.task_label, c.attack_label): c for c in suite.cells}
    tasks = {label: load_task(cell.task) for (label, _), cell in cells.items()}
    previous = previous_values()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        evaluator = Evaluator(directory, cache)
        # Train (or load) every model first, so no timing includes training.
        for (label, attack), cell in cells.items():
            if attack is None:
                build_defended(cell, tasks[label], cache)
        if "forward" not in args.skip:
            rows += forward_rows(cells, tasks, evaluator)
        if "store" not in args.skip:
            rows += store_rows(cells, tasks, evaluator)
        if "attacks" not in args.skip:
            rows += attack_rows(cells, tasks, evaluator)
        if "certification" not in args.skip:
            rows += certify_rows()
        if "ray" not in args.skip:
            rows += ray_rows(suite, cache, directory)
    result = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1m": round(os.getloadavg()[0], 2),
                    "device": str(default_device())},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    print_table(rows, previous)
    print(f"\n{result['seconds']:.0f} s; load average {result['machine']['load_average_1m']} on "
          f"{os.cpu_count()} cores; wrote {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
