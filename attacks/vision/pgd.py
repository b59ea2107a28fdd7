"""PGD (Madry et al. 2018), l-inf or l2, random start, through torchattacks' PGD and PGDL2; and its
targeted form (torchattacks' targeted mode: descend the cross-entropy of a chosen target class)."""
import numpy as np
import torchattacks

from attacks.vision.common import check_budget, model_device, run_torchattack
from benchmark.errors import UsageError
from benchmark.registry import register_attack

TARGETS = ("most-likely", "random", "least-likely")


@register_attack("pgd", modality="image", threat="lp")
class PGD:
    # step_size None means Madry's rule, 2.5 * eps / steps.
    defaults = {"norm": "linf", "eps": 0.1, "steps": 10, "step_size": None, "random_start": True}
    name = "pgd"

    def __init__(self, config: dict):
        check_budget(self.name, config)
        self.config = config
        self.threat = config["norm"]
        self.step_size = config["step_size"] or 2.5 * config["eps"] / config["steps"]

    def describe(self) -> str:
        c = self.config
        start = "random start" if c["random_start"] else "no random start"
        return (f"PGD-{c['steps']}, {c['norm']} eps={c['eps']:g}, step {self.step_size:.4g}, "
                f"{start}, white-box")

    def run(self, model, xs, ys, seed):
        return self._run(model, xs, ys, targets=None)

    def _run(self, model, xs, ys, targets):
        c = self.config
        attack_class = torchattacks.PGD if c["norm"] == "linf" else torchattacks.PGDL2
        return run_torchattack(attack_class, model, xs, ys, c["norm"], c["steps"], model_device(model),
                               targets=targets, eps=c["eps"], alpha=self.step_size,
                               steps=c["steps"], random_start=c["random_start"])


def attack_targets(probs: np.ndarray, ys: np.ndarray, target: str,
                   rng: np.random.Generator) -> np.ndarray:
    """One target class per example, never its true class: the most or least likely other class by
    the defense's class probabilities on the clean input, or one drawn uniformly from the others."""
    if target == "random":
        return (ys + rng.integers(1, probs.shape[1], size=len(ys))) % probs.shape[1]
    others = probs.astype(np.float64)
    rows = np.arange(len(ys))
    if target == "most-likely":
        others[rows, ys] = -np.inf
        return others.argmax(axis=1)
    others[rows, ys] = np.inf
    return others.argmin(axis=1)


@register_attack("pgd-targeted", modality="image", threat="lp")
class TargetedPGD(PGD):
    """Targeted PGD (CiiV's Table 3): each step descends the cross-entropy of a target class.
    `target`: the most likely or least likely class other than the true one, by the defense's
    `probs` on the clean input (softmax of its logits; for a randomized defense the mean over its
    draws), or a uniformly random other class from the batch's seed. Success is still judged as for
    every attack: the prediction leaves the true class, so accuracy under it is Table 3's figure.
    (A separate entry, not a `pgd` option: an attack's spec holds all its defaults, so a new `pgd`
    key would change the id of every PGD cell already stored.)"""

    defaults = {**PGD.defaults, "target": None}
    name = "pgd-targeted"

    def __init__(self, config: dict):
        if config["target"] not in TARGETS:
            raise UsageError(f"attack 'pgd-targeted': target must be one of {', '.join(TARGETS)}, "
                             f"got {config['target']!r}")
        super().__init__(config)

    def describe(self) -> str:
        return f"{super().describe()}, targeted at the {self.config['target']} other class"

    def run(self, model, xs, ys, seed):
        targets = attack_targets(model.probs(xs), ys, self.config["target"],
                                 np.random.default_rng(seed))
        return self._run(model, xs, ys, targets)
