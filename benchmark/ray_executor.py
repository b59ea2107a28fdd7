"""The Ray executor (`rbench run <suite> --executor ray [--address ...]`): the same cells, batches and
seeds as the local executor, handed to a Ray cluster as independent units of work.

Units: one *build* per distinct build-cache key (a trained model shared by every cell that uses it)
and one *batch* per (cell, batch index) still missing from the store. A batch runs the function the
local executor runs (`evaluate.run_batch`), seeded by (protocol seed, cell id, batch index) alone, so
where or in which order it runs cannot change its outcomes.

Who writes the store: the driver, alone. Workers return their batch's rows and the driver commits
each batch with its marker as soon as it arrives (the store's usual atomic write). Workers on other
machines have no safe way to write one SQLite file (WAL needs shared memory on one host, and the
store need not be on a shared file system), rows are small next to the work that makes them, and a
single writer keeps resumption exactly as the local executor has it: an interrupted Ray run keeps
every committed batch, and either executor finishes the rest.

Trained models: the driver computes each cell's cache key; each distinct key is built once, by one
build unit, and only then are its batches scheduled (other keys' batches run meanwhile). The build
returns the cache files it wrote; the driver keeps them in its own cache and puts them in Ray's
object store, from which a worker on a machine that lacks them fetches them once. No worker
retrains, and the cache needs no shared file system. Tasks (the data) travel the same way.

Backdoor cells: one *backdoor* unit per cell runs what the local executor runs
(`evaluate.backdoor_batch_rows`): it poisons the training split, trains the defense on it and
evaluates every missing batch, returning the rows of each; the driver commits them batch by batch.
Its poisoned data and model stay in that worker's cache (each (defense, poisoner) pair trains its
own model, so there is nothing to share between units).

Placement: each unit asks for the suite's `[resources]` (num_cpus, num_gpus; overridable per task),
runs torch with that many CPU threads, and uses a GPU only when Ray assigned it one.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections import OrderedDict, deque
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.errors import NotRun, UsageError
from benchmark.paths import default_cache_dir
from benchmark.specs import content_hash
from benchmark.store import Store
from benchmark.suite import Suite

# Offline switches travel to workers on other machines (a local instance inherits them anyway).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise UsageError("the Ray executor needs the `ray` package: pip install 'rbench[ray]' "
                         "(or pip install ray); the default --executor local needs nothing") from error
    return ray


# --- worker side: these run in Ray worker processes, which Ray reuses across units ---------------

# What a worker keeps between units, least recently used first: tasks by content (defended models
# are kept by evaluate.build_defended itself).
_tasks: OrderedDict = OrderedDict()
KEEP = 4
_plugins: set[str] = set()


def _kept(cache: OrderedDict, key: str, make):
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = make()
        while len(cache) > KEEP:
            cache.popitem(last=False)
    return cache[key]


def _setup(plugins: list[tuple[str, str]], num_cpus: float) -> None:
    """Load the driver's --plugin files (shipped as source) and size torch's thread pool."""
    import torch

    from benchmark.registry import load_plugin_file
    from benchmark.train import deterministic_torch

    torch.set_num_threads(max(1, int(num_cpus)))
    deterministic_torch()
    for name, source in plugins:
        if name not in _plugins:
            # Content-addressed, so every worker and every run reuses one copy.
            directory = Path(tempfile.gettempdir()) / "rbench-plugins" / content_hash(source)
            directory.mkdir(parents=True, exist_ok=True)
            write_files(directory, {name: source.encode()})
            load_plugin_file(directory / name)
            _plugins.add(name)


def _cache_dir(preferred: str) -> Path:
    """The driver's cache directory when this machine can use it, else a local one."""
    for path in (Path(preferred), Path(tempfile.gettempdir()) / "rbench-cache"):
        try:
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    raise OSError(f"no writable cache directory (tried {preferred})")


def key_files(cache_dir: Path, key: str) -> dict[str, Path]:
    """The finished cache files of one build key (BuildContext.path names them '<key>-<name>')."""
    return {p.name: p for p in Path(cache_dir).glob(f"{key}-*")
            if p.is_file() and ".partial" not in p.name}


def write_files(cache_dir: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = Path(cache_dir) / name
        if not path.exists():
            partial = path.with_name(f"{name}.partial{os.getpid()}")
            partial.write_bytes(data)
            os.replace(partial, path)


def _task(task_key: str, task_box: list):
    import ray

    return _kept(_tasks, task_key, lambda: ray.get(task_box[0]))


def _defended_model(cell, key: str, task, cache_dir: Path, names: list[str], artifacts_box: list):
    """The cell's defended model: this worker's copy, else built from the cache files of `key`
    (fetched from the object store when this machine lacks them). The copy is the one
    build_defended keeps, by key and the defense's whole configuration: entries sharing trained
    weights (RanMASK's vote and logit rows) may deploy them differently."""
    import ray
    import torch

    from benchmark.evaluate import build_defended

    # The GPU Ray assigned, else the CPU: Ray leaves every GPU visible to a unit that asked for
    # none, and such a unit must not use one behind the scheduler's back.
    device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")

    if artifacts_box and not all((cache_dir / name).exists() for name in names):
        write_files(cache_dir, ray.get(artifacts_box[0]))
    return build_defended(cell, task, cache_dir, device, key=key)


def _failure(error: Exception) -> dict:
    from benchmark.evaluate import failure_reason

    if isinstance(error, NotRun):  # unavailable here: recorded as not run, with the reason
        return {"error": str(error), "trace": None, "not_run": True}
    return {"error": failure_reason(error),
            "trace": None if isinstance(error, UsageError) else traceback.format_exc()}


def build_unit(cell, key: str, task_key: str, task_box: list, names: list[str],
               artifacts_box: list, cache_dir: str, plugins: list, num_cpus: float) -> dict:
    """Build (train, or load) the model of one cache key; returns the cache files it added."""
    try:
        _setup(plugins, num_cpus)
        cache = _cache_dir(cache_dir)
        started = time.perf_counter()
        _defended_model(cell, key, _task(task_key, task_box), cache, names, artifacts_box)
        return {"files": {name: path.read_bytes() for name, path in key_files(cache, key).items()
                          if name not in names}, "seconds": time.perf_counter() - started}
    except Exception as error:  # reported to the driver, which records the cell as failed
        return _failure(error)


def batch_unit(cell, key: str, task_key: str, task_box: list, names: list[str],
               artifacts_box: list, batch_index: int, cache_dir: str, plugins: list,
               num_cpus: float) -> dict:
    """Evaluate one batch of one cell; returns its rows."""
    from benchmark.evaluate import cell_batches, make_attack, prepare_attack, run_batch

    try:
        _setup(plugins, num_cpus)
        task = _task(task_key, task_box)
        defended = _defended_model(cell, key, task, _cache_dir(cache_dir), names, artifacts_box)
        attack = make_attack(cell) if cell.attack is not None else None
        if attack is not None:
            prepare_attack(attack, cell, task, _cache_dir(cache_dir))
        started = time.perf_counter()
        rows = run_batch(cell, defended, attack, task, cell_batches(cell, task), batch_index)
        return {"rows": rows, "seconds": time.perf_counter() - started}
    except Exception as error:
        return _failure(error)


def backdoor_unit(cell, task_key: str, task_box: list, todo: list[int], cache_dir: str,
                  plugins: list, num_cpus: float) -> dict:
    """Poison, train and evaluate the missing batches of one backdoor cell; returns their rows."""
    import ray
    import torch

    from benchmark.evaluate import backdoor_batch_rows, cell_batches, make_poisoner

    try:
        _setup(plugins, num_cpus)
        task = _task(task_key, task_box)
        device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")
        rows = backdoor_batch_rows(cell, make_poisoner(cell), task, cell_batches(cell, task), todo,
                                   _cache_dir(cache_dir), device)
        return {"batches": dict(rows)}
    except Exception as error:
        return _failure(error)


# --- driver side -----------------------------------------------------------------------------------

def loaded_plugins() -> list[tuple[str, str]]:
    """The --plugin files this process loaded, as (file name, source) for the workers."""
    plugins = []
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.startswith("rbench_plugin_") and path:
            plugins.append((Path(path).name, Path(path).read_text()))
    return plugins


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Connect to `address` (an existing cluster), or start a local instance with `num_cpus` CPUs.
    Returns whether this call connected (and so should disconnect). A caller that already
    initialised Ray keeps its own connection."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address and num_cpus:
        raise UsageError("--num-cpus sizes a local Ray instance; with --address the cluster has "
                         "its own resources: pass one or the other")
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    # Without an address, always a new private instance ("local"): Ray would otherwise join a
    # cluster named by RAY_ADDRESS or left running on this machine (`--address auto` does that).
    kwargs = {"address": address or "local", "include_dashboard": False if not address else None,
              "runtime_env": {"env_vars": env} if env else None, "logging_level": "warning"}
    if not address:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    except ConnectionError as error:
        raise UsageError(f"cannot reach a Ray cluster at {address!r} ({error}); start one with "
                         f"`ray start --head` or omit --address for a local instance") from error
    return True


def run_suite_ray(suite: Suite, store: Store, cache_dir: Path | None = None,
                  address: str | None = None, num_cpus: int | None = None) -> dict[str, int]:
    """Run every cell of the suite on Ray; returns a count of cells per final status."""
    ray = import_ray()
    connected = connect(address, num_cpus)
    try:
        return _Run(ray, suite, store, Path(cache_dir or default_cache_dir())).run()
    finally:
        if connected:
            ray.shutdown()


class _Run:
    def __init__(self, ray, suite: Suite, store: Store, cache_dir: Path):
        self.ray, self.suite, self.store, self.cache_dir = ray, suite, store, cache_dir
        self.plugins = loaded_plugins()
        self.stopped: dict[str, str] = {}  # cell id -> "failed" or "not_run"
        self.remaining: dict[str, set[int]] = {}

    def run(self) -> dict[str, int]:
        from benchmark.evaluate import (build_cache_key, open_backdoor_cell, open_cell, start_run,
                                         training_record)

        ray = self.ray
        tasks = start_run(self.suite, self.store, {
            "executor": "ray", "ray_version": ray.__version__,
            "ray_resources": ray.cluster_resources()})
        task_refs, task_keys, groups = {}, {}, {}
        cells, keys = {}, {}
        for cell in self.suite.cells:
            task = tasks[cell.task_label]
            cells[cell.id] = cell
            try:
                if cell.poison is not None:
                    _, _, todo = open_backdoor_cell(cell, self.suite.name, self.store, task)
                else:
                    _, _, todo = open_cell(cell, self.suite.name, self.store, task)
                    key = build_cache_key(cell, task)
            except Exception as error:
                self._fail(cell, error)
                continue
            if not todo:
                self.store.finish_cell(cell.id)
                continue
            self.remaining[cell.id] = set(todo)
            if cell.task_label not in task_refs:
                task_refs[cell.task_label] = ray.put(task)
                task_keys[cell.task_label] = f"{cell.task.hash}-{content_hash(task.checksums())}"
            if cell.poison is None:
                keys[cell.id] = key
                groups.setdefault(key, []).append(cell)

        remote_build = ray.remote(build_unit)
        remote_batch = ray.remote(batch_unit)
        remote_backdoor = ray.remote(backdoor_unit)
        artifacts = {}  # build key -> (names of its cache files, [object ref of their bytes])

        def submit_backdoor(cell):
            resources = self.suite.resources.get(cell.task_label, {})
            ref = remote_backdoor.options(**resources).remote(
                cell, task_keys[cell.task_label], [task_refs[cell.task_label]],
                sorted(self.remaining[cell.id]), str(self.cache_dir), self.plugins,
                resources.get("num_cpus", 1))
            return ref, ("backdoor", cell.id, None)

        def submit_build(key):
            first = groups[key][0]
            resources = self.suite.resources.get(first.task_label, {})
            have = {name: path.read_bytes() for name, path in key_files(self.cache_dir, key).items()}
            artifacts[key] = (sorted(have), [ray.put(have)] if have else [])
            ref = remote_build.options(**resources).remote(
                first, key, task_keys[first.task_label], [task_refs[first.task_label]],
                *artifacts[key], str(self.cache_dir), self.plugins, resources.get("num_cpus", 1))
            return ref, ("build", key, None)

        def submit_batch(cell, key, index):
            resources = self.suite.resources.get(cell.task_label, {})
            ref = remote_batch.options(**resources).remote(
                cell, key, task_keys[cell.task_label], [task_refs[cell.task_label]],
                *artifacts[key], index, str(self.cache_dir), self.plugins,
                resources.get("num_cpus", 1))
            return ref, ("batch", cell.id, index)

        # Units start in the suite's order (a built model's batches ahead of later builds), with no
        # more in flight than the cluster has CPUs: Ray does not keep submission order across unit
        # kinds, and a run cut short should have finished the suite's first cells, not started all.
        waiting = deque()
        started = set()
        for cell in self.suite.cells:
            if cell.id not in self.remaining:
                continue
            if cell.poison is not None:
                waiting.append(lambda cell=cell: submit_backdoor(cell))
            else:
                key = keys[cell.id]
                if key not in started:
                    started.add(key)
                    waiting.append(lambda key=key: submit_build(key))
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # object ref -> ("build", key, None), ("batch", cell id, batch index) or
        # ("backdoor", cell id, None)
        pending = {}
        counts: dict[str, int] = {}
        total = sum(len(todo) for todo in self.remaining.values())
        progress = tqdm(total=total, desc=f"suite {self.suite.name} (ray)", unit="batch")
        try:
            while waiting or pending:
                while waiting and len(pending) < slots:
                    ref, unit = waiting.popleft()()
                    pending[ref] = unit
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                kind, name, batch_index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as error:  # a lost worker or node: Ray has already retried
                    result = {"error": f"{type(error).__name__}: {error}", "trace": None}
                if kind == "build":
                    if "error" in result:
                        for cell in groups[name]:
                            self._fail(cell, result)
                        continue
                    self.store.add_build_seconds(groups[name][0].id, result["seconds"])
                    if result["files"]:  # the build trained something: share it from here on
                        write_files(self.cache_dir, result["files"])
                        files = {n: p.read_bytes()
                                 for n, p in key_files(self.cache_dir, name).items()}
                        artifacts[name] = (sorted(files), [ray.put(files)])
                    record = training_record(self.cache_dir, name)
                    for cell in groups[name] if record is not None else ():
                        self.store.add_training_record(cell.id, record)
                    batches = [lambda cell=cell, index=index, key=name: submit_batch(cell, key, index)
                               for cell in groups[name] for index in sorted(self.remaining[cell.id])]
                    waiting.extendleft(reversed(batches))
                    continue
                cell = cells[name]
                if "error" in result:
                    progress.update(1 if kind == "batch" else len(self.remaining[cell.id]))
                    self._fail(cell, result)  # the cell's other batches still run and are kept
                    continue
                rows = result["batches"] if kind == "backdoor" else {batch_index: result["rows"]}
                for index, batch_rows in rows.items():
                    progress.update(1)
                    self.store.write_batch(cell.id, index, batch_rows, result.get("seconds"))
                    self.remaining[cell.id].discard(index)
                if not self.remaining[cell.id] and cell.id not in self.stopped:
                    self.store.finish_cell(cell.id)
        except BaseException:  # Ctrl-C: committed batches stay; a re-run (either executor) resumes
            for ref in pending:
                ray.cancel(ref)  # interrupts running units; their workers stay up for the next run
            raise
        finally:
            progress.close()
        for cell in self.suite.cells:
            status = self.stopped.get(cell.id) or self.store.cell_status(cell.id)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def _fail(self, cell, error) -> None:
        from benchmark.evaluate import failure_reason, record_failure

        if cell.id in self.stopped:
            return
        if isinstance(error, NotRun) or isinstance(error, dict) and error.get("not_run"):
            self.stopped[cell.id] = "not_run"
            reason = str(error) if isinstance(error, NotRun) else error["error"]
            self.store.fail_cell(cell.id, reason, status="not_run")
            print(f"cell {cell.describe()} not run: {reason}", file=sys.stderr)
            return
        self.stopped[cell.id] = "failed"
        if isinstance(error, dict):
            record_failure(self.store, cell, error["error"], error["trace"])
        else:
            record_failure(self.store, cell, failure_reason(error),
                           None if isinstance(error, UsageError) else traceback.format_exc())
