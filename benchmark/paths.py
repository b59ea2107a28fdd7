"""Where the suite keeps its files: the cache (trained models, tool data), results stores and
leaderboards (each overridable by an environment variable, as the tests do)."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    return Path(os.environ.get("RBENCH_CACHE", REPO_ROOT / ".cache" / "rbench"))


def default_store_path(suite_name: str) -> Path:
    return Path(os.environ.get("RBENCH_RESULTS", REPO_ROOT / "results")) / f"{suite_name}.sqlite"


def default_leaderboard_dir(suite_name: str) -> Path:
    """A suite's leaderboard folder; its `submissions/` folder holds the suite's submissions."""
    return Path(os.environ.get("RBENCH_LEADERBOARDS", REPO_ROOT / "leaderboards")) / suite_name
