"""Task loading: every task is a registered loader `load(seed=..., data_root=..., **params) -> Task`."""
from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path

from benchmark.data.base import Example, Split, SubstitutionTable, Task  # noqa: F401
from benchmark.data import embedded, real  # noqa: F401  (register the embedded and real tasks)
from benchmark.errors import UsageError
from benchmark.specs import TaskSpec


def load_task(spec: TaskSpec, data_root: str | Path | None = None) -> Task:
    return _load_task_cached(spec, str(data_root) if data_root else None)


@lru_cache(maxsize=16)
def _load_task_cached(spec: TaskSpec, data_root: str | None) -> Task:
    from benchmark.registry import TASKS

    loader = TASKS.get(spec.name).obj
    params = spec.params
    accepted = inspect.signature(loader).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(p for p in accepted if p != "data_root")
        raise UsageError(f"task '{spec.name}' has no parameter(s) {', '.join(unknown)}; "
                         f"valid parameters: {valid}")
    return loader(data_root=Path(data_root) if data_root else None, **params)
