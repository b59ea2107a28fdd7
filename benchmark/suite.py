"""Suite files (TOML): which tasks, models, defenses and attacks to pair, and the protocol.

    name = "mini"
    seed = 0
    [protocol]            # n_examples, batch_size, alpha, certify
    [tasks.<label>]       # task = registered name (default: label), params, model, model_params,
                          # train = {epochs, lr, ...}, protocol = {overrides},
                          # resources = {overrides of [resources] for this task's cells},
                          # defenses = [labels], attacks = [labels] to run only those on it
    [defenses.<label>]    # defense = registered name (default: label), params, tasks = [labels],
                          # per_task.<task label> = {param overrides}, seeds = [training seeds]
                          # or seeds = {<task label> = [training seeds]} (one row per seed:
                          # `label` for the task's own seed, `label@seed<n>` for the others)
    [attacks.<label>]     # attack = registered name (default: label), same keys as defenses,
                          # and protocol = {overrides} for this attack's cells (e.g. fewer
                          # n_examples for an expensive attack)
    [resources]           # num_cpus, num_gpus: what one unit of work (a batch, a model build)
                          # asks of a Ray cluster; ignored by the local executor
    [poisoners.<label>]   # poisoner = registered name (default: label), same keys as defenses;
                          # params include rate, target_label, label_mode, seed

Every compatible (task, defense) pair gets a clean cell, and one cell per compatible attack. A
defense registered with `backdoor=True` also gets one backdoor cell per compatible poisoner: it is
built on the poisoned training split and evaluated on clean and triggered test inputs. A defense's
`cells = ["clean", "attacks", "backdoor"]` (the default) chooses which of these kinds it gets.
"""
from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.registry import ATTACKS, DEFENSES, POISONERS, TASKS, MODELS
from benchmark.train import TRAIN_DEFAULTS
from benchmark.specs import AttackSpec, Cell, DefenseSpec, ModelSpec, PoisonSpec, Protocol, TaskSpec

SUITES_DIR = Path(__file__).parent / "suites"
TOP_LEVEL_KEYS = {"name", "description", "seed", "data_root", "protocol", "tasks", "defenses",
                  "attacks", "resources", "poisoners"}
TASK_KEYS = {"task", "params", "model", "model_params", "train", "protocol", "resources",
             "defenses", "attacks"}
COMPONENT_KEYS = {"params", "tasks", "per_task"}
CELL_KINDS = ("clean", "attacks", "backdoor")  # a defense's `cells`: which kinds of cell it gets
PROTOCOL_TYPES = {"seed": int, "n_examples": int, "batch_size": int, "alpha": float, "certify": bool,
                  "judge_draws": int}
# The smallest value each training setting may take (epochs = 0 keeps the initial weights).
TRAIN_MINIMUM = {"epochs": 0, "batch_size": 1, "lr": 0.0, "weight_decay": 0.0}
# Placement, not protocol: it never changes an outcome, so it stays out of cell ids.
RESOURCE_DEFAULTS = {"num_cpus": 1.0, "num_gpus": 0.0}


@dataclass
class Suite:
    name: str
    path: Path
    sha256: str
    seed: int
    data_root: Path | None
    description: str = ""
    cells: list[Cell] = field(default_factory=list)
    resources: dict[str, dict] = field(default_factory=dict)  # task label -> Ray task resources


def resolve_suite_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        inside = ", ".join(sorted(p.name for p in path.glob("*.toml"))) or "none"
        raise UsageError(f"{path} is a directory, not a suite file; pass the path of a .toml file "
                         f"(.toml files in it: {inside}) or a built-in suite name")
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UsageError(f"suite file not found: {path}; pass the path of an existing .toml "
                             f"file or a built-in suite name")
        return path
    builtin = SUITES_DIR / f"{name_or_path}.toml"
    if not builtin.is_file():
        valid = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
        raise UsageError(f"unknown suite '{name_or_path}'; built-in suites: {valid}, "
                         f"or pass the path of a .toml file")
    return builtin


def _expect(value, expected_type, where: str, what: str):
    ok = isinstance(value, expected_type) and not (expected_type in (int, float) and isinstance(value, bool))
    if expected_type is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise UsageError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
    return value


def _check_finite(value, where: str, key: str = "") -> None:
    """Every number in a suite is finite: TOML's nan and inf are refused wherever they appear."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}, key '{key}': {value} is not a finite number; give a finite value")
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(item, where, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, where, f"{key}[{index}]")


def _check_train(config: dict, where: str) -> None:
    """Training settings (the suite's `train` table or a defense's own) have their type and range."""
    for key, minimum in TRAIN_MINIMUM.items():
        if key in config:
            value = _expect(config[key], type(TRAIN_DEFAULTS[key]), f"{where}, key '{key}'",
                            type(TRAIN_DEFAULTS[key]).__name__)
            if value < minimum:
                raise UsageError(f"{where}, key '{key}': must be >= {minimum:g}, got {value:g}")


def resolve_config(defaults: dict, given: dict, where: str) -> dict:
    """Defaults overridden by the suite's values; unknown keys and wrong types are errors."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UsageError(f"{where}: unknown parameter(s) {', '.join(unknown)}; valid parameters: "
                         f"{', '.join(sorted(defaults)) or '(none)'}")
    config = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        if default is not None and not isinstance(default, (list, tuple)):
            _expect(value, float if isinstance(default, float) else type(default),
                    f"{where}, key '{key}'", type(default).__name__)
        config[key] = float(value) if isinstance(default, float) else value
    return config


def _protocol(base: dict, overrides: dict, where: str) -> Protocol:
    merged = {**base, **overrides}
    for key, value in merged.items():
        if key not in PROTOCOL_TYPES:
            raise UsageError(f"{where}: unknown protocol key '{key}'; valid: "
                             f"{', '.join(PROTOCOL_TYPES)}")
        _expect(value, PROTOCOL_TYPES[key], f"{where}, key '{key}'", PROTOCOL_TYPES[key].__name__)
    protocol = Protocol(**merged)
    if protocol.seed < 0:
        raise UsageError(f"{where}: seed must be a non-negative integer, got {protocol.seed}")
    for key in ("n_examples", "batch_size", "judge_draws"):
        if getattr(protocol, key) <= 0:
            raise UsageError(f"{where}: {key} must be positive, got {getattr(protocol, key)}")
    if not 0 < protocol.alpha < 1:
        raise UsageError(f"{where}: alpha must be in (0, 1), got {protocol.alpha}")
    return protocol


def _resources(base: dict, given: dict, where: str) -> dict:
    resources = resolve_config(base, given, f"{where}, key 'resources'")
    if any(value < 0 for value in resources.values()):
        raise UsageError(f"{where}, key 'resources': values must be >= 0, got {resources}")
    return resources


def _registered(registry, name: str, where: str):
    """The registry entry for a name the suite gives, or an error that says where the name is."""
    try:
        return registry.get(name)
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    return _expect(value, dict, f"{where}, key '{key}'", "a table")


def load_suite(name_or_path: str, data_root: str | Path | None = None,
               defenses: dict | None = None) -> Suite:
    """Load and validate a suite. `defenses`, when given, replaces the file's [defenses] table (a
    submission runs the suite's tasks, attacks and protocol for its own defense only, on every
    compatible task: the tasks' own `defenses` lists name the file's defenses)."""
    path = resolve_suite_path(name_or_path)
    content = path.read_bytes()
    try:
        raw = tomllib.loads(content.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"suite file {path} is not valid TOML: {error}; fix the syntax there") from error
    where = str(path)
    _check_finite(raw, where)
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(TOP_LEVEL_KEYS))}")
    name = _expect(raw.get("name", path.stem), str, f"{where}, key 'name'", "a string")
    seed = _expect(raw.get("seed", 0), int, f"{where}, key 'seed'", "an integer")
    if seed < 0:
        raise UsageError(f"{where}, key 'seed': must be a non-negative integer, got {seed}")
    root = data_root or raw.get("data_root")
    suite = Suite(name, path, hashlib.sha256(content).hexdigest(), seed,
                  Path(root) if root else None, raw.get("description", ""))
    base_protocol = {"seed": seed, **_table(raw, "protocol", where)}
    _protocol(base_protocol, {}, f"{where}, [protocol]")  # its errors are reported where they are
    base_resources = _resources(RESOURCE_DEFAULTS, _table(raw, "resources", where), where)
    tasks = _table(raw, "tasks", where)
    file_defenses = _table(raw, "defenses", where)
    defenses = file_defenses if defenses is None else defenses
    attacks = _table(raw, "attacks", where)
    poisoners = _table(raw, "poisoners", where)
    for section, entries in (("tasks", tasks), ("defenses", defenses)):
        if not entries:
            raise UsageError(f"{where}: the suite needs at least one entry under [{section}]")
    for section, entries in (("defenses", defenses), ("attacks", attacks), ("poisoners", poisoners)):
        for label, component in entries.items():
            _check_task_labels(component, sorted(tasks), f"{where}, [{section}.{label}]")

    for task_label, task_raw in tasks.items():
        task_where = f"{where}, [tasks.{task_label}]"
        _expect(task_raw, dict, task_where, "a table")
        bad = sorted(set(task_raw) - TASK_KEYS)
        if bad:
            raise UsageError(f"{task_where}: unknown key(s) {', '.join(bad)}; valid: "
                             f"{', '.join(sorted(TASK_KEYS))}")
        task_name = task_raw.get("task", task_label)
        task_entry = _registered(TASKS, task_name, task_where)
        modality = task_entry.tags["modality"]
        if "model" not in task_raw:
            raise UsageError(f"{task_where}: missing key 'model' (one of: "
                             f"{', '.join(e.name for e in MODELS.entries() if e.tags['modality'] == modality)})")
        model_entry = _registered(MODELS, task_raw["model"], task_where)
        if model_entry.tags["modality"] != modality:
            raise UsageError(f"{task_where}: model '{model_entry.name}' is for "
                             f"{model_entry.tags['modality']} tasks, this task is {modality}")
        task_params = {"seed": seed, **_table(task_raw, "params", task_where)}
        if not isinstance(task_params["seed"], int) or task_params["seed"] < 0:
            raise UsageError(f"{task_where}, key 'params.seed': must be a non-negative integer, got "
                             f"{task_params['seed']!r}")
        task_spec = TaskSpec.make(task_name, task_params)
        model_spec = ModelSpec.make(model_entry.name, _table(task_raw, "model_params", task_where))
        train = _table(task_raw, "train", task_where)
        bad = sorted(set(train) - set(TRAIN_DEFAULTS))
        if bad:
            raise UsageError(f"{task_where}, key 'train': unknown key(s) {', '.join(bad)}; valid: "
                             f"{', '.join(TRAIN_DEFAULTS)}")
        _check_train(train, f"{task_where}, key 'train'")
        task_protocol = _table(task_raw, "protocol", task_where)
        protocol = _protocol(base_protocol, task_protocol, task_where)
        suite.resources[task_label] = _resources(base_resources,
                                                 _table(task_raw, "resources", task_where), task_where)

        # A task's `defenses` list names the file's defenses; a submitted defense (which replaces
        # them) runs on every compatible task.
        only_defenses = _task_selection(task_raw, "defenses", file_defenses, task_where)
        if defenses is not file_defenses:
            only_defenses = set(defenses)
        only_attacks = _task_selection(task_raw, "attacks", attacks, task_where)
        for defense_label, defense_raw in defenses.items():
            if defense_label not in only_defenses:
                continue
            defense_spec = _component_spec(DEFENSES, "defenses", "defense", defense_label,
                                           defense_raw, task_label, modality, where, train)
            if defense_spec is None:
                continue
            kinds = _cell_kinds(defense_raw, defense_spec, f"{where}, [defenses.{defense_label}]")
            for label, train_seed in _replicates(defense_raw, defense_label, task_label,
                                                 task_params["seed"],
                                                 f"{where}, [defenses.{defense_label}]"):
                replicate = {"defense_label": label, "train_seed": train_seed}
                if "clean" in kinds:
                    suite.cells.append(Cell(task_spec, model_spec, defense_spec, None, protocol,
                                            task_label, **replicate))
                for attack_label, attack_raw in attacks.items() if "attacks" in kinds else ():
                    if attack_label not in only_attacks:
                        continue
                    attack_spec = _component_spec(ATTACKS, "attacks", "attack", attack_label,
                                                  attack_raw, task_label, modality, where, {})
                    if attack_spec is not None:
                        attack_where = f"{where}, [attacks.{attack_label}]"
                        attack_protocol = _protocol(
                            base_protocol, {**task_protocol, **_table(attacks[attack_label],
                                                                      "protocol", attack_where)},
                            attack_where)
                        suite.cells.append(Cell(task_spec, model_spec, defense_spec, attack_spec,
                                                attack_protocol, task_label,
                                                attack_label=attack_label, **replicate))
                for poison_label, poison_raw in poisoners.items() if "backdoor" in kinds else ():
                    poison_spec = _component_spec(POISONERS, "poisoners", "poisoner", poison_label,
                                                  poison_raw, task_label, modality, where, {}, seed)
                    if poison_spec is not None:
                        suite.cells.append(Cell(task_spec, model_spec, defense_spec, None, protocol,
                                                task_label, attack_label=poison_label,
                                                poison=poison_spec, **replicate))
    if not suite.cells:
        raise UsageError(f"{where}: no (task, defense) pair is compatible; check the modalities "
                         f"and `tasks` lists")
    return suite


def _task_selection(task_raw: dict, key: str, entries: dict, where: str) -> set:
    """The labels of `entries` a task runs: its own `defenses` / `attacks` list, else all of them."""
    if key not in task_raw:
        return set(entries)
    labels = _expect(task_raw[key], list, f"{where}, key '{key}'", "a list of labels")
    unknown = sorted(set(labels) - set(entries))
    if unknown:
        raise UsageError(f"{where}, key '{key}': {', '.join(map(str, unknown))} not in the suite's "
                         f"[{key}] (labels: {', '.join(entries) or 'none'})")
    return set(labels)


def _check_task_labels(raw, task_labels: list[str], where: str) -> None:
    """A component's `tasks` and `per_task` name tasks of the suite: a typo is an error, never a
    component silently dropped or an override silently ignored."""
    if not isinstance(raw, dict):
        return  # reported, with its place, when the component is read
    named = {"tasks": raw.get("tasks", []), "per_task": raw.get("per_task", {})}
    if isinstance(raw.get("seeds"), dict):  # training seeds by task label
        named["seeds"] = raw["seeds"]
    for key, labels in named.items():
        _expect(labels, list if key == "tasks" else dict, f"{where}, key '{key}'",
                "a list" if key == "tasks" else "a table")
        unknown = sorted(str(label) for label in labels if label not in task_labels)
        if unknown:
            raise UsageError(f"{where}, key '{key}': unknown task(s) {', '.join(unknown)}; the "
                             f"suite's tasks: {', '.join(task_labels)}")
    for label, overrides in named["per_task"].items():
        _expect(overrides, dict, f"{where}, key 'per_task.{label}'", "a table")


def replicate_label(label: str, train_seed: int | None) -> str:
    """A defense entry's row label for one training seed: the entry's own label for the replicate
    that trains with the task's seed (its cells keep the ids they had before replicates), else
    `label@seed<n>`."""
    return label if train_seed is None else f"{label}@seed{train_seed}"


def _replicates(raw: dict, label: str, task_label: str, task_seed: int,
                where: str) -> list[tuple[str, int | None]]:
    """(row label, train_seed) per training seed of a defense entry on a task: its `seeds` (a list
    for every task, or a table of lists by task label), else one replicate with the task's seed.
    The task's own seed is train_seed None (see Cell)."""
    seeds = raw.get("seeds")
    if isinstance(seeds, dict):
        where, seeds = f"{where}, key 'seeds.{task_label}'", seeds.get(task_label)
    else:
        where = f"{where}, key 'seeds'"
    if seeds is None:
        return [(label, None)]
    _expect(seeds, list, where, "a list of training seeds")
    if not seeds or len(set(seeds)) != len(seeds) or any(
            not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise UsageError(f"{where}: need distinct non-negative integers, got {seeds!r}")
    return [(replicate_label(label, None if s == task_seed else s), None if s == task_seed else s)
            for s in seeds]


def _cell_kinds(raw: dict, spec: DefenseSpec, where: str) -> tuple:
    """The kinds of cell a defense gets: `cells` from the suite, backdoor only if it is tagged."""
    backdoor = bool(DEFENSES.get(spec.name).tags.get("backdoor"))
    if "cells" not in raw:
        return CELL_KINDS if backdoor else CELL_KINDS[:2]
    kinds = _expect(raw["cells"], list, f"{where}, key 'cells'", "a list")
    bad = sorted(set(kinds) - set(CELL_KINDS))
    if bad:
        raise UsageError(f"{where}, key 'cells': unknown kind(s) {', '.join(bad)}; valid: "
                         f"{', '.join(CELL_KINDS)}")
    if "backdoor" in kinds and not backdoor:
        raise UsageError(f"{where}: defense '{spec.name}' is not registered as backdoor-capable "
                         f"(backdoor=True); remove 'backdoor' from its cells")
    return tuple(kinds)


def _component_spec(registry, section, name_key, label, raw, task_label, modality, where, train,
                    seed=0):
    entry_where = f"{where}, [{section}.{label}]"
    _expect(raw, dict, entry_where, "a table")
    valid = COMPONENT_KEYS | {name_key} | {"defense": {"cells", "seeds"}, "attack": {"protocol"}}.get(name_key, set())
    bad = sorted(set(raw) - valid)
    if bad:
        raise UsageError(f"{entry_where}: unknown key(s) {', '.join(bad)}; valid: "
                         f"{', '.join(sorted(valid))}")
    entry = _registered(registry, raw.get(name_key, label), entry_where)
    only = raw.get("tasks")
    if only is not None and task_label not in _expect(only, list, f"{entry_where}, key 'tasks'", "a list"):
        return None
    if entry.tags["modality"] not in ("any", modality):
        if only is not None:
            raise UsageError(f"{entry_where}: {name_key} '{entry.name}' is for "
                             f"{entry.tags['modality']} tasks but is listed for {modality} task "
                             f"'{task_label}'")
        return None
    per_task = _table(raw, "per_task", entry_where)
    given = {**_table(raw, "params", entry_where), **per_task.get(task_label, {})}
    defaults = getattr(entry.obj, "defaults", {})
    inherited = {k: v for k, v in train.items() if k in defaults and k not in given}
    config = resolve_config(defaults, {**inherited, **given}, entry_where)
    if name_key == "defense":
        _check_train(config, entry_where)
    if name_key == "attack":
        entry.obj(config)  # constructing validates the budget now, before any cell runs
        return AttackSpec.make(entry.name, config)
    if name_key == "poisoner":
        config["seed"] = seed if config.get("seed") is None else config["seed"]
        entry.obj(config)  # validates the config (loads no model)
        return PoisonSpec.make(entry.name, config)
    # An option the defense added later is left out of the spec at its default
    # (`omitted_at_default`), so entries written before it keep their cell ids and cache keys;
    # evaluate.build_defended gives the defense its whole config.
    omitted = getattr(entry.obj, "omitted_at_default", {})
    return DefenseSpec.make(entry.name, {key: value for key, value in config.items()
                                         if not (key in omitted and value == omitted[key])})
