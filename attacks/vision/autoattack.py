"""AutoAttack (Croce and Hein, 2020) through its reference implementation, pyautoattack.

`version = "standard"` is the reference's standard evaluation exactly: APGD-CE (100 iterations),
APGD-T (100 iterations, 9 target classes), FAB-T (9 targets) and Square (5,000 queries), each run
on the points the previous ones did not break. `version = "custom"` runs a chosen subset
(`attacks`) with `n_iter`, `n_target_classes` and `n_queries` set explicitly: the cheaper
APGD-CE + APGD-T for small suites, or Square alone as the black-box reference.

Randomized defenses (CiiV, smoothing): AutoAttack's algorithm assumes a deterministic model (it
drops points the model gets wrong once, and stops on a point at its first success), so a
randomized defense is given to it derandomized: the mean of k draws, log(mean softmax), each
draw with fixed random numbers (the same seeds at every call, "common random numbers"), where k
is `draws` or, if fewer, the number of draws the defense's own decision averages
(`decision_draws`: one for CiiV, whose single draw already averages 27 exposures; PREDICT's
sample count for smoothing). Its gradients and success checks are then those of one fixed
function; the harness still judges the result with the defense's own random `predict`.
Deterministic models are unaffected. AutoAttack stops at a point's first success, so on a
randomized rule it can leave higher accuracy than a fixed-step PGD: read the EOT / BPDA rows too.

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
from benchmark.errors import UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STANDARD = {"attacks": [], "n_iter": 100, "n_target_classes": 9, "n_queries": 5000,
            "n_restarts": 1}


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
        if version not in ("standard", "custom"):
            raise UsageError(f"attack 'autoattack': version must be 'standard' or 'custom', got "
                             f"{version!r}")
        if version == "standard":
            changed = sorted(k for k, v in STANDARD.items() if config[k] != v)
            if changed:
                raise UsageError(f"attack 'autoattack': {', '.join(changed)} only apply to "
                                 f"version = 'custom'; the standard version is the reference's")
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
        return list(self.config["attacks"])

    def describe(self) -> str:
        c = self.config
        if c["version"] == "standard":
            what = "standard: APGD-CE, APGD-T, FAB-T, Square (reference settings)"
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
        if c["version"] == "standard":
            attack = AutoAttack(module, norm=norm, eps=c["eps"], version="standard",
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
        attack.logger.setLevel(logging.ERROR)
        return attack

    def queries(self, num_classes: int) -> int:
        """Gradient or score queries per example in the worst case (nothing broken early)."""
        c = self.config
        total = 0
        targets = min(c["n_target_classes"], num_classes - 1)
        for name in self.attack_names():
            if name in ("apgd-ce", "apgd-dlr"):
                total += c["n_iter"] * c["n_restarts"]
            elif name == "apgd-t":
                total += c["n_iter"] * targets
            elif name in ("fab", "fab-t"):
                total += 100 * (targets if name == "fab-t" else 1)
            elif name == "square":
                total += c["n_queries"]
        return total

    def run(self, model, xs, ys, seed):
        device = model_device(model)
        module = DefendedLogits(model).to(device)
        samples = 1
        if getattr(model, "randomized", False):
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
