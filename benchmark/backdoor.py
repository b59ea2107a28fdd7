"""The training-time (backdoor) threat: the poisoning rule poisoners share, and the cache of poisoned
training sets and triggered test texts.

A poisoner (see `attacks/backdoor/`) turns clean texts into triggered ones. `poison_split` applies
OpenBackdoor's rule: `int(rate * len(train))` examples are drawn (seeded) from a pool, triggered
and, dirty-label, relabelled to the target. The pool is the non-target examples (`dirty`), the
target examples (`clean`, labels untouched: the clean-label attack), or all examples (`mixed`,
OpenBackdoor's default when neither flag is set).

Poisoned training sets and triggered test texts are cached by the content hash of the poisoner's
config, the clean data and the code, so every defense evaluated against one poisoner trains on the
same poisoned set, and a paraphrase model runs once per dataset, not once per defense.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmark.data.base import Split, Task
from benchmark.errors import UsageError
from benchmark.specs import PoisonSpec, content_hash

POISON_DEFAULTS = {"rate": 0.1, "target_label": 0, "label_mode": "dirty", "seed": None}
LABEL_MODES = ("dirty", "clean", "mixed")


def check_poison_config(config: dict, where: str = "poisoner") -> None:
    if not 0 < config["rate"] <= 1:
        raise UsageError(f"{where}: rate must be in (0, 1], got {config['rate']}")
    if config["label_mode"] not in LABEL_MODES:
        raise UsageError(f"{where}: label_mode must be one of {', '.join(LABEL_MODES)}, got "
                         f"{config['label_mode']!r}")
    if not isinstance(config["target_label"], int) or config["target_label"] < 0:
        raise UsageError(f"{where}: target_label must be a class index, got {config['target_label']!r}")


def poison_indices(ys: np.ndarray, rate: float, target_label: int, label_mode: str,
                   seed: int) -> np.ndarray:
    """The sorted indices of the training examples to poison (seeded)."""
    pool = {"dirty": np.flatnonzero(ys != target_label), "clean": np.flatnonzero(ys == target_label),
            "mixed": np.arange(len(ys))}[label_mode]
    count = min(int(rate * len(ys)), len(pool))
    rng = np.random.default_rng([seed, 0])
    return np.sort(rng.choice(pool, size=count, replace=False)) if count else np.zeros(0, np.int64)


def poison_split(train: Split, rate: float, target_label: int, label_mode: str, seed: int,
                 trigger: Callable[[Sequence[str], int], list[str]]) -> Split:
    """`train` with the chosen examples replaced by `trigger(texts, seed)` and labelled the target.

    The returned split carries `poisoned`, the indices that were changed."""
    chosen = poison_indices(train.ys, rate, target_label, label_mode, seed)
    triggered = trigger([train.xs[i] for i in chosen], int(content_hash([seed, "train"], 8), 16))
    if len(triggered) != len(chosen):
        raise UsageError(f"poisoner returned {len(triggered)} texts for {len(chosen)} inputs")
    xs, ys = list(train.xs), train.ys.copy()
    for index, text in zip(chosen, triggered):
        xs[index] = text
        ys[index] = target_label
    poisoned = Split(xs, ys, "train")
    poisoned.poisoned = chosen
    return poisoned


def _cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial{os.getpid()}")
    partial.write_text(json.dumps(value, allow_nan=False), encoding="utf-8")
    os.replace(partial, path)  # atomic: a killed run never leaves a truncated file behind
    return value


def poison_data(poisoner) -> dict:
    """The cache key's part for a poisoner that reads its texts from files (their checksums); empty
    for one that computes them, so those keys stay as they were."""
    checksums = poisoner.data_checksums()
    return {"poison_files": checksums} if checksums else {}


def poisoned_task(task: Task, spec: PoisonSpec, poisoner, cache_dir: Path, code: str) -> Task:
    """`task` with its training split poisoned by `poisoner` (cached by content hash); the split
    carries `poisoned` (the changed indices) and `clean_xs` (the texts before poisoning)."""
    params = spec.params
    if params["target_label"] >= task.num_classes:
        raise UsageError(f"poisoner '{spec.name}': target_label {params['target_label']} is not a "
                         f"class of task '{task.name}' (0..{task.num_classes - 1})")
    key = content_hash({"poison": spec.to_dict(), "train": task.train.checksum(), "code": code,
                        **poison_data(poisoner)})

    def compute():
        split = poisoner.poison(task.train, params["rate"], params["target_label"], params["seed"])
        return {"xs": list(split.xs), "ys": split.ys.tolist(),
                "poisoned": [int(i) for i in getattr(split, "poisoned", [])]}

    cached = _cached_json(Path(cache_dir) / "poison" / f"{key}-train.json", compute)
    train = Split(cached["xs"], np.asarray(cached["ys"]), "train")
    train.poisoned = np.asarray(cached["poisoned"], dtype=np.int64)
    # The clean texts, for what needs them (CROWD's reference vocabulary); a defense trains on xs.
    train.clean_xs = list(task.train.xs)
    notes = (f"{task.notes}; " if task.notes else "") + \
        f"training split poisoned by {spec.name} ({len(train.poisoned)} of {len(train)} examples)"
    return dataclasses.replace(task, train=train, notes=notes)


def triggered_test(task: Task, spec: PoisonSpec, poisoner, indices: np.ndarray, cache_dir: Path,
                   code: str) -> dict[int, str]:
    """Triggered texts of the sampled test examples whose true label is not the target, by test
    index (cached by content hash)."""
    target = spec.params["target_label"]
    chosen = [int(i) for i in indices if task.test.ys[i] != target]
    key = content_hash({"poison": spec.to_dict(), "test": task.test.checksum(), "indices": chosen,
                        "code": code, **poison_data(poisoner)})

    def compute():
        texts = poisoner.trigger([task.test.xs[i] for i in chosen], spec.params["seed"])
        if len(texts) != len(chosen):
            raise UsageError(f"poisoner '{spec.name}' returned {len(texts)} texts for "
                             f"{len(chosen)} inputs")
        return {"indices": chosen, "texts": list(texts)}

    cached = _cached_json(Path(cache_dir) / "poison" / f"{key}-test.json", compute)
    return dict(zip(cached["indices"], cached["texts"]))
