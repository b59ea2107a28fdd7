"""Submitting a defense to a suite's leaderboard, and verifying a submission.

`rbench submit defense.py --suite S --name E` checks the file against the defense contract, runs the
suite's tasks, attacks and protocol for that one defense (the harness computes every number; the
plugin only builds the model), and writes `leaderboards/S/submissions/E.json`: the results, the run
manifest, and SHA-256 hashes of the plugin file and of the results. `rbench leaderboard S` merges
every submission whose results hash checks out.

`rbench verify E.json` checks both hashes, then re-runs a seeded subsample of each cell's examples
and checks that every submitted rate lies inside the re-run's Clopper-Pearson interval (Bonferroni:
each interval at level alpha / m for m rates, so a faithful submission fails with probability at
most alpha).
"""
from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import re
from pathlib import Path

import numpy as np
from tabulate import tabulate

from benchmark.errors import UsageError
from benchmark.paths import REPO_ROOT, default_cache_dir, default_store_path
from benchmark.registry import DEFENSES, load_plugin_file, plugin_sha256
from benchmark.sandbox import Sandbox, SandboxLimits
from benchmark.specs import canonical_json

FORMAT = "rbench-submission/1"
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODALITIES = ("text", "image", "any")
VERIFY_ALPHA = 0.05


def results_hash(results: dict) -> str:
    return hashlib.sha256(canonical_json(results).encode()).hexdigest()


def repo_relative(path: Path) -> str:
    """A path as a submission records it: relative to the repository when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def resolve_recorded(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path


# The contract ------------------------------------------------------------------------------------
def check_defense_contract(entry) -> None:
    """What the engine needs from a registered defense, checked before anything is built."""
    problems = []
    tags = entry.tags
    if tags.get("modality") not in MODALITIES:
        problems.append(f"modality={tags.get('modality')!r}: register with modality= one of "
                        f"{', '.join(MODALITIES)}")
    if tags.get("certifies") and not isinstance(tags.get("unit"), str):
        problems.append("certifies=True needs unit= (the certificate radius unit, e.g. 'l2')")
    obj = entry.obj
    if not isinstance(obj, type):
        problems.append(f"@register_defense decorates a {type(obj).__name__}; decorate a class "
                        f"with a build(task, model_spec, config, context) method")
    else:
        defaults = getattr(obj, "defaults", {})
        if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
            problems.append("`defaults` must be a dict from parameter name to default value")
        else:
            try:
                json.dumps(defaults, allow_nan=False)
            except (TypeError, ValueError) as error:
                problems.append(f"`defaults` must hold JSON values (numbers, strings, booleans, "
                                f"lists): {error}")
        try:
            instance = obj()
        except Exception as error:  # the engine constructs defenses without arguments
            problems.append(f"{obj.__name__}() failed ({type(error).__name__}: {error}); the "
                            f"engine constructs a defense without arguments")
        else:
            build = getattr(instance, "build", None)
            if not callable(build):
                problems.append(f"{obj.__name__} has no build(task, model_spec, config, context) method")
            else:
                try:
                    inspect.signature(build).bind(None, None, None, None)
                except TypeError:
                    problems.append(f"{obj.__name__}.build{inspect.signature(build)} cannot be "
                                    f"called as build(task, model_spec, config, context)")
    if problems:
        raise UsageError(f"defense '{entry.name}' does not satisfy the defense contract "
                         f"(benchmark/interfaces.py, README 'Submitting a defense'):\n  - "
                         + "\n  - ".join(problems))


def load_defense_plugin(path: Path):
    """Load a submission's file and return the registry entry of the one defense it registers."""
    module = load_plugin_file(path)
    entries = [e for e in DEFENSES.entries() if e.source == module]
    if not entries:
        raise UsageError(f"{path} registers no defense: decorate the defense class with "
                         f"@register_defense(\"name\", modality=...) from benchmark.registry "
                         f"(see examples/my_defense.py)")
    if len(entries) > 1:
        raise UsageError(f"{path} registers {len(entries)} defenses "
                         f"({', '.join(e.name for e in entries)}); a submission is one defense")
    check_defense_contract(entries[0])
    return entries[0]


def submission_suite(suite_ref: str, entry_name: str, defense: str, data_root=None):
    """The suite's tasks, attacks and protocol with the submitted defense as its only defense."""
    from benchmark.suite import load_suite

    return load_suite(suite_ref, data_root, defenses={entry_name: {"defense": defense}})


# Submitting ----------------------------------------------------------------------------------------
def submit(plugin: str | Path, suite_ref: str, entry_name: str, out_dir: Path | None = None,
           store_path: Path | None = None, data_root=None, cache_dir: Path | None = None,
           limits: SandboxLimits = SandboxLimits()) -> Path:
    """Validate, run (the defense sandboxed) and write a submission; returns the path of its JSON."""
    from benchmark.evaluate import load_tasks, run_suite
    from benchmark.leaderboard import build_leaderboard
    from benchmark.store import Store
    from benchmark.suite import load_suite

    if not ENTRY_NAME.match(entry_name):
        raise UsageError(f"entry name {entry_name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    plugin = Path(plugin)
    entry = load_defense_plugin(plugin)
    plugin_sha = plugin_sha256(plugin)
    own_labels = {cell.defense_label for cell in load_suite(suite_ref, data_root).cells}
    if entry_name in own_labels:
        raise UsageError(f"entry name '{entry_name}' is already a defense of suite '{suite_ref}'; "
                         f"choose another --name")
    suite = submission_suite(suite_ref, entry_name, entry.name, data_root)
    load_tasks(suite)
    # A new store whenever the plugin or the suite changes, so no outcome of older code is reused.
    store = Store(store_path or default_store_path(
        f"submissions/{suite.name}/{entry_name}-{plugin_sha[:10]}-{suite.sha256[:10]}"))
    sandbox = Sandbox(plugin, limits)
    try:
        run_suite(suite, store, cache_dir, sandbox=sandbox)
    finally:
        sandbox.close()
    failed = [r for r in store.cells(suite.name) if r.status in ("failed", "not_run")]
    if failed:
        reasons = "\n".join(f"  - {r.task} / {r.defense} / {r.attack or 'clean'}: {r.reason}"
                            for r in failed)
        raise UsageError(f"{len(failed)} cell(s) of the submission failed, so nothing was written:\n"
                         f"{reasons}\nFix the defense and run the same command again (finished "
                         f"cells are kept in {store.path}).")
    board = build_leaderboard(store, suite.name)
    results = {"tables": board["tables"]}
    submission = {
        "format": FORMAT,
        "entry": entry_name,
        "suite": suite.name,
        "suite_file": repo_relative(suite.path),
        "suite_sha256": suite.sha256,
        "defense": {"name": entry.name, "tags": entry.tags,
                    "config": {cell.task_label: cell.defense.params for cell in suite.cells
                               if cell.attack is None}},
        "plugin": {"file": repo_relative(plugin), "sha256": plugin_sha},
        "submitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "manifest": board["manifest"],
        "results": results,
        "results_sha256": results_hash(results),
    }
    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "leaderboards" / suite.name / "submissions"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{entry_name}.json"
    path.write_text(json.dumps(submission, indent=1, sort_keys=True) + "\n")
    return path


def read_submission(path: Path) -> dict:
    path = Path(path)
    try:
        submission = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"submission file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not a submission file (invalid JSON: {error})") from None
    if not isinstance(submission, dict) or submission.get("format") != FORMAT:
        raise UsageError(f"{path} is not an rbench submission (expected \"format\": \"{FORMAT}\")")
    return submission


def load_submissions(directory: Path, suite: str) -> list[dict]:
    """Every submission JSON in `directory`, each checked against its results hash."""
    submissions = []
    for path in sorted(Path(directory).glob("*.json")):
        submission = read_submission(path)
        if submission["suite"] != suite:
            raise UsageError(f"{path} is a submission to suite '{submission['suite']}', not '{suite}'")
        if results_hash(submission["results"]) != submission["results_sha256"]:
            raise UsageError(f"{path}: its results do not match their results_sha256 (edited after "
                             f"submission?); run `rbench submit` again or remove the file")
        submissions.append(submission)
    return submissions


# Verifying -------------------------------------------------------------------------------------
def verify(path: Path, examples: int = 50, seed: int = 0, plugin_file: Path | None = None,
           data_root=None, cache_dir: Path | None = None, alpha: float = VERIFY_ALPHA,
           limits: SandboxLimits = SandboxLimits()) -> tuple[bool, str]:
    """Check a submission's hashes and re-run `examples` seeded examples of each cell (the defense
    sandboxed, as when it was submitted). Returns (passed, report)."""
    sandbox = Sandbox(plugin_file or resolve_recorded(read_submission(path)["plugin"]["file"]), limits)
    try:
        return _verify(path, examples, seed, plugin_file, data_root, cache_dir, alpha, sandbox)
    finally:
        sandbox.close()


def _verify(path: Path, examples: int, seed: int, plugin_file: Path | None, data_root,
            cache_dir: Path | None, alpha: float, sandbox: Sandbox) -> tuple[bool, str]:
    from benchmark.data import load_task
    from benchmark.evaluate import batch_seed, evaluate_batch, make_attack, sample_indices
    from benchmark.leaderboard import cell_metrics
    from benchmark.stats import clopper_pearson
    from benchmark.store import OUTCOME_COLUMNS

    if examples < 1:
        raise UsageError(f"--examples must be at least 1, got {examples}")
    submission = read_submission(path)
    lines, problems = [], []
    if results_hash(submission["results"]) != submission["results_sha256"]:
        problems.append("results hash: MISMATCH: the results were changed after submission")
    else:
        lines.append(f"results hash: ok ({submission['results_sha256'][:16]})")
    plugin = Path(plugin_file) if plugin_file else resolve_recorded(submission["plugin"]["file"])
    if not plugin.is_file():
        raise UsageError(f"plugin file {plugin} not found; pass its path with --plugin-file")
    if plugin_sha256(plugin) != submission["plugin"]["sha256"]:
        problems.append(f"plugin hash: MISMATCH: {plugin} (or a local module it imports) is not "
                        f"the code that was submitted")
    else:
        lines.append(f"plugin hash: ok ({submission['plugin']['sha256'][:16]}, {plugin})")
    if problems:
        return False, "\n".join(lines + problems)

    entry = load_defense_plugin(plugin)
    if entry.name != submission["defense"]["name"]:
        return False, "\n".join(lines + [f"the plugin registers defense '{entry.name}', the "
                                         f"submission was made with '{submission['defense']['name']}'"])
    suite = submission_suite(str(resolve_recorded(submission["suite_file"])), submission["entry"],
                             entry.name, data_root)
    if suite.sha256 != submission["suite_sha256"]:
        return False, "\n".join(lines + [f"suite file {suite.path} changed since the submission "
                                         f"(sha256 {suite.sha256[:12]}, submitted "
                                         f"{submission['suite_sha256'][:12]}): not comparable"])
    recorded = {(table["task"], table["threat_id"]): row
                for table in submission["results"]["tables"] for row in table["rows"]}
    checks, defended_by_task = [], {}
    for cell in suite.cells:
        row = recorded.get((cell.task_label, cell.threat_id))
        if row is None:
            problems.append(f"{cell.describe()}: the submission has no results for this cell")
            continue
        task = load_task(cell.task, suite.data_root)
        indices = sample_indices(len(task.test), cell.protocol.n_examples, cell.protocol.seed)
        # The same seeded subsample for every cell of a task, so its clean accuracies agree.
        subsample = np.sort(np.random.default_rng(seed).choice(
            indices, size=min(examples, len(indices)), replace=False))
        if cell.task_label not in defended_by_task:  # one build per task, as every cell shares it
            defended_by_task[cell.task_label] = sandbox.model(cell, task, cache_dir or default_cache_dir())
        defended = defended_by_task[cell.task_label]
        attack = make_attack(cell) if cell.attack is not None else None
        outcomes = []
        size = cell.protocol.batch_size
        for batch_index, start in enumerate(range(0, len(subsample), size)):
            batch = subsample[start:start + size]
            rows = evaluate_batch(cell, defended, attack, task.test.inputs(batch), task.test.ys[batch],
                                  batch, batch_seed(cell.protocol.seed, cell.id, batch_index),
                                  task.num_classes)
            outcomes += [{column: r.get(column) for column in OUTCOME_COLUMNS} for r in rows]
        rerun = cell_metrics(outcomes, attack is not None)
        for name, metric in row["metrics"].items():
            if "successes" in metric and metric["n"] and name in rerun and rerun[name]["n"]:
                checks.append((cell, name, metric, rerun[name]))
    level = alpha / max(len(checks), 1)
    table = []
    for cell, name, submitted, again in checks:
        low, high = clopper_pearson(again["successes"], again["n"], level)
        agrees = low - 1e-12 <= submitted["value"] <= high + 1e-12
        if not agrees:
            problems.append(f"{cell.describe()}: {name} {100 * submitted['value']:.1f}% lies outside "
                            f"the re-run's interval [{100 * low:.1f}, {100 * high:.1f}]")
        table.append([cell.task_label, cell.threat_id, name,
                      f"{100 * submitted['value']:.1f} (n={submitted['n']})",
                      f"{100 * again['value']:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n={again['n']})",
                      "ok" if agrees else "DISAGREES"])
    lines.append(f"re-ran up to {examples} seeded examples per cell (seed {seed}); each submitted "
                 f"rate must lie in the re-run's "
                 f"Clopper-Pearson interval at level {alpha:g}/{len(checks)} (Bonferroni)")
    lines.append(tabulate(table, ["task", "threat model", "metric", "submitted %", "re-run % [interval]",
                                  "verdict"], tablefmt="github"))
    lines += problems
    lines.append("verified" if not problems else f"NOT verified: {len(problems)} problem(s)")
    return not problems, "\n".join(lines)
