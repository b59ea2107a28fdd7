"""`rbench`: list components, run a suite, write its leaderboard. Usage errors exit with status 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.paths import REPO_ROOT, default_store_path


def command_list(args) -> int:
    from benchmark.registry import REGISTRIES

    registry = REGISTRIES[args.kind]
    for entry in registry.entries():
        tags = ", ".join(f"{k}={v}" for k, v in sorted(entry.tags.items()) if v not in (None, False))
        doc = (entry.obj.__doc__ or "").strip().splitlines()
        print(f"{entry.name:<18} {tags:<40} {doc[0] if doc else ''}")
    return 0


def command_run(args) -> int:
    from benchmark.evaluate import run_suite
    from benchmark.store import Store
    from benchmark.suite import load_suite

    suite = load_suite(args.suite, args.data_root)
    store = Store(args.store or default_store_path(suite.name))
    cache = Path(args.cache) if args.cache else None
    if args.executor == "ray":
        from benchmark.ray_executor import run_suite_ray

        counts = run_suite_ray(suite, store, cache, args.address, args.num_cpus)
    else:
        if args.address or args.num_cpus:
            raise UsageError("--address and --num-cpus are for --executor ray")
        counts = run_suite(suite, store, cache)
    print(f"suite {suite.name}: {len(suite.cells)} cells, " +
          ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f"; store {store.path}")
    return 1 if counts.get("failed") else 0


def command_leaderboard(args) -> int:
    from benchmark.leaderboard import write_leaderboard
    from benchmark.store import Store
    from benchmark.suite import load_suite

    suite = load_suite(args.suite)
    store_path = Path(args.store or default_store_path(suite.name))
    if not store_path.exists():
        raise UsageError(f"no results store at {store_path}; run `rbench run {args.suite}` first")
    out_dir = Path(args.out) if args.out else REPO_ROOT / "leaderboards" / suite.name
    board = write_leaderboard(Store(store_path), suite.name, out_dir)
    print(f"wrote {len(board['tables'])} tables to {out_dir}/leaderboard.{{md,csv,json}}")
    print((out_dir / "leaderboard.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbench", description=__doc__)
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="load a file that registers defenses/attacks (repeatable)")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list registered components")
    listing.add_argument("kind", choices=["defenses", "attacks", "tasks", "models", "poisoners"])
    listing.set_defaults(handler=command_list)

    run = commands.add_parser("run", help="run a suite (resumes where a previous run stopped)")
    run.add_argument("suite", help="a built-in suite name (e.g. mini) or a .toml path")
    run.add_argument("--store", help="results store (default: results/<suite>.sqlite)")
    run.add_argument("--data-root", help="directory holding local copies of the real datasets")
    run.add_argument("--cache", help="cache directory for trained models (default: .cache/rbench)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local (default): this process; ray: cells and batches as Ray tasks")
    run.add_argument("--address", help="Ray cluster to use (e.g. auto, ray://head:10001); "
                     "default: start a local Ray instance")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    run.set_defaults(handler=command_run)

    board = commands.add_parser("leaderboard", help="write leaderboards/<suite>/ from the store")
    board.add_argument("suite")
    board.add_argument("--store")
    board.add_argument("--out", help="output directory (default: leaderboards/<suite>)")
    board.set_defaults(handler=command_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from benchmark.registry import load_plugin_file

        for plugin in args.plugin:
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
