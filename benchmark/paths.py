"""Where the suite keeps its files: the cache (trained models, tool data) and results stores."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    return Path(os.environ.get("RBENCH_CACHE", REPO_ROOT / ".cache" / "rbench"))


def default_store_path(suite_name: str) -> Path:
    return Path(os.environ.get("RBENCH_RESULTS", REPO_ROOT / "results")) / f"{suite_name}.sqlite"
