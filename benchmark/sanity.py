"""Sanity checks in the spirit of Carlini et al. (2019), computed from the cells a suite ran.

For every (task, defense, model) the image attacks it was evaluated with are compared:

- `single-step`: FGSM accuracy is not below PGD accuracy at the same l-inf budget (an iterative
  attack that is weaker than one step is not converging);
- `more-steps`: at the same norm and budget, a PGD run with more steps does not leave higher
  accuracy than one with fewer;
- `unbounded`: a white-box attack with an l-inf budget covering the whole [0, 1] box (eps >= 1)
  drives accuracy to about zero (any image can be reached);
- `black-box`: a black-box attack (Square, within AutoAttack) is not stronger than the strongest
  white-box attack at the same budget;
- `adaptive`: EOT / BPDA attacks are not stronger than plain PGD at the same budget with at least
  as many steps (if they are, the plain white-box numbers of the defense are masked and the
  adaptive row is the one to read; a PGD with fewer steps could lose on steps alone);
- `autoattack`: AutoAttack (white-box) leaves no higher accuracy than PGD at the same budget,
  compared on the examples both evaluated.

Separately, a row whose model **collapsed** is flagged (`collapsed`, shown only when it fires): it
predicts fewer than half of the classes in its sample, or its clean accuracy is below half of the
vanilla model's on the same task, or its last training epoch's mean classification cross-entropy
is near chance (at least LOSS_NEAR_CHANCE of ln C, for models whose training records it: Madry,
TRADES, CausalAdv, fgsm-at, BPFC). Adversarial training at a large budget can end there, and such
a row's figures say nothing about the method.

"Stronger" and "higher" mean beyond sampling noise: a one-sided exact test at level ALPHA, paired
(McNemar, on the examples both cells evaluated) when one cell's examples contain the other's (the
evaluator's samples are nested), else Fisher's exact test. A check with nothing to compare is "n/a"; a failed check flags the row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
from scipy.stats import binomtest

from benchmark.stats import lower_pvalue

ALPHA = 0.01
UNBOUNDED_EPS = 1.0     # l-inf radius that covers the [0, 1] box
UNBOUNDED_MAX_ACC = 0.05  # "about zero": flagged when accuracy is significantly above this
WHITE_BOX = {"pgd", "cw", "autoattack", "eot-pgd", "bpda-pgd"}
CHECKS = ("single-step", "more-steps", "unbounded", "black-box", "adaptive", "autoattack")
# A training loss this close to ln C (the loss of a uniform guess over C classes) is a model that
# learnt next to nothing.
LOSS_NEAR_CHANCE = 0.9


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "flag" or "n/a"
    detail: str
    # the labels of the attacked cells a flag names, so a page can mark those cells
    attacks: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Run:
    """One attacked cell: its label, attack name and params, and per-example correctness."""

    label: str
    attack: str
    params: dict
    correct: dict  # example_index -> bool (adversarial prediction == label)

    @property
    def accuracy(self) -> float:
        return float(np.mean(list(self.correct.values()))) if self.correct else float("nan")

    @property
    def norm(self) -> str:
        return self.params.get("norm", "linf")

    @property
    def eps(self) -> float:
        return float(self.params.get("eps", float("nan")))

    @property
    def black_box(self) -> bool:
        return self.attack == "autoattack" and list(self.params.get("attacks", [])) == ["square"]

    @property
    def white_box(self) -> bool:
        return self.attack in WHITE_BOX and not self.black_box

    def describe(self) -> str:
        return f"{self.label} {100 * self.accuracy:.1f}% (n={len(self.correct)})"


def significantly_lower(a: Run, b: Run, alpha: float = ALPHA) -> bool:
    """Is a's accuracy below b's beyond noise (one-sided, level alpha)?"""
    return lower_pvalue(a.correct, b.correct)[0] < alpha


def _labels(pairs: list[tuple[Run, Run]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(run.label for pair in pairs for run in pair))


def _same_budget(a: Run, b: Run) -> bool:
    return a.norm == b.norm and np.isclose(a.eps, b.eps)


def check_single_step(runs: list[Run]) -> Check:
    pairs = [(f, p) for f in runs if f.attack == "fgsm" for p in runs
             if p.attack == "pgd" and p.norm == "linf" and np.isclose(f.eps, p.eps)
             and p.params.get("steps", 1) > 1]
    if not pairs:
        return Check("single-step", "n/a", "no FGSM and PGD pair at one budget")
    flagged = [(f, p) for f, p in pairs if significantly_lower(f, p)]
    if flagged:
        return Check("single-step", "flag", "; ".join(f"{f.describe()} < {p.describe()}"
                                                      for f, p in flagged), _labels(flagged))
    return Check("single-step", "ok", "; ".join(f"{f.describe()} >= {p.describe()}" for f, p in pairs))


def check_more_steps(runs: list[Run]) -> Check:
    pgd = [r for r in runs if r.attack == "pgd"]
    pairs = []
    for a, b in combinations(pgd, 2):
        if _same_budget(a, b) and a.params.get("steps") != b.params.get("steps"):
            few, many = sorted((a, b), key=lambda r: r.params.get("steps", 0))
            pairs.append((few, many))
    if not pairs:
        return Check("more-steps", "n/a", "no two PGD runs at one budget with different steps")
    flagged = [(few, many) for few, many in pairs if significantly_lower(few, many)]
    if flagged:
        return Check("more-steps", "flag", "; ".join(f"{few.describe()} < {many.describe()}"
                                                     for few, many in flagged), _labels(flagged))
    return Check("more-steps", "ok", "; ".join(f"{m.describe()} <= {f.describe()}" for f, m in pairs))


def check_unbounded(runs: list[Run]) -> Check:
    unbounded = [r for r in runs if r.white_box and r.norm == "linf" and r.eps >= UNBOUNDED_EPS]
    if not unbounded:
        return Check("unbounded", "n/a", f"no white-box run with l-inf eps >= {UNBOUNDED_EPS:g}")
    bad, good = [], []
    for run in unbounded:
        k, n = sum(run.correct.values()), len(run.correct)
        above = n and binomtest(k, n, UNBOUNDED_MAX_ACC, alternative="greater").pvalue < ALPHA
        (bad if above else good).append(run.describe())
    if bad:
        return Check("unbounded", "flag", "accuracy not ~0 at an unbounded budget: " + "; ".join(bad),
                     tuple(r.label for r in unbounded if r.describe() in bad))
    return Check("unbounded", "ok", "; ".join(good))


def check_black_box(runs: list[Run]) -> Check:
    pairs = []
    for black in (r for r in runs if r.black_box):
        white = [w for w in runs if w.white_box and _same_budget(black, w)]
        if white:
            pairs.append((black, min(white, key=lambda w: w.accuracy)))
    if not pairs:
        return Check("black-box", "n/a", "no black-box (Square) and white-box pair at one budget")
    flagged = [(b, w) for b, w in pairs if significantly_lower(b, w)]
    if flagged:
        return Check("black-box", "flag", "black-box stronger than white-box: " + "; ".join(
            f"{b.describe()} < {w.describe()}" for b, w in flagged), _labels(flagged))
    return Check("black-box", "ok", "; ".join(f"{b.describe()} >= {w.describe()}" for b, w in pairs))


def check_adaptive(runs: list[Run]) -> Check:
    pairs = [(a, p) for a in runs if a.attack in ("eot-pgd", "bpda-pgd") for p in runs
             if p.attack == "pgd" and _same_budget(a, p)
             and p.params.get("steps", 1) >= a.params.get("steps", 1)]
    if not pairs:
        return Check("adaptive", "n/a", "no EOT/BPDA and PGD pair at one budget (PGD with at "
                                        "least the adaptive attack's steps)")
    flagged = [(a, p) for a, p in pairs if significantly_lower(a, p)]
    if flagged:
        return Check("adaptive", "flag", "adaptive attack stronger than PGD (masked gradients): "
                     + "; ".join(f"{a.describe()} < {p.describe()}" for a, p in flagged),
                     _labels(flagged))
    return Check("adaptive", "ok", "; ".join(f"{a.describe()} >= {p.describe()}" for a, p in pairs))


def _on_shared(a: Run, b: Run) -> str:
    shared = sorted(set(a.correct) & set(b.correct))
    if not shared:
        return f"{a.describe()} vs {b.describe()}"
    acc = lambda r: 100 * np.mean([r.correct[i] for i in shared])  # noqa: E731
    return f"{a.label} {acc(a):.1f}% vs {b.label} {acc(b):.1f}% on {len(shared)} shared examples"


def check_autoattack(runs: list[Run]) -> Check:
    pairs = [(p, a) for a in runs if a.attack == "autoattack" and a.white_box for p in runs
             if p.attack == "pgd" and _same_budget(a, p)]
    if not pairs:
        return Check("autoattack", "n/a", "no AutoAttack and PGD pair at one budget")
    flagged = [(p, a) for p, a in pairs if significantly_lower(p, a)]
    if flagged:
        return Check("autoattack", "flag", "AutoAttack weaker than PGD: " + "; ".join(
            _on_shared(a, p) for p, a in flagged), _labels(flagged))
    return Check("autoattack", "ok", "; ".join(_on_shared(a, p) for p, a in pairs))


def collapse_reasons(outcomes: list[dict], vanilla: list[dict] | None, alpha: float,
                     training: dict | None = None) -> list[str]:
    """Why a clean cell's classifier has collapsed (empty if it has not): too few predicted classes,
    clean accuracy below half of `vanilla`'s outcomes on the same task (one-sided exact binomial
    test at alpha), or a `training` record (benchmark.evaluate.training_record) whose last epoch's
    mean classification cross-entropy is near ln C. Half, not a plain comparison: every adversarially trained model is
    less accurate than the vanilla one (the robustness-accuracy trade-off), a collapsed one far
    beyond it."""
    labels = np.array([o["label"] for o in outcomes])
    predicted = {o["clean_prediction"] for o in outcomes}
    present = len(set(labels.tolist()))
    reasons = []
    if len(predicted) < np.ceil(present / 2):
        reasons.append(f"it predicts {len(predicted)} of the {present} classes in the sample")
    if vanilla:
        correct = int(sum(o["clean_prediction"] == o["label"] for o in outcomes))
        vanilla_rate = sum(o["clean_prediction"] == o["label"] for o in vanilla) / len(vanilla)
        if binomtest(correct, len(labels), vanilla_rate / 2, alternative="less").pvalue < alpha:
            reasons.append(f"its clean accuracy {100 * correct / len(labels):.1f}% is below half "
                           f"of the vanilla model's ({100 * vanilla_rate:.1f}%)")
    if training is not None and "final_cross_entropy" in training:
        chance = float(np.log(training["num_classes"]))
        if training["final_cross_entropy"] >= LOSS_NEAR_CHANCE * chance:
            reasons.append(f"its last training epoch's mean cross-entropy "
                           f"{training['final_cross_entropy']:.3g} is near ln "
                           f"{training['num_classes']} = {chance:.3g}, a uniform guess's")
    return reasons


def check_collapsed(outcomes: list[dict], vanilla: list[dict] | None,
                    training: dict | None = None, alpha: float = ALPHA) -> Check:
    reasons = collapse_reasons(outcomes, vanilla, alpha, training)
    return Check("collapsed", "flag" if reasons else "ok",
                 "; ".join(reasons) if reasons else "not collapsed")


def run_checks(runs: list[Run]) -> list[Check]:
    return [check_single_step(runs), check_more_steps(runs), check_unbounded(runs),
            check_black_box(runs), check_adaptive(runs), check_autoattack(runs)]


def run_from_cell(label: str, spec: dict, outcomes: list[dict]) -> Run | None:
    """A Run from a stored cell (its spec as the store keeps it); None for clean or text cells."""
    attack = spec.get("attack")
    if not attack:
        return None
    correct = {o["example_index"]: o["adversarial_prediction"] == o["label"] for o in outcomes
               if o.get("adversarial_prediction") is not None}
    return Run(label, attack["name"], attack.get("params", {}), correct)


def summarize(checks: list[Check]) -> str:
    """The leaderboard's flags column: 'ok (k checks)', 'FLAG: names', or '' without checks."""
    flagged = [c.name for c in checks if c.status == "flag"]
    done = [c for c in checks if c.status != "n/a"]
    if flagged:
        return "FLAG: " + ", ".join(flagged)
    if done:
        return f"ok ({len(done)}/{len(checks)} checks)"
    return ""
