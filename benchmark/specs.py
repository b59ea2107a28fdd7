"""Frozen specifications of what a cell is made of, with stable content hashes.

A spec is a registered name plus its parameters. Its hash is computed from canonical JSON, so two
specs with the same content hash the same on every machine and in every run.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Spec:
    """A registered component by name with its parameters (kept as canonical JSON so it is hashable)."""

    kind: str
    name: str
    params_json: str = "{}"

    @classmethod
    def make(cls, name: str, params: dict | None = None) -> "Spec":
        return cls(name=name, params_json=canonical_json(params or {}))  # type: ignore[call-arg]

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "params": self.params}

    @property
    def hash(self) -> str:
        return content_hash(self.to_dict())


@dataclass(frozen=True)
class TaskSpec(Spec):
    kind: str = field(default="task", init=False)
    name: str = ""
    params_json: str = "{}"


@dataclass(frozen=True)
class ModelSpec(Spec):
    kind: str = field(default="model", init=False)
    name: str = ""
    params_json: str = "{}"


@dataclass(frozen=True)
class DefenseSpec(Spec):
    kind: str = field(default="defense", init=False)
    name: str = ""
    params_json: str = "{}"


@dataclass(frozen=True)
class AttackSpec(Spec):
    kind: str = field(default="attack", init=False)
    name: str = ""
    params_json: str = "{}"

    @property
    def threat_id(self) -> str:
        """The threat model's identity: the attack and every parameter that constrains it."""
        return f"{self.name}-{self.hash[:8]}"


@dataclass(frozen=True)
class PoisonSpec(Spec):
    kind: str = field(default="poisoner", init=False)
    name: str = ""
    params_json: str = "{}"

    @property
    def threat_id(self) -> str:
        """The backdoor threat model's identity: the poisoner and its whole config (rate, target
        label, label mode, trigger, seed)."""
        return f"{self.name}-{self.hash[:8]}"


@dataclass(frozen=True)
class Protocol:
    """How a cell is evaluated: which test examples, in which batches, with which statistics."""

    seed: int = 0
    n_examples: int = 100
    batch_size: int = 50
    alpha: float = 0.05
    certify: bool = True
    # A randomized defense answers differently each time: its adversarial inputs are judged by
    # `judge_draws` fresh predictions, robust only if all are right (the first is the single-draw
    # figure). Left out of the dict at 1, so protocols without it keep their cell ids.
    judge_draws: int = 1

    def to_dict(self) -> dict:
        return {"seed": self.seed, "n_examples": self.n_examples, "batch_size": self.batch_size,
                "alpha": self.alpha, "certify": self.certify,
                **({"judge_draws": self.judge_draws} if self.judge_draws != 1 else {})}


@dataclass(frozen=True)
class Cell:
    """One unit of evaluation. `attack` None means clean accuracy (and certification, if offered).

    A backdoor cell has `poison` set and no attack: the defense is built on the poisoned training
    split, and `attack_label` is the poisoner's suite label.
    `task_label`, `defense_label` and `attack_label` are the suite's entry names, shown on
    leaderboards; the hashes of the specs, not the labels, identify the cell in the store.
    `train_seed` is a training-seed replicate's seed (a suite defense's `seeds`); None trains with
    the task's seed, as every cell did before replicates, and is left out of the dict so those
    cells keep their ids.
    """

    task: TaskSpec
    model: ModelSpec
    defense: DefenseSpec
    attack: AttackSpec | None
    protocol: Protocol
    task_label: str
    defense_label: str
    attack_label: str | None = None
    poison: PoisonSpec | None = None
    train_seed: int | None = None

    def to_dict(self) -> dict:
        return {
            "task": self.task.to_dict(), "model": self.model.to_dict(),
            "defense": self.defense.to_dict(),
            "attack": self.attack.to_dict() if self.attack else None,
            "poison": self.poison.to_dict() if self.poison else None,
            "protocol": self.protocol.to_dict(),
            **({"train_seed": self.train_seed} if self.train_seed is not None else {}),
        }

    @property
    def training_seed(self) -> int:
        """The seed the defense trains with: the replicate's, else the task's."""
        return self.train_seed if self.train_seed is not None else self.task.params.get("seed", 0)

    @functools.cached_property
    def id(self) -> str:
        """The hash of the cell's specs, computed once (the engine asks for it with every batch)."""
        return content_hash(self.to_dict())

    @property
    def threat_id(self) -> str:
        if self.poison:
            return self.poison.threat_id
        return self.attack.threat_id if self.attack else "clean"

    def describe(self) -> str:
        parts = [self.task_label, self.model.name, self.defense_label]
        if self.poison:
            parts.append(f"poison={self.attack_label or self.poison.name}")
        else:
            parts.append(self.attack_label or "clean")
        return " / ".join(parts)
