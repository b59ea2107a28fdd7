"""Runs a suite's cells: builds (or reuses) each defended model, evaluates a seeded sample of test
examples in fixed batches, and writes per-example outcomes to the store a batch at a time."""
from __future__ import annotations

import datetime
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import backdoor
from benchmark.data import load_task
from benchmark.errors import NotRun, UsageError
from benchmark.interfaces import ABSTAIN
from benchmark.models import build_model
from benchmark.paths import REPO_ROOT, default_cache_dir
from benchmark.registry import (ATTACKS, DEFENSES, MODELS, POISONERS, local_source_files,
                                source_sha256)
from benchmark.specs import Cell, content_hash
from benchmark.store import Store
from benchmark.suite import Suite
from benchmark.train import deterministic_torch, set_seed

TRAINING_RECORD = "training.json"  # the cache file of a build's training record
PACKAGES = ["torch", "numpy", "scipy", "statsmodels", "scikit-learn", "transformers", "tokenizers",
            "datasets", "textattack", "torchattacks", "pyautoattack", "pandas", "tabulate"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class BuildContext:
    """What a defense gets to build its model: the device, the seed, and a cache of trained weights
    keyed by the content hash of everything that shaped them."""

    def __init__(self, cache_dir: Path, key: str, seed: int, device: torch.device):
        self.cache_dir = Path(cache_dir)
        self.key = key
        self.seed = seed
        self.device = device

    def build_model(self, model_spec, task) -> torch.nn.Module:
        return build_model(model_spec, task).to(self.device)

    def path(self, name: str) -> Path:
        """A cache file for this build's artifacts (weights, poisoned data, tables)."""
        return self.cache_dir / f"{self.key}-{name}"

    def record_training(self, record: dict) -> None:
        """Keep what training measured (e.g. the last epoch's mean cross-entropy) beside the
        weights, so a model loaded from the cache still has it (training_record reads it)."""
        path = self.path(TRAINING_RECORD)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial{os.getpid()}")
        partial.write_text(json.dumps(record, sort_keys=True))
        os.replace(partial, path)

    def trained(self, module: torch.nn.Module, train, name: str = "model") -> torch.nn.Module:
        """Load `module`'s weights from the cache, or call `train(module)` and cache the result."""
        path = self.path(f"{name}.pt")
        if path.exists():
            module.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
            return module.eval()
        train(module)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial{os.getpid()}")
        torch.save(module.state_dict(), partial)
        os.replace(partial, path)  # atomic: a killed run never leaves a truncated model behind
        return module.eval()


def training_record(cache_dir: Path, key: str) -> dict | None:
    """What the training of the model cached under `key` recorded (BuildContext.record_training),
    or None where its defense records nothing or it was trained before records were kept."""
    path = Path(cache_dir) / f"{key}-{TRAINING_RECORD}"
    return json.loads(path.read_text()) if path.exists() else None


def source_hash(*objects) -> str:
    """Hash of the code of `objects`: the code version part of a cache key. It covers the files
    defining them and every local module those import (`registry.local_source_files`: a plugin's
    helper module too), by content, so the same code has the same key in any checkout."""
    files = set()
    for obj in objects:
        module = inspect.getmodule(obj)
        files.update(local_source_files(inspect.getsourcefile(obj), module.__spec__.parent))
    return source_sha256(files)


def build_cache_key(cell: Cell, task) -> str:
    """A defense may name `inference_keys` (config keys that do not shape training: sample counts,
    ensembling) so entries differing only in those share trained weights. The code part covers
    every local module the defense and model import (`source_hash`)."""
    defense = DEFENSES.get(cell.defense.name).obj
    model = MODELS.get(cell.model.name).obj
    code = source_hash(defense, model, set_seed)
    skip = set(getattr(defense, "inference_keys", ()))
    shaping = {"name": cell.defense.name,
               "params": {k: v for k, v in cell.defense.params.items() if k not in skip}}
    replicate = {"train_seed": cell.train_seed} if cell.train_seed is not None else {}
    return content_hash({"task": cell.task.to_dict(), "data": task.checksums(),
                         "model": cell.model.to_dict(), "defense": shaping,
                         "poison": cell.poison.to_dict() if cell.poison else None, "code": code,
                         **replicate})


# Defended models this process built, least recently used first: the cells of one model (its clean
# cell and every attack cell) share one copy instead of each loading it again.
_defended_models: OrderedDict = OrderedDict()
DEFENDED_MODELS_KEPT = 4


def build_defended(cell: Cell, task, cache_dir: Path, device: torch.device | None = None,
                   key: str | None = None):
    """The cell's defended model, trained or loaded from the cache under `key` (by default the
    cell's build cache key; an executor passes the key its driver computed), or this process's copy
    of it. The copy is keyed by the build key and the defense's whole configuration (entries that
    share trained weights may deploy them differently), device and cache directory."""
    device = device or default_device()
    key = key or build_cache_key(cell, task)
    kept = (key, cell.defense.name, cell.defense.params_json, str(device), str(cache_dir))
    if kept in _defended_models:
        _defended_models.move_to_end(kept)
        return _defended_models[kept]
    entry = DEFENSES.get(cell.defense.name)
    context = BuildContext(cache_dir, key, cell.training_seed, device)
    set_seed(context.seed)
    config = {**getattr(entry.obj, "omitted_at_default", {}), **cell.defense.params}
    defended = entry.obj().build(task, cell.model, config, context)
    check_defended(defended, entry, task)
    if isinstance(getattr(defended, "module", None), torch.nn.Module):
        # Deployed, the network is not trained further: attacks need gradients of the inputs
        # only, and the weights' gradients were a fifth of a CiiV attack step.
        defended.module.requires_grad_(False)
    _defended_models[kept] = defended
    while len(_defended_models) > DEFENDED_MODELS_KEPT:
        _defended_models.popitem(last=False)
    return defended


def check_defended(defended, entry, task) -> None:
    """What `build` returned against the DefendedModel contract, before any example is evaluated.
    (`certify` is optional per configuration: a certifying defense may deploy a rule it does not
    certify, e.g. RanMASK's logit ensemble; cells certify whatever model has the method.)"""
    problems = [f"it has no {method}(xs) method" for method in ("predict", "probs")
                if not callable(getattr(defended, method, None))]
    if getattr(defended, "num_classes", None) != task.num_classes:
        problems.append(f"its num_classes is {getattr(defended, 'num_classes', None)!r}, the task "
                        f"has {task.num_classes}")
    if problems:
        raise UsageError(f"defense '{entry.name}': build() returned a {type(defended).__name__} that "
                         f"breaks the DefendedModel contract (benchmark/interfaces.py): "
                         + "; ".join(problems))


def make_attack(cell: Cell):
    return ATTACKS.get(cell.attack.name).obj(cell.attack.params)


def prepare_attack(attack, cell: Cell, task, cache_dir: Path, device: torch.device | None = None):
    """Give an attack that asks for it (`prepare(task, context)`) the task and a cache keyed by the
    task's spec and data, so what it builds from the task (a masked LM) is shared across cells."""
    if hasattr(attack, "prepare"):
        key = content_hash({"task": cell.task.to_dict(), "data": task.checksums()})
        attack.prepare(task, BuildContext(cache_dir, key, cell.task.params.get("seed", 0),
                                          device or default_device()))


def sample_indices(n_available: int, n_examples: int, seed: int) -> np.ndarray:
    """The fixed, seeded sample of test examples a cell evaluates (sorted, so batches are stable).

    Samples are nested: with one seed, a smaller n_examples takes a subset of a larger one's
    examples, so an expensive attack run on fewer examples (an attack-level protocol override) can
    be compared example by example with the cheaper attacks of the same task."""
    rng = np.random.default_rng(seed)
    count = min(n_examples, n_available)
    return np.sort(rng.permutation(n_available)[:count])


def batch_seed(protocol_seed: int, cell_id: str, batch_index: int) -> int:
    return int(content_hash([protocol_seed, cell_id, batch_index], 8), 16)


def check_predictions(predictions, n: int, num_classes: int, who: str) -> np.ndarray:
    predictions = np.asarray(predictions)
    if predictions.shape != (n,):
        raise UsageError(f"{who}.predict returned shape {predictions.shape}, expected ({n},): one "
                         f"label per input")
    if not np.issubdtype(predictions.dtype, np.integer):
        raise UsageError(f"{who}.predict returned dtype {predictions.dtype}; return integer labels")
    if ((predictions < ABSTAIN) | (predictions >= num_classes)).any():
        raise UsageError(f"{who}.predict returned labels outside -1..{num_classes - 1}")
    return predictions.astype(np.int64)


def stack_inputs(inputs: list, like):
    return np.stack(inputs).astype(np.float32) if isinstance(like, np.ndarray) else list(inputs)


def evaluate_batch(cell: Cell, defended, attack, xs, ys: np.ndarray, indices: np.ndarray,
                   seed: int, num_classes: int) -> list[dict]:
    set_seed(seed)
    who = f"defense '{cell.defense_label}'"
    clean = check_predictions(defended.predict(xs), len(ys), num_classes, who)
    rows = [{"example_index": int(i), "label": int(y), "clean_prediction": int(p)}
            for i, y, p in zip(indices, ys, clean)]
    if attack is not None:
        outcomes = attack.run(defended, xs, ys, seed)
        if len(outcomes) != len(ys):
            raise UsageError(f"attack '{cell.attack_label}' returned {len(outcomes)} outcomes for "
                             f"{len(ys)} inputs")
        adversarial = stack_inputs([o.adversarial for o in outcomes], xs)
        attacked = check_predictions(defended.predict(adversarial), len(ys), num_classes, who)
        draws = cell.protocol.judge_draws if getattr(defended, "randomized", False) else 1
        # Fresh predictions of a randomized defense on the same adversarial inputs: how many of
        # the judge_draws (the first included) get each example right.
        correct_draws = (attacked == ys).astype(int)
        for _ in range(draws - 1):
            again = check_predictions(defended.predict(adversarial), len(ys), num_classes, who)
            correct_draws += again == ys
        for row, outcome, prediction, correct in zip(rows, outcomes, attacked, correct_draws):
            judged = {"judge_draws": draws, "correct_draws": int(correct)} if draws > 1 else {}
            row.update(adversarial_prediction=int(prediction),
                       success=int(row["clean_prediction"] == row["label"] and prediction != row["label"]),
                       queries=int(outcome.queries), perturbation=float(outcome.perturbation),
                       adversarial_text=outcome.adversarial if isinstance(outcome.adversarial, str) else None,
                       extra={**outcome.extra, **judged})
    elif cell.protocol.certify and hasattr(defended, "certify"):
        certificates = defended.certify(xs, ys, cell.protocol.alpha, seed)
        for row, certificate in zip(rows, certificates):
            row.update(certified=int(certificate.certified), radius=float(certificate.radius),
                       abstained=int(certificate.abstained), p_lower=certificate.p_lower,
                       extra={**certificate.details, "samples": certificate.samples,
                              "certified_prediction": certificate.prediction})
    return rows


def certificate_unit(cell: Cell) -> str | None:
    """The unit of the cell's certificates, with what the defense says about its threat model
    (`certificate_threat(config)`: e.g. which substitutions, or which beta), since certificates
    under different ones are different claims."""
    defense = DEFENSES.get(cell.defense.name)
    unit = defense.tags.get("unit")
    if unit and hasattr(defense.obj, "certificate_threat"):
        unit = f"{unit} ({defense.obj.certificate_threat(cell.defense.params)})"
    return unit


def cell_batches(cell: Cell, task) -> list[np.ndarray]:
    """The cell's fixed batches of test-example indices: the unit of work and of resumption."""
    indices = sample_indices(len(task.test), cell.protocol.n_examples, cell.protocol.seed)
    size = cell.protocol.batch_size
    return [indices[start:start + size] for start in range(0, len(indices), size)]


def open_cell(cell: Cell, suite_name: str, store: Store, task):
    """Register the cell in the store; returns its attack (None for a clean cell), its batches and
    the indices of the batches still to run."""
    attack = make_attack(cell) if cell.attack is not None else None
    description = attack.describe() if attack is not None else "no attack (clean inputs)"
    unit = certificate_unit(cell)
    batches = cell_batches(cell, task)
    store.open_cell(suite_name, cell, len(batches), description, unit)
    if store.cell_status(cell.id) == "done":
        return attack, batches, []
    done = store.done_batches(cell.id)
    return attack, batches, [b for b in range(len(batches)) if b not in done]


def run_batch(cell: Cell, defended, attack, task, batches: list[np.ndarray],
              batch_index: int) -> list[dict]:
    """Evaluate one batch of a cell: the unit every executor runs, seeded by its position alone."""
    batch = batches[batch_index]
    return evaluate_batch(cell, defended, attack, task.test.inputs(batch), task.test.ys[batch],
                          batch, batch_seed(cell.protocol.seed, cell.id, batch_index),
                          task.num_classes)


def defended_model(cell: Cell, task, cache_dir: Path, device: torch.device | None, sandbox):
    """The cell's defended model: built here, or in the sandbox's child process (a submission)."""
    if sandbox is not None:
        return sandbox.model(cell, task, cache_dir, device)
    return build_defended(cell, task, cache_dir, device)


def run_cell(cell: Cell, suite_name: str, store: Store, task, cache_dir: Path,
             device: torch.device | None = None, sandbox=None) -> str:
    """Evaluate one cell, resuming after its last finished batch. Returns the cell's status.
    With a `sandbox` (benchmark/sandbox.py), the defense runs in its child process."""
    if cell.poison is not None:
        return run_backdoor_cell(cell, suite_name, store, task, cache_dir, device, sandbox)
    attack, batches, todo = open_cell(cell, suite_name, store, task)
    if todo:
        started = time.perf_counter()
        defended = defended_model(cell, task, cache_dir, device, sandbox)
        if attack is not None:
            prepare_attack(attack, cell, task, cache_dir, device)
        store.add_build_seconds(cell.id, time.perf_counter() - started)
        record = training_record(cache_dir, build_cache_key(cell, task))
        if record is not None:
            store.add_training_record(cell.id, record)
        for batch_index in tqdm(todo, desc=cell.describe(), leave=False):
            started = time.perf_counter()
            rows = run_batch(cell, defended, attack, task, batches, batch_index)
            store.write_batch(cell.id, batch_index, rows, time.perf_counter() - started)
    store.finish_cell(cell.id)
    return "done"


def run_manifest(suite: Suite, tasks: dict) -> dict:
    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    device = default_device()
    # which CPU and vector instruction set torch dispatches to: two machines' numbers can differ
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu_model = re.search(r"^model name\s*: (.*)$", cpuinfo, re.M)
    return {
        "suite": suite.name, "suite_file": str(suite.path), "suite_sha256": suite.sha256,
        "seed": suite.seed, "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "packages": {p: version(p) for p in PACKAGES}, "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "cpu": {"model": cpu_model.group(1) if cpu_model else platform.processor() or None,
                "instruction_set": torch.backends.cpu.get_cpu_capability()},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(), "determinism": deterministic_torch(),
        "data": {label: {"source": task.source, "checksums": task.checksums()}
                 for label, task in tasks.items()},
        "protocols": sorted({str(cell.protocol.to_dict()) for cell in suite.cells}),
    }


def run_suite(suite: Suite, store: Store, cache_dir: Path | None = None,
              device: torch.device | None = None, sandbox=None) -> dict[str, int]:
    """Run every cell of the suite; returns a count of cells per final status."""
    cache_dir = cache_dir or default_cache_dir()
    tasks = start_run(suite, store, {"executor": "local"})
    counts: dict[str, int] = {}
    for cell in tqdm(suite.cells, desc=f"suite {suite.name}"):
        try:
            status = run_cell(cell, suite.name, store, tasks[cell.task_label], cache_dir, device,
                              sandbox)
        except NotRun as error:  # unavailable here, or not applicable to this defense: say why
            store.fail_cell(cell.id, str(error), status="not_run")
            print(f"cell {cell.describe()} not run: {error}", file=sys.stderr)
            status = "not_run"
        except Exception as error:  # one broken cell must not stop the others; it is recorded
            record_failure(store, cell, failure_reason(error),
                           None if isinstance(error, UsageError) else traceback.format_exc())
            status = "failed"
        counts[status] = counts.get(status, 0) + 1
    return counts


def load_tasks(suite: Suite) -> dict:
    """Every task of the suite by label. Loading is cached, so a command calls this before it
    creates a store: bad data is reported before anything is written."""
    tasks = {}
    for cell in suite.cells:
        if cell.task_label not in tasks:
            tasks[cell.task_label] = load_task(cell.task, suite.data_root)
    return tasks


def start_run(suite: Suite, store: Store, manifest_extra: dict | None = None) -> dict:
    """Load every task (so bad data is reported before any cell runs) and record the run's
    manifest. Returns the tasks by label."""
    tasks = load_tasks(suite)
    store.add_run(suite.name, datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  {**run_manifest(suite, tasks), **(manifest_extra or {})})
    return tasks


def failure_reason(error: BaseException) -> str:
    return str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"


def record_failure(store: Store, cell: Cell, reason: str, trace: str | None = None) -> None:
    """Mark a cell failed with its reason; a usage error is the user's to fix, so no traceback."""
    store.fail_cell(cell.id, reason)
    if trace:
        print(trace, file=sys.stderr, end="")
    print(f"cell {cell.describe()} failed: {reason}", file=sys.stderr)


def evaluate_backdoor_batch(cell: Cell, defended, xs, ys: np.ndarray, indices: np.ndarray,
                            triggered: dict[int, str], seed: int, num_classes: int) -> list[dict]:
    """Benign predictions on the clean inputs; on the triggered inputs (test examples whose true
    label is not the target) the prediction, attack success (predicted the target) and, for a
    certifying defense, its certificate against the true label."""
    set_seed(seed)
    who = f"defense '{cell.defense_label}'"
    target = cell.poison.params["target_label"]
    clean = check_predictions(defended.predict(xs), len(ys), num_classes, who)
    rows = [{"example_index": int(i), "label": int(y), "clean_prediction": int(p)}
            for i, y, p in zip(indices, ys, clean)]
    positions = [k for k, i in enumerate(indices) if int(i) in triggered]
    if not positions:
        return rows
    texts = [triggered[int(indices[k])] for k in positions]
    predictions = check_predictions(defended.predict(texts), len(texts), num_classes, who)
    for k, text, prediction in zip(positions, texts, predictions):
        rows[k].update(adversarial_prediction=int(prediction), success=int(prediction == target),
                       adversarial_text=text)
    if cell.protocol.certify and hasattr(defended, "certify"):
        certificates = defended.certify(texts, ys[positions], cell.protocol.alpha, seed)
        for k, certificate in zip(positions, certificates):
            rows[k].update(certified=int(certificate.certified), radius=float(certificate.radius),
                           abstained=int(certificate.abstained), p_lower=certificate.p_lower,
                           extra={"samples": certificate.samples,
                                  "certified_prediction": certificate.prediction})
    return rows


def make_poisoner(cell: Cell):
    return POISONERS.get(cell.poison.name).obj(cell.poison.params)


def open_backdoor_cell(cell: Cell, suite_name: str, store: Store, task):
    """Register a backdoor cell in the store; returns its poisoner, its batches and the indices of
    the batches still to run."""
    poisoner = make_poisoner(cell)
    unit = certificate_unit(cell)
    batches = cell_batches(cell, task)
    store.open_cell(suite_name, cell, len(batches), poisoner.describe(), unit)
    if store.cell_status(cell.id) == "done":
        return poisoner, batches, []
    done = store.done_batches(cell.id)
    return poisoner, batches, [b for b in range(len(batches)) if b not in done]


def build_backdoor(cell: Cell, poisoner, task, batches: list[np.ndarray], cache_dir: Path,
                   device: torch.device | None = None, sandbox=None):
    """Poison the training split (cached, shared by every defense) and build the defense on it;
    returns the defended model and the triggered forms of the cell's test examples."""
    code = source_hash(*[c for c in type(poisoner).__mro__ if c is not object], backdoor.poison_split)
    poisoned = backdoor.poisoned_task(task, cell.poison, poisoner, cache_dir, code)
    triggered = backdoor.triggered_test(task, cell.poison, poisoner, np.concatenate(batches),
                                        cache_dir, code)
    return defended_model(cell, poisoned, cache_dir, device, sandbox), triggered


def backdoor_batch(cell: Cell, defended, task, batches: list[np.ndarray], triggered: dict,
                   batch_index: int) -> list[dict]:
    """One batch of a backdoor cell: its test examples clean and triggered."""
    batch = batches[batch_index]
    return evaluate_backdoor_batch(cell, defended, task.test.inputs(batch), task.test.ys[batch],
                                   batch, triggered,
                                   batch_seed(cell.protocol.seed, cell.id, batch_index),
                                   task.num_classes)


def backdoor_batch_rows(cell: Cell, poisoner, task, batches: list[np.ndarray], todo: list[int],
                        cache_dir: Path, device: torch.device | None = None, sandbox=None):
    """Build the cell's defense on the poisoned split, then yield (batch index, rows) for each
    batch in `todo`."""
    defended, triggered = build_backdoor(cell, poisoner, task, batches, cache_dir, device, sandbox)
    for batch_index in tqdm(todo, desc=cell.describe(), leave=False):
        yield batch_index, backdoor_batch(cell, defended, task, batches, triggered, batch_index)


def run_backdoor_cell(cell: Cell, suite_name: str, store: Store, task, cache_dir: Path,
                      device: torch.device | None = None, sandbox=None) -> str:
    """A backdoor cell, resuming after its last finished batch."""
    poisoner, batches, todo = open_backdoor_cell(cell, suite_name, store, task)
    if todo:
        started = time.perf_counter()
        defended, triggered = build_backdoor(cell, poisoner, task, batches, cache_dir, device,
                                             sandbox)
        store.add_build_seconds(cell.id, time.perf_counter() - started)
        for batch_index in tqdm(todo, desc=cell.describe(), leave=False):
            started = time.perf_counter()
            rows = backdoor_batch(cell, defended, task, batches, triggered, batch_index)
            store.write_batch(cell.id, batch_index, rows, time.perf_counter() - started)
    store.finish_cell(cell.id)
    return "done"
