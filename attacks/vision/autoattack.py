"""AutoAttack (Croce and Hein, 2020) through its reference implementation, pyautoattack.

`version = "standard"` is the reference's standard evaluation exactly: APGD-CE (100 iterations),
APGD-T (100 iterations, 9 target classes), FAB-T (9 targets) and Square (5,000 queries), each run
on the points the previous ones did not break. `version = "rand"` is the reference's version for
randomized defenses, as its authors prescribe for them: APGD-CE and APGD-DLR (100 iterations, one
restart) with expectation over transformation, each gradient the mean over 20 random draws of the
defense. `version = "custom"` runs a chosen subset (`attacks`) with `n_iter`, `n_target_classes`
and `n_queries` set explicitly: the cheaper APGD-CE + APGD-T for small suites, or Square alone as
the black-box reference.

Randomized defenses (CiiV, smoothing), by version:
- "rand": the defense's own random draws, attacked through its BPDA surrogate (`bpda_logits`)
  where it has one, else its `logits`; no cap on the draws. This is the adaptive evaluation.
- "standard" / "custom": AutoAttack's algorithm assumes a deterministic model (it drops points the
  model gets wrong once, and stops on a point at its first success), so the defense is given to it
  derandomized: the mean of k draws, log(mean softmax), each draw with fixed random numbers (the
  same seeds at every call, "common random numbers"), where k is `draws` or, if fewer, the number
  of draws the defense's own decision averages (`decision_draws`). Its gradients and success
  checks are then those of one fixed function; on a randomized rule it can leave higher accuracy
  than a fixed-step PGD: use "rand" (or read the EOT / BPDA rows).
Either way the harness judges the result with the defense's own random `predict`. Deterministic
models are unaffected by `draws`. pyautoattack's warnings (randomness, zero gradients, Square
stronger than the white-box attacks) are logged, never silenced.

Two adaptations to tasks with few classes, both forced by the reference code itself: the number of
target classes is capped at C - 1 (the reference indexes the C - 1 runner-up classes), and on
3-class tasks APGD-T sees one extra constant logit below every real one, because its targeted DLR
loss reads the 3rd and 4th largest logits; the extra logit is never the prediction nor a target,
and makes the DLR denominator z_max - z_min. Tasks with 2 classes have no DLR loss: use APGD-CE.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from attacks.vision.common import DefendedLogits, check_budget, model_device, perturbation_norm
from benchmark.errors import NotApplicable, UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STANDARD = {"attacks": [], "n_iter": 100, "n_target_classes": 9, "n_queries": 5000,
            "n_restarts": 1}
VERSIONS = ("standard", "rand", "custom")
RAND_EOT_DRAWS = 20  # the reference's eot_iter in its "rand" version


class FixedDraws(nn.Module):
    """A randomized model made deterministic: `draws` draws with the same random numbers at every
    call (torch's generator reseeded, then restored); log(mean softmax) when draws > 1."""

    def __init__(self, model: nn.Module, draws: int, seed: int):
        super().__init__()
        self.model = model
        self.draws = draws
        self.seed = seed

    def forward(self, x):
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if self.draws == 1:
                return self.model(x)
            probs = torch.stack([torch.softmax(self.model(x), dim=1) for _ in range(self.draws)])
        return torch.log(probs.mean(0) + 1e-12)


class PaddedLogits(nn.Module):
    """Logits with one extra class just below the smallest real logit (for targeted DLR on 3
    classes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        low, high = logits.min(1, keepdim=True)[0], logits.max(1, keepdim=True)[0]
        dummy = low - 1e-3 * (high - low).detach() - 1e-6
        return torch.cat([logits, dummy], dim=1)


@register_attack("autoattack", modality="image", threat="lp")
class AutoAttackAdapter:
    """AutoAttack (Croce & Hein 2020) via the reference pyautoattack: standard or custom subsets."""

    defaults = {"norm": "linf", "eps": 0.1, "version": "standard", **STANDARD, "draws": 1}

    def __init__(self, config: dict):
        check_budget("autoattack", config)
        version = config["version"]
        if version not in VERSIONS:
            raise UsageError(f"attack 'autoattack': version must be one of {', '.join(VERSIONS)}, "
                             f"got {version!r}")
        if version != "custom":
            changed = sorted(k for k, v in STANDARD.items() if config[k] != v)
            if changed:
                raise UsageError(f"attack 'autoattack': {', '.join(changed)} only apply to "
                                 f"version = 'custom'; the {version} version is the reference's")
            if version == "rand" and config["draws"] != 1:
                raise UsageError("attack 'autoattack': draws does not apply to version = 'rand', "
                                 f"which averages {RAND_EOT_DRAWS} fresh draws per gradient")
        else:
            attacks = list(config["attacks"])
            unknown = sorted(set(attacks) - set(ATTACK_NAMES))
            if not attacks or unknown:
                raise UsageError(f"attack 'autoattack': version 'custom' needs `attacks`, a "
                                 f"non-empty list of {', '.join(ATTACK_NAMES)}"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
            if config["n_iter"] < 1 or config["n_target_classes"] < 1 or config["n_queries"] < 1:
                raise UsageError("attack 'autoattack': n_iter, n_target_classes and n_queries "
                                 "must be >= 1")
        if config["draws"] < 1:
            raise UsageError("attack 'autoattack': draws must be >= 1")
        self.config = config
        self.threat = config["norm"]

    def attack_names(self) -> list[str]:
        if self.config["version"] == "standard":
            return ["apgd-ce", "apgd-t", "fab-t", "square"]
        if self.config["version"] == "rand":
            return ["apgd-ce", "apgd-dlr"]
        return list(self.config["attacks"])

    def describe(self) -> str:
        c = self.config
        if c["version"] == "standard":
            what = "standard: APGD-CE, APGD-T, FAB-T, Square (reference settings)"
        elif c["version"] == "rand":
            return (f"AutoAttack (rand: APGD-CE, APGD-DLR, 100 iterations, each gradient the mean "
                    f"over {RAND_EOT_DRAWS} random draws of a randomized defense, through its BPDA "
                    f"surrogate where it has one; reference settings), {c['norm']} "
                    f"eps={c['eps']:g}, reference pyautoattack")
        else:
            parts = []
            for name in c["attacks"]:
                if name.startswith("apgd"):
                    parts.append(f"{name.upper()} ({c['n_iter']} iterations"
                                 + (f", {c['n_target_classes']} targets)" if name == "apgd-t" else ")"))
                elif name == "square":
                    parts.append(f"Square ({c['n_queries']} queries, black-box)")
                else:
                    parts.append(name.upper())
            what = "custom: " + ", ".join(parts)
        eot = (f", randomized defenses through the mean of {c['draws']} fixed draws"
               if c["draws"] > 1 else ", randomized defenses through one fixed draw")
        return f"AutoAttack ({what}), {c['norm']} eps={c['eps']:g}, reference pyautoattack{eot}"

    def build(self, module: nn.Module, num_classes: int, device, seed: int):
        """The configured pyautoattack.AutoAttack for a model with `num_classes` classes."""
        from pyautoattack import AutoAttack

        c = self.config
        norm = {"linf": "Linf", "l2": "L2"}[c["norm"]]
        names = self.attack_names()
        uses_dlr = {"apgd-t", "apgd-dlr"} & set(names)
        if num_classes < 3 and uses_dlr:
            raise UsageError(f"AutoAttack's DLR losses need at least 3 classes (this task has "
                             f"{num_classes}); use version = 'custom' with attacks = ['apgd-ce']")
        if c["version"] != "custom":
            attack = AutoAttack(module, norm=norm, eps=c["eps"], version=c["version"],
                                device=device, seed=seed)
        else:
            attack = AutoAttack(module, norm=norm, eps=c["eps"], version="custom", attacks=names,
                                device=device, seed=seed)
            for apgd in (attack.apgd, attack.apgd_targeted):
                apgd.n_iter = apgd.n_iter_orig = c["n_iter"]
                apgd.n_iter_2 = max(int(0.22 * c["n_iter"]), 1)
                apgd.n_iter_min = max(int(0.06 * c["n_iter"]), 1)
                apgd.size_decr = max(int(0.03 * c["n_iter"]), 1)
                apgd.n_restarts = c["n_restarts"]
            attack.apgd_targeted.n_target_classes = c["n_target_classes"]
            attack.fab.n_target_classes = c["n_target_classes"]
            attack.square.n_queries = c["n_queries"]
        # The reference indexes the runner-up classes: at most C - 1 targets exist.
        attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes,
                                                    num_classes - 1)
        attack.fab.n_target_classes = min(attack.fab.n_target_classes, num_classes - 1)
        if num_classes == 3:
            attack.apgd_targeted.model = PaddedLogits(module)
        attack.logger.setLevel(logging.WARNING)
        return attack

    def queries(self, num_classes: int) -> int:
        """Gradient or score queries per example in the worst case (nothing broken early)."""
        c = self.config
        total = 0
        targets = min(c["n_target_classes"], num_classes - 1)
        eot = RAND_EOT_DRAWS if c["version"] == "rand" else 1
        for name in self.attack_names():
            if name in ("apgd-ce", "apgd-dlr"):
                total += c["n_iter"] * c["n_restarts"] * eot
            elif name == "apgd-t":
                total += c["n_iter"] * targets
            elif name in ("fab", "fab-t"):
                total += 100 * (targets if name == "fab-t" else 1)
            elif name == "square":
                total += c["n_queries"]
        return total

    def run(self, model, xs, ys, seed):
        device = model_device(model)
        randomized = getattr(model, "randomized", False)
        rand = self.config["version"] == "rand"
        if rand and not randomized:
            raise NotApplicable(f"{type(model).__name__} is deterministic: AutoAttack's rand version "
                                f"(EOT over {RAND_EOT_DRAWS} draws) is built for randomized defenses; "
                                f"the standard or custom version covers it")
        module = DefendedLogits(model, bpda=rand and randomized).to(device)
        samples = 1
        if randomized and not rand:
            samples = max(1, min(self.config["draws"], getattr(model, "decision_draws", 1)))
            module = FixedDraws(module, samples, seed % 2**31)
        attack = self.build(module, model.num_classes, device, seed % 2**31)
        x = torch.as_tensor(xs, device=device)
        y = torch.as_tensor(ys, device=device)
        adversarial, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
        adversarial = adversarial.detach().cpu().numpy().astype(np.float32)
        sizes = perturbation_norm(adversarial, xs, self.config["norm"])
        queries = self.queries(model.num_classes) * samples
        return [AttackOutcome(adversarial[i], queries, float(sizes[i])) for i in range(len(ys))]
