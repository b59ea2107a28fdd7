"""The contracts between the engine and its components (see DESIGN.md, "The contracts").

These are structural Protocols: a defense or attack written outside the project implements the
methods; it does not need to inherit anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """A defense's certificate for one example.

    `radius` is in the defense's own `unit` (words for l0 masking, latent_l2 for CISS, l2 for image
    smoothing, synonym_set for SAFER/CROWD/IBP). `certified` means the prediction is correct and
    provably constant within `radius`. `details` (JSON-able) is stored with the outcome, e.g. the
    text length in words that RanMASK's MCR divides by.
    """

    prediction: int
    certified: bool
    radius: float
    unit: str
    abstained: bool = False
    p_lower: float | None = None
    samples: int = 0
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttackOutcome:
    """One attacked example: the adversarial input, the queries spent and the perturbation size (in the
    attack's threat unit). The harness itself asks the defense for its prediction on `adversarial`."""

    adversarial: Any
    queries: int
    perturbation: float
    extra: dict = field(default_factory=dict)


@runtime_checkable
class DefendedModel(Protocol):
    """What a defense deploys. `predict` is the real decision rule and may abstain (-1)."""

    num_classes: int

    def predict(self, xs: Sequence) -> np.ndarray: ...

    def probs(self, xs: Sequence) -> np.ndarray: ...


@runtime_checkable
class Certifier(Protocol):
    """A defended model that also certifies: one Certificate per (x, y), seeded, at level alpha."""

    unit: str

    def certify(self, xs: Sequence, ys: np.ndarray, alpha: float, seed: int) -> list[Certificate]: ...


@runtime_checkable
class Differentiable(Protocol):
    """A defended image model with a differentiable surrogate of its decision rule for white-box
    attacks: logits of an (N, C, H, W) float tensor in [0, 1]. For a randomized or
    non-differentiable rule this is the named surrogate (EOT, BPDA), not the rule itself."""

    def logits(self, x): ...


@runtime_checkable
class Randomized(Protocol):
    """A defended model whose decision rule is random (smoothing, masking, exposure sampling).

    `expected_probs` is the adaptive attacker's view (expectation over transformation, EOT): the
    base classifier's class probabilities averaged over `samples` random draws of the defense's
    transformation. Attacks with an `eot_samples` setting query it instead of `probs`; the
    harness still judges every adversarial input with `predict`, the deployed rule."""

    randomized: bool

    def expected_probs(self, xs: Sequence, samples: int) -> np.ndarray: ...


@runtime_checkable
class VoteCounter(Protocol):
    """A smoothed (vote) classifier that lets the certificate audit (benchmark/audit.py) count the
    base classifier's votes: `vote_counts(xs, samples, seed, exact_limit)` returns (counts (inputs x
    classes), exact (inputs,) bool). An input whose noise has at most `exact_limit` equally likely
    draws may count each once (exact = True: the shares are the smoothed classifier's own);
    otherwise `samples` draws seeded by `seed` alone, the same noise for every input of one shape
    (common random numbers). A latent-space certificate (CISS) also offers `latents(xs)`, the
    point its radius is measured from."""

    def vote_counts(self, xs: Sequence, samples: int, seed: int,
                    exact_limit: int = 0) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class WhiteBoxText(Protocol):
    """A defended text model that exposes a differentiable surrogate for white-box attacks (ASCC):
    `module` follows the text-classifier contract of benchmark/models/text.py (`tokenizer`,
    `embedding`, `forward_embeddings`)."""

    module: object


@runtime_checkable
class Defense(Protocol):
    def build(self, task, model_spec, config: dict, context) -> DefendedModel: ...


@runtime_checkable
class Attack(Protocol):
    """An attack built from its config (`Attack(config)`), whose hash is the threat-model id.

    `describe()` states the threat model's constraints in words (shown on the leaderboard).
    Optional hook: an attack that needs the task (its substitution table, its training text for a
    resource the attack trains) defines `prepare(task, context)`; the evaluator calls it once per
    cell, before `run`. `context` is a BuildContext keyed by the task and its data checksums:
    `context.path(name)` is a cache file or folder for what the attack builds (name it by what
    shaped it), `context.seed` and `context.device` as for defenses."""

    threat: str

    def run(self, model: DefendedModel, xs: Sequence, ys: np.ndarray,
            seed: int) -> list[AttackOutcome]: ...


@runtime_checkable
class Poisoner(Protocol):
    def poison(self, train, rate: float, target_label: int, seed: int): ...

    def trigger(self, xs: Sequence[str], seed: int) -> list[str]: ...
