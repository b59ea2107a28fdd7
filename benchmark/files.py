"""Writing output files: atomically (a temporary file renamed into place, so a run killed mid-write
leaves the old file or the new one, never half of one) and, for JSON, strictly (no NaN or Infinity,
which are not JSON)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial{os.getpid()}")
    try:
        with partial.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: Path, value) -> None:
    """The suite's JSON output format: indented, sorted keys, strict."""
    write_text(path, json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + "\n")
