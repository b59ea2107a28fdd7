"""`rbench`: list components, run a suite, write its leaderboard. Usage errors exit with status 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.files import write_text
from benchmark.paths import default_leaderboard_dir, default_store_path


def command_list(args) -> int:
    from benchmark.registry import REGISTRIES

    registry = REGISTRIES[args.kind]
    for entry in registry.entries():
        tags = ", ".join(f"{k}={v}" for k, v in sorted(entry.tags.items()) if v not in (None, False))
        doc = (entry.obj.__doc__ or "").strip().splitlines()
        print(f"{entry.name:<18} {tags:<40} {doc[0] if doc else ''}")
    return 0


def command_run(args) -> int:
    from benchmark.evaluate import load_tasks, run_suite
    from benchmark.store import Store
    from benchmark.suite import load_suite

    suite = load_suite(args.suite, args.data_root)
    if args.task:
        suite = select_tasks(suite, args.task)
    load_tasks(suite)
    if args.executor != "ray" and (args.address or args.num_cpus):
        raise UsageError("--address and --num-cpus are for --executor ray")
    store = Store(args.store or default_store_path(suite.name))
    cache = Path(args.cache) if args.cache else None
    try:
        if args.executor == "ray":
            from benchmark.ray_executor import run_suite_ray

            counts = run_suite_ray(suite, store, cache, args.address, args.num_cpus)
        else:
            counts = run_suite(suite, store, cache)
        print_time_spent(store.cell_seconds(suite.name))
    finally:
        store.close()  # the last connection's close folds the write-ahead log into the file
    print(f"suite {suite.name}: {len(suite.cells)} cells, " +
          ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f"; store {store.path}")
    return 1 if counts.get("failed") else 0


def select_tasks(suite, task_labels: list[str]):
    """The suite restricted to the named tasks' cells, in the suite's order. A run split this way
    writes the same cells (same ids) as a whole run, so its store completes the suite's board."""
    from dataclasses import replace

    labels = list(dict.fromkeys(cell.task_label for cell in suite.cells))
    unknown = [label for label in task_labels if label not in labels]
    if unknown:
        raise UsageError(f"suite {suite.name} has no task {', '.join(unknown)}; "
                         f"its tasks are {', '.join(labels)}")
    return replace(suite, cells=[cell for cell in suite.cells if cell.task_label in task_labels])


def print_time_spent(cells: list[dict], slowest: int = 10) -> None:
    """Where the store's recorded time went: totals by defense and attack, and the slowest cells
    (build: training on a cache miss, else loading; batches: evaluation)."""
    from tabulate import tabulate

    if not cells:
        return
    build = sum(cell["build"] for cell in cells)
    batches = sum(cell["batches"] for cell in cells)
    print(f"\ntime recorded in the store: {build + batches:.0f} s over {len(cells)} cells "
          f"(model builds {build:.0f} s, batches {batches:.0f} s)")
    for part in ("defense", "attack"):
        totals: dict[str, float] = {}
        for cell in cells:
            name = cell[part] or "clean"
            totals[name] = totals.get(name, 0.0) + cell["build"] + cell["batches"]
        ranked = sorted(totals.items(), key=lambda item: -item[1])
        print(f"by {part}: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in ranked))
    print(tabulate([[c["task"], c["defense"], c["attack"] or "clean", f"{c['build']:.1f}",
                     f"{c['batches']:.1f}"] for c in cells[:slowest]],
                   headers=["task", "defense", "attack", "build s", "batches s"]))


def command_merge(args) -> int:
    from benchmark.store import Store
    from benchmark.suite import load_suite

    suite = load_suite(args.suite)
    for source in args.sources:
        if not Path(source).is_file():
            raise UsageError(f"no results store at {source}")
    store = Store(args.store or default_store_path(suite.name))
    try:
        for source in args.sources:
            counts = store.merge(suite.name, source)
            print(f"{source}: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) +
                  f" merged into {store.path}")
    finally:
        store.close()
    return 0


def command_leaderboard(args) -> int:
    from benchmark.leaderboard import write_leaderboard
    from benchmark.reproduction import verdict_counts, write_reproduction
    from benchmark.store import Store
    from benchmark.submit import load_submissions
    from benchmark.suite import load_suite

    suite = load_suite(args.suite)
    store_path = Path(args.store or default_store_path(suite.name))
    if not store_path.is_file():
        raise UsageError(f"no results store at {store_path}; run `rbench run {args.suite}` first")
    suite_dir = default_leaderboard_dir(suite.name)
    out_dir = Path(args.out) if args.out else suite_dir
    # The suite's own submissions always, and those of the output directory: an entry once.
    loaded, notes = load_submissions([suite_dir / "submissions", out_dir / "submissions"], suite)
    for note in notes:
        print(f"rbench: {note}", file=sys.stderr)
    store = Store(store_path, read_only=True)
    cell_ids = {cell.id for cell in suite.cells}
    if not any(record.cell_id in cell_ids for record in store.cells(suite.name, "done")):
        raise UsageError(f"the store {store_path} has no finished cell of suite '{suite.name}' as "
                         f"the suite file stands, so no leaderboard was written; run `rbench run "
                         f"{args.suite} --store {store_path}` first")
    board = write_leaderboard(store, suite.name, out_dir, [s for _, s in loaded], cell_ids)
    for path, _ in loaded:  # the pages link each submission's file next to them
        copy = out_dir / "submissions" / path.name
        if copy.resolve() != path.resolve():
            copy.parent.mkdir(parents=True, exist_ok=True)
            write_text(copy, path.read_text())
    submissions = [s for _, s in loaded]
    print(f"wrote {len(board['tables'])} tables to {out_dir}/leaderboard.{{md,csv,json}}"
          + (f", with {len(submissions)} submitted entries" if submissions else ""))
    reproduction = write_reproduction(suite, store, out_dir)
    if reproduction is not None:
        print(f"wrote {out_dir / 'REPRODUCTION.md'}: {verdict_counts(reproduction)}")
    if args.html:
        from benchmark.site import write_site

        pages = write_site(board, out_dir, reproduction)
        print(f"wrote {len(pages)} pages; open {out_dir / 'index.html'} in a browser")
    print((out_dir / "leaderboard.md").read_text())
    return 0


def command_audit(args) -> int:
    from benchmark.audit import audit_config, audit_suite, format_report
    from benchmark.store import Store
    from benchmark.suite import load_suite

    overrides = {}
    for item in args.budget:
        key, _, value = item.partition("=")
        if not value.lstrip("-").isdigit():
            raise UsageError(f"--budget takes NAME=WHOLE_NUMBER, got {item!r}")
        overrides[key] = int(value)
    config = audit_config(overrides)
    suite = load_suite(args.suite, args.data_root)
    store_path = Path(args.store or default_store_path(suite.name))
    if not store_path.exists():
        raise UsageError(f"no results store at {store_path}; run `rbench run {args.suite}` first")
    summaries = audit_suite(suite, Store(store_path), config, Path(args.cache) if args.cache else None)
    print(format_report(summaries, config))
    return 1 if any(s["broken"] for s in summaries) else 0


def command_submit(args) -> int:
    from benchmark.submit import submit

    path = submit(args.defense_file, args.suite, args.name, Path(args.out) if args.out else None,
                  Path(args.store) if args.store else None, args.data_root,
                  Path(args.cache) if args.cache else None, sandbox_limits(args), args.replace)
    print(f"wrote {path}; `rbench leaderboard {args.suite}` merges it, `rbench verify {path}` "
          f"re-checks it")
    return 0


def command_verify(args) -> int:
    from benchmark.submit import verify

    passed, report = verify(Path(args.submission), args.examples, args.seed,
                            Path(args.plugin_file) if args.plugin_file else None,
                            Path(args.suite_file) if args.suite_file else None, args.data_root,
                            Path(args.cache) if args.cache else None, limits=sandbox_limits(args))
    print(report)
    return 0 if passed else 1


def sandbox_limits(args):
    from benchmark.sandbox import SandboxLimits

    for option, value in (("--time-limit", args.time_limit), ("--memory-limit", args.memory_limit)):
        if not value > 0:
            raise UsageError(f"{option} must be a positive number, got {value:g}")
    return SandboxLimits(args.time_limit, args.memory_limit)


def add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-limit", type=float, default=1800.0, metavar="SECONDS",
                        help="the sandboxed defense's limit per call, its build (training) "
                        "included (default 1800)")
    parser.add_argument("--memory-limit", type=float, default=8.0, metavar="GB",
                        help="the sandboxed defense's memory limit (default 8)")


def command_regress(args) -> int:
    from benchmark.regress import regress, write_baseline

    store = Path(args.store) if args.store else None
    cache = Path(args.cache) if args.cache else None
    if (args.baseline is None) == (args.write_baseline is None):
        raise UsageError("give exactly one of --baseline (compare with it) and --write-baseline "
                         "(run the suite and write its baseline)")
    if args.write_baseline is not None:
        if args.summary or args.junit:
            raise UsageError("--summary and --junit report a comparison: use them with --baseline")
        print(write_baseline(args.suite, Path(args.write_baseline), store, args.data_root, cache))
        return 0
    status, report = regress(args.suite, Path(args.baseline), store, args.alpha, args.data_root,
                             cache, Path(args.summary) if args.summary else None,
                             Path(args.junit) if args.junit else None)
    print(report)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbench", description=__doc__)
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="load a file that registers defenses/attacks (repeatable)")
    # --plugin is accepted after the subcommand too (its own dest: a subparser's default would
    # overwrite the value given before the subcommand).
    plugin_option = argparse.ArgumentParser(add_help=False)
    plugin_option.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                               dest="subcommand_plugins",
                               help="load a file that registers components (repeatable)")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", parents=[plugin_option],
                                  help="list registered components")
    listing.add_argument("kind", choices=["defenses", "attacks", "tasks", "models", "poisoners"])
    listing.set_defaults(handler=command_list)

    run = commands.add_parser("run", parents=[plugin_option],
                              help="run a suite (resumes where a previous run stopped)")
    run.add_argument("suite", help="a built-in suite name (e.g. mini) or a .toml path")
    run.add_argument("--store", help="results store (default: results/<suite>.sqlite)")
    run.add_argument("--data-root", help="directory holding local copies of the real datasets")
    run.add_argument("--cache", help="cache directory for trained models (default: .cache/rbench)")
    run.add_argument("--task", action="append", default=[], metavar="LABEL",
                     help="run only this task's cells (repeatable; default: every task)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local (default): this process; ray: cells and batches as Ray tasks")
    run.add_argument("--address", help="Ray cluster to use (e.g. auto, ray://head:10001); "
                     "default: start a local Ray instance")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    run.set_defaults(handler=command_run)

    merge = commands.add_parser("merge", help="copy the suite's finished cells from other stores "
                                "(e.g. `rbench run --task` on other machines) into this one")
    merge.add_argument("suite")
    merge.add_argument("sources", nargs="+", metavar="SOURCE", help="a results store to copy from")
    merge.add_argument("--store", help="the store to complete (default: results/<suite>.sqlite)")
    merge.set_defaults(handler=command_merge)

    board = commands.add_parser("leaderboard", parents=[plugin_option],
                                help="write leaderboards/<suite>/ from the store")
    board.add_argument("suite")
    board.add_argument("--store")
    board.add_argument("--out", help="output directory (default: leaderboards/<suite>)")
    board.add_argument("--html", action="store_true",
                       help="also write the static site (index.html and a page per table)")
    board.set_defaults(handler=command_leaderboard)

    audit = commands.add_parser("audit", parents=[plugin_option],
                                help="search for counterexamples to every certificate in the "
                                "store, inside its own threat model; exit 1 if a row's "
                                "certificates are broken")
    audit.add_argument("suite")
    audit.add_argument("--store")
    audit.add_argument("--data-root")
    audit.add_argument("--cache")
    audit.add_argument("--budget", action="append", default=[], metavar="NAME=N",
                       help="override a search budget (repeatable; see benchmark/audit.py "
                       "AUDIT_DEFAULTS)")
    audit.set_defaults(handler=command_audit)

    submit = commands.add_parser("submit", parents=[plugin_option],
                                 help="run a suite for one defense file and write its submission "
                                 "to leaderboards/<suite>/submissions/")
    submit.add_argument("defense_file", help="a .py file registering one defense")
    submit.add_argument("--suite", required=True)
    submit.add_argument("--name", required=True, help="the entry's name on the leaderboard")
    submit.add_argument("--replace", action="store_true",
                        help="overwrite an entry of that name made from another plugin file")
    submit.add_argument("--out", help="directory for the JSON (default: leaderboards/<suite>/submissions)")
    submit.add_argument("--store", help="results store (default: results/submissions/<suite>/...)")
    submit.add_argument("--data-root")
    submit.add_argument("--cache")
    add_sandbox_options(submit)
    submit.set_defaults(handler=command_submit)

    check = commands.add_parser("verify", parents=[plugin_option],
                                help="check a submission's hashes and rates, and re-run it "
                                "example by example")
    check.add_argument("submission", help="a submission JSON")
    check.add_argument("--examples", type=int, help="re-run seeded whole batches covering at least "
                       "this many examples per cell (a spot check; default: every batch)")
    check.add_argument("--seed", type=int, default=0, help="seed of the batch choice (default 0)")
    check.add_argument("--plugin-file", help="the defense file, if not at the recorded path")
    check.add_argument("--suite-file", help="the suite file, if not at the recorded path")
    check.add_argument("--data-root")
    check.add_argument("--cache")
    add_sandbox_options(check)
    check.set_defaults(handler=command_verify)

    gate = commands.add_parser("regress", parents=[plugin_option],
                               help="compare a suite's numbers with a baseline (exit 1 on a "
                               "significant regression), or write the baseline")
    gate.add_argument("--suite", required=True, help="a built-in suite name or a .toml path")
    gate.add_argument("--baseline", help="a baseline JSON written by --write-baseline")
    gate.add_argument("--write-baseline", metavar="PATH",
                      help="run the suite and write its baseline (per-example outcomes) to PATH")
    gate.add_argument("--store", help="read (and complete) this store instead of re-running in a "
                      "scratch store")
    gate.add_argument("--alpha", type=float, default=0.05,
                      help="family-wise significance level (default 0.05)")
    gate.add_argument("--summary", metavar="PATH", help="also write the report as Markdown (e.g. "
                      "$GITHUB_STEP_SUMMARY)")
    gate.add_argument("--junit", metavar="PATH", help="also write a JUnit XML report")
    gate.add_argument("--data-root")
    gate.add_argument("--cache")
    gate.set_defaults(handler=command_regress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from benchmark.registry import load_plugin_file

        for plugin in args.plugin + getattr(args, "subcommand_plugins", []):
            load_plugin_file(plugin)
        return args.handler(args)
    except UsageError as error:
        print(f"rbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rbench: interrupted; finished batches are saved and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
