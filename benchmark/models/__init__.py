"""Architectures, registered by name; `build_model(spec, task)` instantiates one for a task."""
from __future__ import annotations

import inspect

from torch import nn

from benchmark.errors import UsageError
from benchmark.models import text, vision, hf, resnet  # noqa: F401  (registers the architectures)
from benchmark.specs import ModelSpec


def build_model(spec: ModelSpec, task) -> nn.Module:
    from benchmark.registry import MODELS

    entry = MODELS.get(spec.name)
    if entry.tags["modality"] != task.modality:
        raise UsageError(f"model '{spec.name}' is for {entry.tags['modality']} tasks but task "
                         f"'{task.name}' is {task.modality}; pick a {task.modality} model")
    accepted = inspect.signature(entry.obj).parameters
    unknown = sorted(set(spec.params) - set(accepted))
    if unknown:
        raise UsageError(f"model '{spec.name}' has no parameter(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(p for p in accepted if p != 'task')}")
    return entry.obj(task, **spec.params)
