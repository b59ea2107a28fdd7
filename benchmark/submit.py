"""Submitting a defense to a suite's leaderboard, and verifying a submission.

`rbench submit defense.py --suite S --name E` checks the file against the defense contract, runs the
suite's tasks, attacks and protocol for that one defense (the harness computes every number; the
plugin only builds the model), and writes `leaderboards/S/submissions/E.json`: the results, a hash
of every example's outcome, the run manifest, and SHA-256 hashes of the plugin file and of the
results. A name already used by another plugin file is refused unless `--replace` is given.
`rbench leaderboard S` merges every submission whose results hash and rates check out and whose
suite file is the current one; a stale submission (the suite file changed since) is left out and
named in the command's output.

`rbench verify E.json` checks both hashes and recomputes every rate from its successes and n (value
and interval), then re-runs the submission's cells, backdoor cells through the backdoor path, batch
by batch exactly as `rbench run` does: a batch is seeded by its cell and position alone, so a
faithful submission's re-run reproduces every example's outcome exactly. Every re-run example's
outcome hash must equal the submitted one, and, when every batch is re-run (the default), every
metric must equal the one recomputed from the re-run's outcomes.
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
from benchmark.files import write_json
from benchmark.paths import REPO_ROOT, default_cache_dir, default_leaderboard_dir, default_store_path
from benchmark.registry import DEFENSES, load_plugin_file, plugin_sha256
from benchmark.sandbox import Sandbox, SandboxLimits
from benchmark.specs import canonical_json, content_hash

FORMAT = "rbench-submission/2"
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODALITIES = ("text", "image", "any")


def results_hash(results: dict) -> str:
    return hashlib.sha256(canonical_json(results).encode()).hexdigest()


def recorded_path(path: Path) -> str:
    """A file as a submission records it: relative to the repository when inside it, else its
    name alone (its hash identifies it), so a submission never holds a path of this machine."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.name


def resolve_recorded(recorded: str, submission_path: Path, given: Path | None, option: str) -> Path:
    """The file a submission records: `given` (the command-line option), else the recorded path in
    this repository, else a file of that name next to the submission."""
    if given is not None:
        candidates = [Path(given)]
    else:
        candidates = [REPO_ROOT / recorded, Path(submission_path).parent / Path(recorded).name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError(f"{candidates[0]} not found (the submission records {recorded!r}); pass the "
                     f"file's path with {option}")


def outcome_hash(outcome: dict) -> str:
    """One example's outcome (every stored column), as the results store holds it."""
    from benchmark.store import OUTCOME_COLUMNS

    return content_hash([_stored(outcome.get(column), column) for column in OUTCOME_COLUMNS])


def _stored(value, column: str):
    """A value as it reads back from the results store: numpy scalars as Python numbers, `extra`
    as its JSON, an empty `extra` as {}."""
    if column == "extra":
        return json.loads(canonical_json(value)) if value else {}
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return value.item() if hasattr(value, "item") else value


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
           limits: SandboxLimits = SandboxLimits(), replace: bool = False) -> Path:
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
    out_dir = Path(out_dir) if out_dir else default_leaderboard_dir(suite.name) / "submissions"
    path = out_dir / f"{entry_name}.json"
    if path.exists() and not replace:
        earlier = read_submission(path)["plugin"]
        if earlier["sha256"] != plugin_sha:
            raise UsageError(f"{path} is the submission of another plugin file ({earlier['file']}, "
                             f"sha256 {earlier['sha256'][:12]}); choose another --name, or pass "
                             f"--replace to overwrite it")
    load_tasks(suite)
    # A new store whenever the plugin or the suite changes, so no outcome of older code is reused.
    store = Store(store_path or default_store_path(
        f"submissions/{suite.name}/{entry_name}-{plugin_sha[:10]}-{suite.sha256[:10]}"))
    sandbox = Sandbox(plugin, limits)
    try:
        run_suite(suite, store, cache_dir, sandbox=sandbox)
    finally:
        sandbox.close()
    # A cell the suite cannot run here, or whose attack does not apply to this defense (an EOT
    # attack on a deterministic one), is "not run" with its reason, as for the suite's own rows;
    # a failed cell stops the submission.
    failed = [r for r in store.cells(suite.name) if r.status == "failed"]
    if failed:
        reasons = "\n".join(f"  - {r.task} / {r.defense} / {r.attack or 'clean'}: {r.reason}"
                            for r in failed)
        limit = " or raise the sandbox limit it hit (--time-limit, --memory-limit)" if any(
            "-limit" in (r.reason or "") for r in failed) else ""
        raise UsageError(f"{len(failed)} cell(s) of the submission failed, so nothing was written:\n"
                         f"{reasons}\nFix the defense{limit} and run the same command again "
                         f"(finished cells are kept in {store.path}).")
    cell_ids = {cell.id for cell in suite.cells}
    board = build_leaderboard(store, suite.name, cell_ids=cell_ids)
    not_run = [{"cell_id": r.cell_id, "task": r.task, "attack": r.attack, "reason": r.reason}
               for r in store.cells(suite.name) if r.status == "not_run" and r.cell_id in cell_ids]
    results = {"tables": board["tables"], "not_run": not_run,
               "outcome_hashes": {cell_id: [outcome_hash(o) for o in store.outcomes(cell_id)]
                                  for cell_id in sorted(cell_ids)}}
    submission = {
        "format": FORMAT,
        "entry": entry_name,
        "suite": suite.name,
        "suite_file": recorded_path(suite.path),
        "suite_sha256": suite.sha256,
        "defense": {"name": entry.name, "tags": entry.tags,
                    "config": {cell.task_label: cell.defense.params for cell in suite.cells
                               if cell.attack is None and cell.poison is None}},
        "plugin": {"file": recorded_path(plugin), "sha256": plugin_sha},
        "submitted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "manifest": board["manifest"],
        "results": results,
        "results_sha256": results_hash(results),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, submission)
    return path


def read_submission(path: Path) -> dict:
    path = Path(path)
    try:
        submission = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"submission file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory; pass a submission .json file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not a submission file (invalid JSON: {error})") from None
    if not isinstance(submission, dict) or submission.get("format") != FORMAT:
        raise UsageError(f"{path} is not an rbench submission in the current format (expected "
                         f"\"format\": \"{FORMAT}\"); submit the defense again with `rbench submit`")
    return submission


def rate_problems(submission: dict) -> list[str]:
    """Every rate recomputed from its successes and n: its value, and its interval (the report's
    Clopper-Pearson level); a value outside its own interval, or one that is not successes / n, is
    a problem."""
    from benchmark.leaderboard import REPORT_ALPHA
    from benchmark.stats import rate

    problems = []
    for table in submission["results"]["tables"]:
        for row in table["rows"]:
            for name, metric in row["metrics"].items():
                if "successes" not in metric:
                    continue
                where = f"{table['task']} / {table['threat_id']}: {name}"
                successes, n = metric["successes"], metric["n"]
                if not (isinstance(successes, int) and isinstance(n, int) and 0 <= successes <= n):
                    problems.append(f"{where}: {successes!r} successes of n = {n!r} is not a count")
                    continue
                expected = rate(successes, n, REPORT_ALPHA).to_dict()
                value, low, high = metric.get("value"), metric.get("low"), metric.get("high")
                if value is not None and None not in (low, high) and not low <= value <= high:
                    problems.append(f"{where}: value {value!r} lies outside its own interval "
                                    f"[{low!r}, {high!r}]")
                elif {key: metric.get(key) for key in expected} != expected:
                    problems.append(f"{where}: {metric} is not what {successes} of {n} gives "
                                    f"({expected})")
    return problems


def load_submissions(directories: list[Path], suite) -> tuple[list[tuple[Path, dict]], list[str]]:
    """The submissions to merge into `suite`'s leaderboard: every JSON file in `directories` (an
    entry once, the first directory first), each checked against its results hash and its rates.
    A stale submission (made with another version of the suite file) is left out; returns (path,
    submission) pairs and a note on each one left out."""
    submissions, notes, seen = [], [], set()
    for directory in directories:
        for path in sorted(Path(directory).glob("*.json")):
            submission = read_submission(path)
            if submission["entry"] in seen:
                continue
            if submission["suite"] != suite.name:
                raise UsageError(f"{path} is a submission to suite '{submission['suite']}', not "
                                 f"'{suite.name}'")
            if results_hash(submission["results"]) != submission["results_sha256"]:
                raise UsageError(f"{path}: its results do not match their results_sha256 (edited "
                                 f"after submission?); run `rbench submit` again or remove the file")
            problems = rate_problems(submission)
            if problems:
                raise UsageError(f"{path}: its rates do not follow from their counts:\n  - "
                                 + "\n  - ".join(problems) + "\nrun `rbench submit` again or "
                                 "remove the file")
            seen.add(submission["entry"])
            if submission["suite_sha256"] != suite.sha256:
                notes.append(f"left out stale submission {path}: made with another version of "
                             f"the suite file (sha256 {submission['suite_sha256'][:12]}, now "
                             f"{suite.sha256[:12]}); submit it again with --replace")
                continue
            submissions.append((path, submission))
    return submissions, notes


# Verifying -------------------------------------------------------------------------------------
def verify(path: Path, examples: int | None = None, seed: int = 0, plugin_file: Path | None = None,
           suite_file: Path | None = None, data_root=None, cache_dir: Path | None = None,
           limits: SandboxLimits = SandboxLimits()) -> tuple[bool, str]:
    """Check a submission's hashes and rates, then re-run its cells (every batch, or seeded
    batches covering at least `examples` examples per cell), the defense sandboxed as when it was
    submitted. Returns (passed, report)."""
    if examples is not None and examples < 1:
        raise UsageError(f"--examples must be at least 1, got {examples}")
    submission = read_submission(path)
    lines, problems = [], []
    if results_hash(submission["results"]) != submission["results_sha256"]:
        problems.append("results hash: MISMATCH: the results were changed after submission")
    else:
        lines.append(f"results hash: ok ({submission['results_sha256'][:16]})")
    problems += [f"rates: {problem}" for problem in rate_problems(submission)]
    plugin = resolve_recorded(submission["plugin"]["file"], path, plugin_file, "--plugin-file")
    if plugin_sha256(plugin) != submission["plugin"]["sha256"]:
        problems.append(f"plugin hash: MISMATCH: {plugin} (or a local module it imports) is not "
                        f"the code that was submitted")
    else:
        lines.append(f"plugin hash: ok ({submission['plugin']['sha256'][:16]}, {plugin})")
    if problems:
        return False, "\n".join(lines + problems + [f"NOT verified: {len(problems)} problem(s)"])

    entry = load_defense_plugin(plugin)
    if entry.name != submission["defense"]["name"]:
        return False, "\n".join(lines + [f"the plugin registers defense '{entry.name}', the "
                                         f"submission was made with '{submission['defense']['name']}'"])
    suite_path = resolve_recorded(submission["suite_file"], path, suite_file, "--suite-file")
    suite = submission_suite(str(suite_path), submission["entry"], entry.name, data_root)
    if suite.sha256 != submission["suite_sha256"]:
        return False, "\n".join(lines + [f"suite file {suite.path} changed since the submission "
                                         f"(sha256 {suite.sha256[:12]}, submitted "
                                         f"{submission['suite_sha256'][:12]}): not comparable"])
    sandbox = Sandbox(plugin, limits)
    try:
        table, problems = _rerun(submission, suite, entry, examples, seed, cache_dir, sandbox)
    finally:
        sandbox.close()
    scope = ("every batch of every cell" if examples is None else
             f"seeded batches (seed {seed}) covering at least {examples} examples per cell; a "
             f"changed outcome outside them is not detected")
    lines.append(f"re-ran {scope}, as `rbench run` does (backdoor cells on the poisoned training "
                 f"split); every re-run example's outcome must equal the submitted one"
                 + (", and every metric the one recomputed from the re-run" if examples is None
                    else ""))
    lines.append(tabulate(table, ["task", "threat model", "examples re-run", "outcomes equal",
                                  "metrics", "verdict"], tablefmt="github"))
    lines += problems
    lines.append("verified" if not problems else f"NOT verified: {len(problems)} problem(s)")
    return not problems, "\n".join(lines)


def _still_not_run(cell, task, reason: str, cache_dir: Path, sandbox: Sandbox) -> list[str]:
    """A cell submitted as not run must still raise NotRun on its first batch, with that reason."""
    from benchmark.errors import NotRun
    from benchmark.evaluate import cell_batches, defended_model, make_attack, prepare_attack, run_batch

    try:
        defended = defended_model(cell, task, cache_dir, None, sandbox)
        attack = make_attack(cell) if cell.attack is not None else None
        if attack is not None:
            prepare_attack(attack, cell, task, cache_dir)
        run_batch(cell, defended, attack, task, cell_batches(cell, task), 0)
    except NotRun as error:
        return [] if str(error) == reason else [f"{cell.describe()}: submitted as not run "
                                                 f"({reason}), now not run because {error}"]
    return [f"{cell.describe()}: submitted as not run ({reason}), but it runs"]


def _rerun(submission: dict, suite, entry, examples: int | None, seed: int,
           cache_dir: Path | None, sandbox: Sandbox) -> tuple[list[list[str]], list[str]]:
    """Re-run the chosen batches of every cell; returns the report's table and the problems."""
    from benchmark.evaluate import (backdoor_batch_rows, cell_batches, defended_model, load_tasks,
                                    make_attack, make_poisoner, prepare_attack, run_batch)
    from benchmark.leaderboard import backdoor_metrics, cell_metrics, certified_curve
    from benchmark.store import OUTCOME_COLUMNS

    cache_dir = cache_dir or default_cache_dir()
    tasks = load_tasks(suite)
    unit = entry.tags.get("unit")
    rows = {row["cell_id"]: (table, row) for table in submission["results"]["tables"]
            for row in table["rows"]}
    hashes = submission["results"].get("outcome_hashes", {})
    not_run = {entry["cell_id"]: entry["reason"] for entry in submission["results"].get("not_run", [])}
    report, problems = [], []
    for cell in suite.cells:
        where = cell.describe()
        if cell.id in not_run:  # it must still not run, for the reason given
            found = _still_not_run(cell, tasks[cell.task_label], not_run[cell.id], cache_dir, sandbox)
            problems += found
            report.append([cell.task_label, cell.attack_label, 0, "-", "not run",
                           "DISAGREES" if found else "ok"])
            continue
        if cell.id not in rows or cell.id not in hashes:
            problems.append(f"{where}: the submission has no results for this cell")
            continue
        table, row = rows[cell.id]
        task = tasks[cell.task_label]
        batches = cell_batches(cell, task)
        if len(hashes[cell.id]) != sum(len(batch) for batch in batches):
            problems.append(f"{where}: {len(hashes[cell.id])} outcome hashes for "
                            f"{sum(len(batch) for batch in batches)} examples")
            continue
        chosen = chosen_batches(batches, examples, seed)
        if cell.poison is not None:
            rerun = dict(backdoor_batch_rows(cell, make_poisoner(cell), task, batches, chosen,
                                             cache_dir, sandbox=sandbox))
        else:
            defended = defended_model(cell, task, cache_dir, None, sandbox)
            attack = make_attack(cell) if cell.attack is not None else None
            if attack is not None:
                prepare_attack(attack, cell, task, cache_dir)
            rerun = {b: run_batch(cell, defended, attack, task, batches, b) for b in chosen}
        submitted = dict(zip(np.concatenate(batches).tolist(), hashes[cell.id]))
        outcomes = [{column: _stored(o.get(column), column) for column in OUTCOME_COLUMNS}
                    for b in chosen for o in rerun[b]]
        differing = [o["example_index"] for o in outcomes
                     if outcome_hash(o) != submitted.get(o["example_index"])]
        if differing:
            problems.append(f"{where}: {len(differing)} of {len(outcomes)} re-run examples have "
                            f"another outcome than submitted (test examples "
                            f"{', '.join(map(str, differing[:10]))}{', ...' if len(differing) > 10 else ''})")
        metrics = "not compared (a subsample)"
        if examples is None:
            backdoor = cell.poison is not None
            again = {"metrics": backdoor_metrics(outcomes) if backdoor else
                     cell_metrics(outcomes, cell.attack is not None, unit)}
            curve = certified_curve(outcomes)
            if curve is not None:
                again["certified_curve"] = curve
            submitted_row = {key: row[key] for key in ("metrics", "certified_curve") if key in row}
            metrics = "equal" if json.loads(canonical_json(again)) == submitted_row else "DIFFER"
            if metrics == "DIFFER":
                wrong = sorted(k for k in set(again["metrics"]) | set(row["metrics"])
                               if json.loads(canonical_json(again["metrics"].get(k)))
                               != row["metrics"].get(k))
                problems.append(f"{where}: submitted metrics differ from the re-run's: "
                                f"{', '.join(wrong) or 'certified_curve'}")
        verdict = "ok" if not differing and metrics != "DIFFER" else "DISAGREES"
        report.append([cell.task_label, table["threat_id"], len(outcomes),
                       f"{len(outcomes) - len(differing)}/{len(outcomes)}", metrics, verdict])
    return report, problems


def chosen_batches(batches: list, examples: int | None, seed: int) -> list[int]:
    """Every batch, or a seeded choice of whole batches (the unit a run seeds) holding at least
    `examples` examples, in order."""
    if examples is None:
        return list(range(len(batches)))
    order = np.random.default_rng(seed).permutation(len(batches))
    chosen, covered = [], 0
    for index in order:
        if covered >= examples:
            break
        chosen.append(int(index))
        covered += len(batches[index])
    return sorted(chosen)
