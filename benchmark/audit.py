"""Certificate soundness audit: for every certified example of every certifying cell in a store,
search for a counterexample inside the certificate's own threat model.

What a counterexample is. Every certificate here claims that the certified class y keeps the
smoothed (or deterministic) decision on every input x' of the threat set around x: a randomized
certificate (RanMASK, SAFER, CISS, Gaussian smoothing) claims p_y(x') > 1/2 for the base
classifier's vote share p_y; a deterministic one (IBP) claims predict(x') = y. An x' in the threat
set breaks it when the deployed model predicts another class (deterministic), or when p_y(x') <=
1/2: exactly, where every draw of the noise is counted (RanMASK with C(h, k) small), otherwise
when the one-sided Clopper-Pearson upper bound of p_y(x') from `judge_samples` fresh draws is
below 1/2 (at level alpha / judge_candidates, Bonferroni over the candidates judged per example).

The threat sets, by certificate unit:
- `synonym_set` and `latent_l2` (IBP, SAFER, CISS, CROWD): any combination of per-word substitutes:
  the model's own when it offers them (`substitution_options(text)`, one list per whitespace word,
  empty where the word may not be replaced: CROWD's neighbour graph, which on the real tasks comes
  from MiniLM similarity, not the task's table), else the task's substitution table. Every
  combination when there are at most `exhaustive_cap`, otherwise a beam search
  (`beam_width`) over one more substitution at a time, guided by the model's score of y (the
  softmax of a deterministic model; the vote share over `guide_samples` common-random-number draws
  of a randomized one), plus `random_combinations` random combinations. For a latent certificate
  (CISS) every candidate's latent shift ||s(x') - s(x)|| is also checked against R_hat: a shift
  beyond it breaks the interval bound the certificate rests on.
- `words` (RanMASK, radius d): up to d word edits (substitution by, or insertion of, one of the
  `vocabulary` most frequent training words, or deletion), beam search guided as above.
- `l2` (Gaussian smoothing, radius r): PGD in the l2 ball of radius r (`pgd_steps`, EOT over
  `eot_samples` noise draws per step, on the mean softmax of y), judged with fresh draws.

The `judge_candidates` best-scored candidates of each example are judged. A randomized certificate
holds with probability 1 - alpha (the cell's alpha), so a few violations are allowed: a row is
flagged when its violation rate is significantly above alpha (one-sided binomial test at level
0.05); a deterministic certificate allows none. Results go to the store (resumable, per example);
a different budget is a different audit. Defenses are reached only through their registry entry
and the interfaces (benchmark/interfaces.py: VoteCounter, Differentiable), plus the duck-typed
`substitution_options(text) -> list[list[str]]` above (not in interfaces.py, whose source keys
every model's cache).

Backdoor cells of a certifying defense (CROWD) are audited too: their certified inputs are the
triggered test texts (the outcome's `adversarial_text`), certified against the true label, and the
model is the one the run built on the poisoned training split.
"""
from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from scipy.stats import binomtest

from benchmark.certify import upper_confidence_bound
from benchmark.errors import UsageError
from benchmark.registry import DEFENSES
from benchmark.specs import content_hash

AUDIT_DEFAULTS = {
    "seed": 0,
    "exhaustive_cap": 4096,
    "beam_width": 8,
    "random_combinations": 64,
    "guide_samples": 64,
    "judge_samples": 2000,
    "judge_candidates": 4,
    "exact_limit": 20000,
    "vocabulary": 300,
    "pgd_steps": 40,
    "eot_samples": 16,
}
REPORT_ALPHA = 0.05  # one-sided upper bounds of violation rates, and the row flag's level
SUBSTITUTION_UNITS = ("synonym_set", "latent_l2")
LATENT_TOLERANCE = 1e-4  # relative slack for float error in the latent-shift check


def audit_config(overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(AUDIT_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown audit budget(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(AUDIT_DEFAULTS))}")
    config = {**AUDIT_DEFAULTS}
    for key, value in overrides.items():
        if not isinstance(value, int) or value < 0:
            raise UsageError(f"audit budget {key} must be a whole number >= 0, got {value!r}")
        config[key] = value
    for key in ("guide_samples", "judge_samples", "judge_candidates", "beam_width"):
        if config[key] < 1:
            raise UsageError(f"audit budget {key} must be >= 1")
    return config


def base_unit(unit: str | None) -> str:
    return (unit or "").split(" (")[0]


def is_randomized(model) -> bool:
    return bool(getattr(model, "randomized", False))


# Judging ------------------------------------------------------------------------------------------

class Judge:
    """Decides whether candidates break the certificate of class `label` (see the module doc)."""

    def __init__(self, model, config: dict, seed: int):
        self.model = model
        self.config = config
        self.seed = seed
        self.randomized = is_randomized(model)
        if self.randomized and not callable(getattr(model, "vote_counts", None)):
            raise UsageError(f"{type(model).__name__} is randomized but has no vote_counts(xs, "
                             f"samples, seed, exact_limit) (benchmark/interfaces.py VoteCounter): "
                             f"its certificates cannot be audited")

    def guide(self, xs: Sequence, label: int) -> np.ndarray:
        """The attacker's score of `label` on each candidate (lower is closer to a counterexample):
        the vote share of `label` for a randomized model, the softmax margin for a deterministic one."""
        if not self.randomized:  # the margin: negative exactly when the prediction changes
            probs = self.model.probs(list(xs))
            others = np.delete(probs, label, axis=1)
            return probs[:, label] - (others.max(axis=1) if others.shape[1] else 0.0)
        counts, _ = self.model.vote_counts(list(xs), self.config["guide_samples"], self.seed)
        return counts[:, label] / counts.sum(axis=1)

    def __call__(self, xs: Sequence, label: int) -> list[dict]:
        """One verdict per candidate: {"falsified", and for a randomized model "share" (p_y
        estimate), "upper" (its bound, = share when exact), "exact", "samples"}."""
        if not self.randomized:
            predictions = self.model.predict(list(xs))
            return [{"falsified": bool(p != label), "prediction": int(p)} for p in predictions]
        counts, exact = self.model.vote_counts(list(xs), self.config["judge_samples"],
                                               self.seed + 1, self.config["exact_limit"])
        level = REPORT_ALPHA / self.config["judge_candidates"]
        verdicts = []
        for row, is_exact in zip(counts, exact):
            n, k = int(row.sum()), int(row[label])
            upper = k / n if is_exact else upper_confidence_bound(k, n, level)
            verdicts.append({"falsified": bool(upper <= 0.5 if is_exact else upper < 0.5),
                             "share": k / n, "upper": float(upper), "exact": bool(is_exact),
                             "samples": n})
        return verdicts


def judge_best(judge: Judge, scored: dict, label: int, count: int) -> dict:
    """Judge the `count` lowest-scored candidates (text -> guide score); the first verdict that
    falsifies, else the best-scored one's."""
    best = sorted(scored, key=scored.get)[:count]
    verdicts = judge(best, label)
    for text, verdict in zip(best, verdicts):
        if verdict["falsified"]:
            return {**verdict, "counterexample": text, "guide": float(scored[text])}
    return {**verdicts[0], "closest": best[0], "guide": float(scored[best[0]]),
            "judged": len(best)}


# Text search --------------------------------------------------------------------------------------

def substitution_candidates(words: list[str], options: list[list[str]], config: dict,
                            judge: Judge, label: int, rng: np.random.Generator) -> tuple[dict, str]:
    """Candidate texts (text -> guide score) over combinations of per-position options, and how
    they were found ("exhaustive" or "beam + random")."""
    changeable = [j for j, o in enumerate(options) if o]
    total = math.prod(len(options[j]) + 1 for j in changeable)
    scored: dict[str, float] = {}

    def score(texts):
        texts = [t for t in dict.fromkeys(texts) if t not in scored]
        if texts:
            for text, value in zip(texts, judge.guide(texts, label)):
                scored[text] = float(value)

    if total <= config["exhaustive_cap"]:
        combos = itertools.product(*[[words[j]] + options[j] for j in changeable])
        texts = []
        for choice in combos:
            edited = list(words)
            for j, w in zip(changeable, choice):
                edited[j] = w
            texts.append(" ".join(edited))
        score(texts)
        return scored, f"exhaustive ({total} combinations)"
    beam = [tuple(words)]
    for _ in changeable:
        expansions = []
        for state in beam:
            for j in changeable:
                if state[j] != words[j]:
                    continue
                for w in options[j]:
                    expansions.append(" ".join(state[:j] + (w,) + state[j + 1:]))
        if not expansions:
            break
        score(expansions)
        beam = [tuple(t.split()) for t in sorted(dict.fromkeys(expansions), key=scored.get)
                [:config["beam_width"]]]
    randoms = []
    for _ in range(config["random_combinations"]):
        edited = list(words)
        for j in changeable:
            pick = int(rng.integers(len(options[j]) + 1))
            if pick:
                edited[j] = options[j][pick - 1]
        randoms.append(" ".join(edited))
    score(randoms)
    return scored, f"beam {config['beam_width']} + {config['random_combinations']} random of {total}"


def single_edits(state: tuple, vocabulary: list[str]) -> list[str]:
    """Every text one word edit from `state`: a substitution or insertion of a vocabulary word, or
    a deletion (a text keeps at least one word)."""
    out = []
    for j in range(len(state) + 1):
        for w in vocabulary:
            out.append(" ".join(state[:j] + (w,) + state[j:]))
            if j < len(state) and w != state[j]:
                out.append(" ".join(state[:j] + (w,) + state[j + 1:]))
        if j < len(state) and len(state) > 1:
            out.append(" ".join(state[:j] + state[j + 1:]))
    return out


def word_edit_candidates(words: list[str], edits: int, vocabulary: list[str], config: dict,
                         judge: Judge, label: int) -> tuple[dict, str]:
    """Candidate texts within `edits` word edits of `words` (beam search, one edit a level)."""
    scored: dict[str, float] = {}
    beam = [tuple(words)]
    for _ in range(edits):
        expansions = [t for state in beam for t in single_edits(state, vocabulary)]
        texts = [t for t in dict.fromkeys(expansions) if t not in scored]
        for start in range(0, len(texts), 4096):
            chunk = texts[start:start + 4096]
            scored.update(zip(chunk, map(float, judge.guide(chunk, label))))
        beam = [tuple(t.split()) for t in sorted(dict.fromkeys(expansions), key=scored.get)
                [:config["beam_width"]]]
    return scored, (f"beam {config['beam_width']}, {edits} edit(s) over {len(vocabulary)} words "
                    f"(substitute, insert, delete)")


def training_vocabulary(task, size: int) -> list[str]:
    counts = Counter(w for text in task.train.xs for w in text.lower().split())
    return [w for w, _ in counts.most_common(size)]


# Per-unit audits ----------------------------------------------------------------------------------

def substitution_options(model, task, text: str) -> list[list[str]]:
    """Per whitespace word of `text`, the substitutes of the certificate's threat set: the model's
    own when it has them (CROWD's neighbour graph), else the task's substitution table."""
    if callable(getattr(model, "substitution_options", None)):
        return model.substitution_options(text)
    table = task.substitutions
    return [table[w.lower()] if table is not None else [] for w in text.split()]


def audit_text(model, task, unit: str, outcomes: list[dict], config: dict, judge: Judge,
               backdoor: bool = False):
    """Yield (example_index, falsified, evidence) for certified text examples: the test inputs, or
    for a backdoor cell (`backdoor`) the triggered texts its certificates are about."""
    rng = np.random.default_rng(config["seed"])
    vocabulary = training_vocabulary(task, config["vocabulary"]) if unit == "words" else None
    latent = unit == "latent_l2" and callable(getattr(model, "latents", None))
    for outcome in outcomes:
        label = outcome["label"]
        text = outcome["adversarial_text"] if backdoor else \
            task.test.inputs([outcome["example_index"]])[0]
        words = text.split()
        if unit == "words":
            edits = int(outcome["radius"])
            scored, search = word_edit_candidates(words, edits, vocabulary, config, judge, label)
        else:
            options = substitution_options(model, task, text)
            scored, search = substitution_candidates(words, options, config, judge, label, rng)
        evidence = {"search": search, "candidates": len(scored)}
        if latent:
            shift = latent_violation(model, text, list(scored), outcome["extra"]["r_hat"])
            if shift is not None:
                yield outcome["example_index"], True, {**evidence, **shift}
                continue
        if not scored:
            yield outcome["example_index"], False, {**evidence, "note": "no substitutable word"}
            continue
        verdict = judge_best(judge, scored, label, config["judge_candidates"])
        if judge.randomized and verdict["falsified"]:
            # p_y at x itself, judged alike. An exact share below the certificate's p_lower is the
            # 1 - alpha event failing; at or above it (p_lower_held) the bound itself is wrong,
            # whatever the sampling: one such example shows the certificate unsound.
            original = judge([text], label)[0]
            verdict["original_share"], verdict["original_exact"] = original["share"], original["exact"]
            verdict["p_lower"] = outcome["p_lower"]
            verdict["p_lower_held"] = bool(original["exact"] and original["share"] >= outcome["p_lower"])
        yield outcome["example_index"], verdict.pop("falsified"), {**evidence, **verdict}


def latent_violation(model, text: str, candidates: list[str], r_hat: float) -> dict | None:
    """The first candidate whose latent moves farther than R_hat from the text's, if any."""
    origin = model.latents([text])[0]
    for start in range(0, len(candidates), 4096):
        chunk = candidates[start:start + 4096]
        shifts = np.linalg.norm(model.latents(chunk) - origin, axis=1)
        worst = int(np.argmax(shifts))
        if shifts[worst] > r_hat * (1 + LATENT_TOLERANCE):
            return {"counterexample": chunk[worst], "latent_shift": float(shifts[worst]),
                    "r_hat": float(r_hat)}
    return None


def audit_l2(model, task, outcomes: list[dict], config: dict, judge: Judge):
    """PGD-l2 with EOT on the smoothed classifier inside each certified radius."""
    if not callable(getattr(model, "logits", None)):
        raise UsageError(f"{type(model).__name__} has no differentiable logits(x) (Differentiable): "
                         f"its l2 certificates cannot be audited")
    indices = [o["example_index"] for o in outcomes]
    x = torch.as_tensor(np.asarray(task.test.inputs(indices)), dtype=torch.float32)
    labels = torch.tensor([o["label"] for o in outcomes])
    radii = torch.tensor([o["radius"] for o in outcomes], dtype=torch.float32) * (1 - 1e-6)
    adversarial = pgd_l2_eot(model, x, labels, radii, config["pgd_steps"], config["eot_samples"],
                             config["seed"])
    for k, outcome in enumerate(outcomes):
        verdict = judge([adversarial[k].numpy()], outcome["label"])[0]
        distance = float((adversarial[k] - x[k]).norm())
        yield outcome["example_index"], verdict.pop("falsified"), {
            "search": f"PGD-l2 {config['pgd_steps']} steps, EOT {config['eot_samples']}",
            "distance": distance, "radius": float(outcome["radius"]), **verdict}


def pgd_l2_eot(model, x: torch.Tensor, labels: torch.Tensor, radii: torch.Tensor, steps: int,
               eot: int, seed: int) -> torch.Tensor:
    """Minimise log E[softmax(f(x' + noise))_y] over ||x' - x||_2 <= radius, x' in [0, 1]."""
    torch.manual_seed(seed)
    shape = (-1,) + (1,) * (x.dim() - 1)
    step = (2.5 * radii / max(steps, 1)).view(shape)
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        copies = (x + delta).repeat_interleave(eot, dim=0)
        probs = torch.softmax(model.logits(copies).cpu(), dim=1).view(len(x), eot, -1).mean(dim=1)
        loss = torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).sum()
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = delta - step * grad / norms
            delta = (x + delta).clamp(0, 1) - x
            scale = (radii.view(shape) / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape))
            delta = delta * scale.clamp(max=1.0)
    return (x + delta).detach()


# Cells and suites ---------------------------------------------------------------------------------

def audit_cell(store, record, cell, task, build_model, config: dict, config_hash: str) -> None:
    """Audit one cell's certified examples not yet audited under `config_hash`, writing each
    example's result as it is decided (an interrupted audit resumes). `build_model()` gives the
    cell's defended model; it is not called when there is nothing left to do."""
    unit = base_unit(record.certificate_unit)
    done = store.audited_examples(record.cell_id, config_hash)
    todo = [o for o in store.outcomes(record.cell_id) if o["certified"] and o["example_index"] not in done]
    if not todo and store.audit_opened(record.cell_id, config_hash):
        return
    model = build_model()
    store.open_audit(record.cell_id, config_hash, config, is_randomized(model), cell.protocol.alpha)
    if not todo:
        return
    judge = Judge(model, config, config["seed"])
    if unit == "l2":
        results = audit_l2(model, task, todo, config, judge)
    elif unit in SUBSTITUTION_UNITS or unit == "words":
        results = audit_text(model, task, unit, todo, config, judge,
                             backdoor=cell.poison is not None)
    else:
        raise UsageError(f"no audit for certificate unit {record.certificate_unit!r}")
    for example_index, falsified, evidence in results:
        store.write_audit(record.cell_id, config_hash, example_index, falsified, evidence)


def summarize(store, cell_id: str) -> dict | None:
    """The cell's latest audit (see row_verdict), its budgets and its examples, or None."""
    audit = store.latest_audit(cell_id)
    if audit is None:
        return None
    return {**row_verdict(audit["checked"], audit["falsified"], audit["randomized"], audit["alpha"]),
            "randomized": audit["randomized"], "config": audit["config"],
            "config_hash": audit["config_hash"], "examples": audit["examples"]}


def row_verdict(checked: int, falsified: int, randomized: bool, alpha: float) -> dict:
    """checked, falsified, the one-sided 95% upper bound of the violation rate (None at n = 0), the
    rate allowed (alpha for a randomized certificate, 0 for a deterministic one) and `broken`: any
    violation of a deterministic certificate, or a violation rate significantly above alpha (a
    one-sided binomial test at level 0.05)."""
    allowed = alpha if randomized else 0.0
    if randomized:
        broken = bool(checked and binomtest(falsified, checked, allowed,
                                            alternative="greater").pvalue < REPORT_ALPHA)
    else:
        broken = falsified > 0
    upper = upper_confidence_bound(falsified, checked, REPORT_ALPHA) if checked else None
    return {"checked": checked, "falsified": falsified, "upper": upper, "allowed": allowed,
            "broken": broken}


def certifying_cells(suite, store) -> list[tuple]:
    """(store record, suite cell) of every finished clean or backdoor cell of a certifying defense
    (attack cells are judged by their attacks, not certified)."""
    cells = {cell.id: cell for cell in suite.cells}
    found = []
    for record in store.cells(suite.name, status="done"):
        cell = cells.get(record.cell_id)
        if cell is None or cell.attack is not None:
            continue
        if DEFENSES.get(cell.defense.name).tags.get("certifies") and record.certificate_unit:
            found.append((record, cell))
    return found


def audit_suite(suite, store, config: dict, cache_dir=None, device=None, log=print) -> list[dict]:
    """Audit every certifying cell of the suite found finished in the store; returns one summary
    per cell (with its task, defense, inputs: clean or a poisoner's triggered texts, and unit)."""
    from benchmark.evaluate import load_tasks

    found = certifying_cells(suite, store)
    if not found:
        raise UsageError(f"the store {store.path} has no finished certifying cell of suite "
                         f"'{suite.name}'; run `rbench run {suite.name}` first")
    config_hash = content_hash(config, 12)
    tasks = load_tasks(suite)
    summaries = []
    for record, cell in found:
        task = tasks[cell.task_label]
        log(f"auditing {cell.describe()} ({record.certificate_unit})")
        started = time.perf_counter()
        audit_cell(store, record, cell, task, lambda: cell_model(cell, task, cache_dir, device),
                   config, config_hash)
        summary = summarize(store, record.cell_id)
        inputs = "clean" if cell.poison is None else f"triggered ({record.attack})"
        summaries.append({"task": record.task, "defense": record.defense, "inputs": inputs,
                          "unit": record.certificate_unit,
                          "seconds": time.perf_counter() - started, **summary})
    return summaries


def cell_model(cell, task, cache_dir, device):
    """The cell's defended model as the run built it: for a backdoor cell, on the poisoned training
    split (cached with the run's)."""
    from benchmark.evaluate import build_backdoor, build_defended, cell_batches, make_poisoner
    from benchmark.paths import default_cache_dir

    cache_dir = cache_dir or default_cache_dir()
    if cell.poison is None:
        return build_defended(cell, task, cache_dir, device)
    return build_backdoor(cell, make_poisoner(cell), task, cell_batches(cell, task), cache_dir,
                          device)[0]


def format_report(summaries: list[dict], config: dict) -> str:
    lines = ["budgets: " + ", ".join(f"{k}={v}" for k, v in config.items()),
             f"falsified: certified examples with a counterexample inside the certificate's threat "
             f"model; bound: one-sided {100 * (1 - REPORT_ALPHA):.0f}% Clopper-Pearson upper bound "
             f"of the violation rate; allowed: alpha for a randomized certificate, 0 for a "
             f"deterministic one", ""]
    header = ("task", "defense", "inputs", "certificate unit", "checked", "falsified", "bound %",
              "allowed %", "verdict", "seconds")
    rows = [header]
    for s in summaries:
        rows.append((s["task"], s["defense"], s["inputs"], s["unit"], str(s["checked"]),
                     str(s["falsified"]),
                     "n/a" if s["upper"] is None else f"{100 * s['upper']:.1f}",
                     f"{100 * s['allowed']:.1f}",
                     "BROKEN" if s["broken"] else "holds" if s["checked"] else "nothing certified",
                     f"{s['seconds']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    for s in summaries:
        for example in s["examples"]:
            if example["falsified"]:
                lines.append(f"  {s['task']} / {s['defense']} / {s['inputs']} example "
                             f"{example['example_index']}: {example['evidence']}")
    return "\n".join(lines)
