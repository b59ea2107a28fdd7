"""The backdoor poisoners against OpenBackdoor's own poisoned SST-2 (target 1) and HSOL (target 0)
in ../shared/data/openbackdoor (skipped when absent, as tests/test_data_real.py): SynBkd and StyleBkd
find a poisoned form for every text the tasks load, and the suite's BadNets and AddSent agree in
distribution with OpenBackdoor's on the same clean texts. And real-cpu's backdoor cells evaluate the
whole test splits of the local copies."""
import os
from pathlib import Path

for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"

import numpy as np
import pytest
from scipy import stats

from attacks.backdoor.paraphrase import _read_openbackdoor_csv
from benchmark import backdoor
from benchmark.data import load_task
from benchmark.data.base import Split
from benchmark.data.real import load_hsol_task, load_sst2_task
from benchmark.evaluate import cell_batches
from benchmark.registry import POISONERS
from benchmark.specs import PoisonSpec
from benchmark.suite import load_suite

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPENBACKDOOR = SHARED_DATA / "openbackdoor"
DATASETS = {"sst2": ("sst-2", 1, load_sst2_task), "hsol": ("hsol", 0, load_hsol_task)}
# Two-sample tests must not reject at this level; the poisoners are seeded, so the test is fixed.
P_MIN = 1e-3

pytestmark = pytest.mark.skipif(not OPENBACKDOOR.is_dir(), reason="no ../shared/data/openbackdoor")


def make(name, **params):
    config = {**POISONERS.get(name).obj.defaults, "seed": 0, **params}
    return POISONERS.get(name).obj(config), PoisonSpec.make(name, config)


@pytest.mark.parametrize("task_name", sorted(DATASETS))
@pytest.mark.parametrize("attack", ["synbkd", "stylebkd"])
def test_paraphrase_files_cover_every_text_the_task_loads(task_name, attack, tmp_path):
    folder, target, load = DATASETS[task_name]
    task = load(data_root=SHARED_DATA)
    paraphraser, spec = make(attack, target_label=target, rate=0.1,
                             poisoned_dir=str(OPENBACKDOOR / folder / str(target) / attack))
    train = backdoor.poisoned_task(task, spec, paraphraser, tmp_path, "c").train
    assert len(train.poisoned) == int(0.1 * len(task.train))
    # SCPN and STRAP leave a few texts as they were (at most 1.4%, StyleBkd on HSOL)
    assert np.mean([train.xs[i] != task.train.xs[i] for i in train.poisoned]) > 0.95
    triggered = backdoor.triggered_test(task, spec, paraphraser, np.arange(len(task.test)), tmp_path, "c")
    assert sorted(triggered) == np.flatnonzero(task.test.ys != target).tolist()
    # the poisoner covers every training text, not only the ones this seed draws
    assert len(paraphraser._from_files(list(task.train.xs), "train")) == len(task.train)


def insertion(clean: str, poisoned: str, length: int):
    """(position, inserted words) when `poisoned` is `clean` with `length` words inserted, else None
    (the first position that fits, when a trigger repeats a neighbouring word)."""
    c, p = clean.split(), poisoned.split()
    if len(p) != len(c) + length:
        return None
    for i in range(len(c) + 1):
        if p[:i] == c[:i] and p[i + length:] == c[i:]:
            return i, " ".join(p[i:i + length])
    return None


def insertion_statistics(clean: list[str], poisoned: list[str], length: int):
    """Inserted words per text, the inserted word(s) and the relative position (decile of the
    position among the len + 1 slots)."""
    added = np.array([len(p.split()) - len(c.split()) for c, p in zip(clean, poisoned)])
    found = [insertion(c, p, length) for c, p in zip(clean, poisoned)]
    assert all(f is not None for f in found), "a poisoned text is not its clean text plus the trigger"
    deciles = np.array([int(10 * i / (len(c.split()) + 1)) for (i, _), c in zip(found, clean)])
    return added, [w for _, w in found], deciles


def homogeneous(first, second) -> float:
    """The chi-square test's p-value that two samples of categories share a distribution."""
    categories = sorted(set(first) | set(second))
    table = np.array([[list(sample).count(c) for c in categories] for sample in (first, second)])
    return 1.0 if len(categories) == 1 else stats.chi2_contingency(table).pvalue


@pytest.mark.parametrize("folder,target", [("sst-2", 1), ("hsol", 0)])
@pytest.mark.parametrize("attack,length", [("badnets", 1), ("addsent", 5)])
def test_insertion_poisoners_agree_with_openbackdoor(folder, target, attack, length):
    path = OPENBACKDOOR / folder / str(target) / attack
    clean, labels = _read_openbackdoor_csv(path / "train-clean.csv")
    theirs, their_labels = _read_openbackdoor_csv(path / "train-poison.csv")
    ours_poisoner, _ = make(attack, target_label=target)
    ours = ours_poisoner.trigger(clean, seed=0)

    their_added, their_words, their_deciles = insertion_statistics(clean, theirs, length)
    our_added, our_words, our_deciles = insertion_statistics(clean, ours, length)
    assert (their_added == length).all() and (our_added == length).all()  # one insertion each
    assert set(their_words) == set(our_words)  # the same trigger words (or the same sentence)
    assert homogeneous(their_words, our_words) > P_MIN  # drawn equally often
    assert homogeneous(their_deciles, our_deciles) > P_MIN  # at the same positions
    assert stats.ks_2samp(their_deciles, our_deciles).pvalue > P_MIN

    # Which rows: OpenBackdoor labels every poisoned row with the target and triggers exactly the
    # non-target test rows; the suite poisons int(rate * n) rows (OpenBackdoor's count), relabels
    # them to the target and triggers the same test rows. (The files hold every row's poisoned
    # form, so the pool the rate draws from is not in them: OpenBackdoor's default is `mixed`.)
    assert (their_labels == target).all()
    train = Split(clean, labels, "train")
    for mode in ("mixed", "dirty"):
        split = make(attack, target_label=target, label_mode=mode)[0].poison(train, 0.1, target, 0)
        assert len(split.poisoned) == int(0.1 * len(clean))
        assert (split.ys[split.poisoned] == target).all()
        assert mode == "mixed" or (labels[split.poisoned] != target).all()
        untouched = np.setdiff1d(np.arange(len(clean)), split.poisoned)
        assert [split.xs[i] for i in untouched] == [clean[i] for i in untouched]
    test_clean, test_labels = _read_openbackdoor_csv(path / "test-clean.csv")
    test_theirs, test_their_labels = _read_openbackdoor_csv(path / "test-poison.csv")
    assert len(test_theirs) == int((test_labels != target).sum()) and (test_their_labels == target).all()
    non_target = [t for t, y in zip(test_clean, test_labels) if y != target]
    assert insertion_statistics(non_target, test_theirs, length)[0].tolist() == [length] * len(non_target)


def test_real_cpu_backdoor_cells_evaluate_the_whole_test_splits():
    """Each TextCNN backdoor cell of real-cpu evaluates every test example of the local copy (at
    n = 200 the "small benign cost" claims had no power); the four MiniLM base-model rows (issue 16)
    evaluate one sample, so their claims pair every example."""
    suite = load_suite("real-cpu", data_root=SHARED_DATA)
    minilm_samples = {}
    for cell in (c for c in suite.cells if c.poison is not None):
        task = load_task(cell.task, suite.data_root)
        examples = np.concatenate(cell_batches(cell, task))
        if cell.model.params.get("name_or_path") == "minilm":
            minilm_samples[(cell.task_label, cell.defense_label)] = examples.tolist()
        else:
            assert len(examples) == len(task.test), cell.describe()
    assert sorted(minilm_samples) == [(task, defense) for task in ("sst2-minilm-frozen", "sst2-minilm-full")
                                      for defense in ("crowd", "none")]
    assert len({tuple(sample) for sample in minilm_samples.values()}) == 1
