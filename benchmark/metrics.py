"""Every metric the suite reports, declared once: its key, label, help text, kind, which direction
is better and which tables show it. The leaderboard, site, regression gate, reproduction table and
verification read this module; nothing else declares metric names.

Kinds: a `rate` has successes out of n and a Clopper-Pearson interval; a `mean` has n and a
standard deviation; a `median` has n and an order-statistic interval. Direction: +1 when higher is
better, -1 when lower is better, 0 when neither is (a stronger defense can raise or lower the
attack's query count), so the gate shows such a metric but never tests it. The gate
(benchmark/regress.py) pairs two runs example by example, so every metric with a direction also
needs a per-example form: the metric computed on one example alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from benchmark.errors import UsageError

# Table kinds (leaderboard "kind"): test-time clean inputs, test-time attack, training-time backdoor,
# and the defense x attack matrix of one threat family.
CLEAN, ATTACK, BACKDOOR, MATRIX = "clean", "attack", "backdoor", "matrix"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    help: str
    kind: str  # "rate", "mean" or "median"
    direction: int  # +1 higher is better, -1 lower is better, 0 neither
    tables: tuple[str, ...]
    # Backdoor tables measure some metrics on other inputs: their own label and help.
    backdoor_label: str | None = None
    backdoor_help: str | None = None

    def label_in(self, table_kind: str | None) -> str:
        return self.backdoor_label if table_kind == BACKDOOR and self.backdoor_label else self.label

    def help_in(self, table_kind: str | None) -> str:
        return self.backdoor_help if table_kind == BACKDOOR and self.backdoor_help else self.help


_DECLARED = (
    Metric("clean_accuracy", "clean acc %",
           "share of the n sampled test examples classified correctly without attack",
           "rate", +1, (CLEAN, ATTACK, MATRIX)),
    Metric("benign_accuracy", "benign acc %",
           "share of the n clean test examples the defense trained on poisoned data classifies "
           "correctly", "rate", +1, (BACKDOOR,)),
    Metric("robust_accuracy", "acc under attack %",
           "share of the n examples classified correctly both before and after the attack",
           "rate", +1, (ATTACK, MATRIX)),
    Metric("robust_accuracy_all_draws", "acc under attack, all draws %",
           "share of the n examples a randomized defense classifies correctly before the attack "
           "and in every one of the protocol's judge_draws fresh predictions on the adversarial "
           "input (the single-draw figure is accuracy under attack)", "rate", +1, (ATTACK,)),
    Metric("worst_case_accuracy", "worst-case acc %",
           "share of the n examples classified correctly under every attack of the same threat "
           "family that was run on them (per example, as AutoAttack and RobustBench count it), "
           "on the examples all of them evaluated", "rate", +1, (MATRIX,)),
    Metric("attack_success_rate", "attack success %",
           "share of the correctly classified examples the attack turned wrong",
           "rate", -1, (ATTACK, BACKDOOR), backdoor_label="ASR %",
           backdoor_help="share of the triggered test examples (true label not the target) "
                         "classified as the target"),
    Metric("mean_queries", "avg queries",
           "average model queries the attack spent per correctly classified example",
           "mean", 0, (ATTACK,)),
    Metric("mean_perturbation", "avg perturbation",
           "average size of the successful perturbations, in the attack's norm",
           "mean", 0, (ATTACK,)),
    # Recorded per example by the pgd-block-share attack (CiiV, Figures 3 and 9).
    Metric("colour_block_share", "colour-block share",
           "average share of an adversarial perturbation's l1 size on Confounded-Toy's colour "
           "blocks (the confounder) rather than its white shapes; lower: the attack had to change "
           "the shapes", "mean", -1, (ATTACK,)),
    Metric("certified_accuracy", "certified acc %",
           "share of the n examples certified by the defense's certificate with a correct "
           "deployed prediction", "rate", +1, (CLEAN, BACKDOOR, MATRIX),
           backdoor_label="certified acc on triggered %",
           backdoor_help="share of the triggered test examples certified with their true label"),
    Metric("abstain_rate", "abstain %", "share of the examples on which the certifier abstained",
           "rate", -1, (CLEAN,)),
    Metric("median_certified_radius", "median radius",
           "median certified radius (0 where not certified), in the unit shown",
           "median", +1, (CLEAN, BACKDOOR)),
    Metric("mcb", "MCB (words)",
           "RanMASK's median certified robustness: the median certified number of words, a wrong "
           "or abstained example counting as -infinity (N/A when half of them are)",
           "median", +1, (CLEAN,)),
    Metric("mcr", "MCR (d/h)", "RanMASK's median certified rate: MCB relative to each text's length",
           "median", +1, (CLEAN,)),
)
METRICS: dict[str, Metric] = {m.key: m for m in _DECLARED}
# The one metric each kind of table ranks its rows by (named on the page).
RANKED_BY = {CLEAN: "clean_accuracy", ATTACK: "robust_accuracy", BACKDOOR: "attack_success_rate",
             MATRIX: "worst_case_accuracy"}
# certified_accuracy@r: certified accuracy at radius r, one metric per reported radius.
AT_RADIUS = "certified_accuracy@"


def metric(key: str) -> Metric:
    """The declaration of `key`; an undeclared key is an error, never a silent default."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith(AT_RADIUS):
        radius = key[len(AT_RADIUS):]
        try:
            float(radius)
        except ValueError:
            pass
        else:
            return replace(METRICS["certified_accuracy"], key=key,
                           label=f"certified acc % at r={radius}",
                           help=f"share of the n examples certified correct with a radius of at "
                                f"least {radius}", tables=(CLEAN,))
    raise UsageError(f"unknown metric '{key}': declare it in benchmark/metrics.py (known: "
                     f"{', '.join(METRICS)}, {AT_RADIUS}<radius>)")


def columns(table_kind: str) -> list[Metric]:
    """The metrics a table of this kind can show, in display order."""
    return [m for m in _DECLARED if table_kind in m.tables]
