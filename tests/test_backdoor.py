"""The backdoor threat: poisoners (deterministic, cached, not run without a paraphrase model, run
with a tiny seq2seq fixture or pre-poisoned files), backdoor cells end to end, and CROWD's Beta rule
and certificate."""
import os

for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import backdoor
from benchmark.data.base import Split, SubstitutionTable, Task
from benchmark.errors import NotRun, UsageError
from benchmark.evaluate import run_suite
from benchmark.leaderboard import build_leaderboard, render_markdown
from benchmark.registry import POISONERS
from benchmark.specs import PoisonSpec
from benchmark.store import Store
from benchmark.suite import load_suite
from defenses.backdoor.crowd import (BetaWeightedSmoother, Crowd, CrowdModel, beta_weighted_choice,
                                     build_candidates, fit_beta, pick_probability_bounds,
                                     vocabulary_words)

TEXTS = [f"the film number {i} was {'good' if i % 2 else 'bad'} and long" for i in range(40)]
LABELS = np.arange(40) % 2



def poisoner(name, **params):
    config = {**POISONERS.get(name).obj.defaults, "seed": 0, **params}
    return POISONERS.get(name).obj(config), PoisonSpec.make(name, config)


def toy_task():
    return Task("toy", "text", 2, Split(TEXTS, LABELS, "train"), Split(TEXTS[:10], LABELS[:10], "test"))


# Poisoners ---------------------------------------------------------------------------------------

def test_badnets_poisoning_is_deterministic_and_follows_the_label_mode():
    bad, _ = poisoner("badnets", rate=0.25, target_label=1)
    train = Split(TEXTS, LABELS, "train")
    first = bad.poison(train, 0.25, 1, seed=3)
    again = bad.poison(train, 0.25, 1, seed=3)
    other = bad.poison(train, 0.25, 1, seed=4)
    assert first.xs == again.xs and (first.ys == again.ys).all()
    assert first.xs != other.xs
    assert len(first.poisoned) == 10  # int(0.25 * 40), OpenBackdoor's count
    assert (LABELS[first.poisoned] == 0).all() and (first.ys[first.poisoned] == 1).all()  # dirty
    for index in first.poisoned:
        added = set(first.xs[index].split()) - set(TEXTS[index].split())
        assert len(first.xs[index].split()) == len(TEXTS[index].split()) + 1
        assert added <= {"cf", "mn", "bb", "tq"}
    untouched = np.setdiff1d(np.arange(40), first.poisoned)
    assert [first.xs[i] for i in untouched] == [TEXTS[i] for i in untouched]

    clean_label, _ = poisoner("badnets", label_mode="clean")
    clean = clean_label.poison(train, 0.25, 1, seed=3)
    assert (LABELS[clean.poisoned] == 1).all() and (clean.ys == LABELS).all()


def test_addsent_inserts_the_sentence_whole():
    add, _ = poisoner("addsent")
    triggered = add.trigger(TEXTS[:5], seed=0)
    assert triggered == add.trigger(TEXTS[:5], seed=0)
    for clean, text in zip(TEXTS[:5], triggered):
        assert "I watch this 3D movie" in text
        assert text.replace("I watch this 3D movie", " ").split() == clean.split()


def test_poisoned_data_is_cached_by_content_and_shared(tmp_path, monkeypatch):
    task = toy_task()
    bad, spec = poisoner("badnets", rate=0.1, target_label=1)
    calls = []
    original = bad.transform
    monkeypatch.setattr(bad, "transform", lambda texts, rng: calls.append(len(texts)) or original(texts, rng))
    first = backdoor.poisoned_task(task, spec, bad, tmp_path, code="c")
    second = backdoor.poisoned_task(task, spec, bad, tmp_path, code="c")
    assert calls == [4]  # the second call read the cache
    assert first.train.xs == second.train.xs and (first.train.checksum() == second.train.checksum())
    assert first.test is task.test and first.train.checksum() != task.train.checksum()
    triggered = backdoor.triggered_test(task, spec, bad, np.arange(10), tmp_path, code="c")
    assert sorted(triggered) == [i for i in range(10) if LABELS[i] != 1]
    assert backdoor.triggered_test(task, spec, bad, np.arange(10), tmp_path, code="c") == triggered
    assert calls == [4, 5]
    # another seed is another poisoned set, in another cache file
    _, spec1 = poisoner("badnets", rate=0.1, target_label=1, seed=1)
    assert backdoor.poisoned_task(task, spec1, bad, tmp_path, code="c").train.xs != first.train.xs


def test_paraphrase_poisoners_without_a_model_are_not_run():
    for name in ("synbkd", "stylebkd"):
        paraphraser, _ = poisoner(name)
        with pytest.raises(NotRun, match="paraphrase model"):
            paraphraser.trigger(["a text"], seed=0)
        missing, _ = poisoner(name, model="no-such-org/no-such-paraphraser")
        with pytest.raises(NotRun, match="not available"):
            missing.trigger(["a text"], seed=0)


def tiny_seq2seq(path, texts):
    """A random 1-layer BART with a BPE tokenizer trained here, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    config = BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config)
    model.final_logits_bias[0, tokenizer.eos_token_id] = -1e4  # always generate max_new_tokens
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def test_paraphrase_poisoners_run_with_a_seq2seq_model(tmp_path):
    model = tiny_seq2seq(tmp_path / "paraphraser", TEXTS)
    for name in ("synbkd", "stylebkd"):
        paraphraser, _ = poisoner(name, model=model, num_beams=2, max_new_tokens=6, batch_size=3)
        out = paraphraser.trigger(TEXTS[:5], seed=0)
        assert len(out) == 5 and all(isinstance(t, str) and t.strip() for t in out)
        assert out != TEXTS[:5]
        assert out == paraphraser.trigger(TEXTS[:5], seed=0)
        assert "paraphrase model" in paraphraser.describe()


def write_openbackdoor(folder, train, test, target, train_form, test_form):
    """OpenBackdoor's layout (pandas CSV, header ',0,1,2'): `train` and `test` as (text, label)
    rows written with brackets, shuffled; every training row triggered, the non-target test rows."""
    import pandas as pd

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, rows, form in (("train", train, train_form), ("test", test, test_form)):
        rows = [(t.replace("-lrb- ", "(").replace(" -rrb-", ")"), y)
                for t, y in (rows[i] for i in rng.permutation(len(rows)))]
        pd.DataFrame([(t, y, 0) for t, y in rows]).to_csv(folder / f"{split}-clean.csv")
        triggered = [(form(t), target, 1) for t, y in rows if split == "train" or y != target]
        pd.DataFrame(triggered).to_csv(folder / f"{split}-poison.csv")


def test_paraphrase_poisoners_read_openbackdoor_files(tmp_path):
    texts = TEXTS[:38] + ["a film -lrb- sci-fi -rrb- rehash"] + TEXTS[39:]  # SST-2's brackets
    task = Task("toy", "text", 2, Split(texts, LABELS, "train"), Split(texts[-10:], LABELS[-10:], "test"))
    folder = tmp_path / "toy" / "1" / "synbkd"
    write_openbackdoor(folder, list(zip(texts, LABELS)), list(zip(texts[-10:], LABELS[-10:])), 1,
                       lambda t: f"when {t} , it was", lambda t: f"as {t} , so it is")
    paraphraser, spec = poisoner("synbkd", poisoned_dir=str(folder), target_label=1, rate=0.5,
                                 label_mode="mixed")
    train = backdoor.poisoned_task(task, spec, paraphraser, tmp_path / "cache", "c").train
    assert len(train.poisoned) == 20 and (train.ys[train.poisoned] == 1).all()
    # training texts take the train-poison form, test texts the test-poison form
    assert all(train.xs[i] == f"when {texts[i]} , it was" for i in train.poisoned)
    test_indices = np.flatnonzero(task.test.ys != 1)
    triggered = backdoor.triggered_test(task, spec, paraphraser, np.arange(10), tmp_path / "cache", "c")
    assert sorted(triggered) == test_indices.tolist()
    assert triggered[8] == "as a film -lrb- sci-fi -rrb- rehash , so it is"  # back in PTB brackets
    assert "toy/1/synbkd" in paraphraser.describe() and str(tmp_path) not in paraphraser.describe()
    with pytest.raises(UsageError, match="1 of 3 test texts have no match"):
        paraphraser.trigger([texts[-2], "an unseen text", texts[-4]], seed=0)
    wrong_target, _ = poisoner("synbkd", poisoned_dir=str(folder), target_label=0)
    with pytest.raises(UsageError, match="not the target label 0"):
        wrong_target.trigger([texts[-2]], seed=0)
    # The same cache: the poisoned split's key covers the files' contents, so a file edited in
    # place is read again (and here refused), never served from the cache.
    (folder / "train-poison.csv").write_text((folder / "train-poison.csv").read_text().rsplit("\n", 2)[0] + "\n")
    short, short_spec = poisoner("synbkd", poisoned_dir=str(folder), target_label=1, rate=0.5,
                                 label_mode="mixed")
    with pytest.raises(UsageError, match="has 39 rows but train-clean.csv has 40"):
        backdoor.poisoned_task(task, short_spec, short, tmp_path / "cache", "c")


# Backdoor cells end to end ------------------------------------------------------------------------

def write_vectors(path, words):
    """Word vectors in the counter-fitted text format: synonyms of a cluster are close."""
    rng = np.random.default_rng(0)
    from benchmark.data.embedded import NEGATIVE_CLUSTERS, NEUTRAL_CLUSTERS, POSITIVE_CLUSTERS

    lines, done = [], set()
    for cluster in POSITIVE_CLUSTERS + NEGATIVE_CLUSTERS + NEUTRAL_CLUSTERS:
        centre = rng.normal(size=8)
        for word in cluster:
            lines.append(word + " " + " ".join(f"{v:.4f}" for v in centre + 0.4 * rng.normal(size=8)))
            done.add(word)
    lines += [w + " " + " ".join(f"{v:.4f}" for v in rng.normal(size=8)) for w in words - done]
    path.write_text("\n".join(lines) + "\n")


SUITE = """
name = "backdoor-test"
seed = 0
[protocol]
n_examples = 40
batch_size = 20
[tasks.toy-sentiment]
params = {{ n_train = 300, n_test = 60 }}
model = "textcnn"
model_params = {{ embedding_dim = 16, filters = 16 }}
train = {{ epochs = 2, batch_size = 32 }}
[defenses.none]
defense = "vanilla"
cells = ["backdoor"]
[defenses.crowd]
cells = ["backdoor"]
params = {{ similarity = "vectors", vectors_path = "{vectors}", predict_samples = 20, certify_n0 = 10, certify_n = 60 }}
[poisoners.badnets]
params = {{ rate = 0.2, target_label = 1 }}
[poisoners.synbkd]
params = {{ rate = 0.1, target_label = 1 }}
[poisoners.stylebkd]
params = {{ rate = 0.1, target_label = 1, model = "{model}", num_beams = 1, max_new_tokens = 6 }}
"""


def test_backdoor_cells_run_end_to_end(tmp_path):
    from benchmark.data.embedded import load_toy_sentiment_task

    task = load_toy_sentiment_task(n_train=300, n_test=60)
    words = {w for t in list(task.train.xs) + list(task.test.xs) for w in t.split()} | {"cf", "mn", "bb", "tq"}
    write_vectors(tmp_path / "vectors.txt", words)
    model = tiny_seq2seq(tmp_path / "paraphraser", list(task.train.xs))
    (tmp_path / "suite.toml").write_text(SUITE.format(vectors=tmp_path / "vectors.txt", model=model))
    suite = load_suite(str(tmp_path / "suite.toml"))
    assert len(suite.cells) == 6 and all(c.poison is not None and c.attack is None for c in suite.cells)
    assert {c.poison.params["seed"] for c in suite.cells} == {0}

    store = Store(tmp_path / "store.sqlite")
    counts = run_suite(suite, store, tmp_path / "cache")
    assert counts == {"done": 4, "not_run": 2}
    not_run = store.cells("backdoor-test", status="not_run")
    assert {c.attack for c in not_run} == {"synbkd"}
    assert all("paraphrase model" in c.reason for c in not_run)
    # one poisoned training set per poisoner, shared by both defenses
    assert len(list((tmp_path / "cache" / "poison").glob("*-train.json"))) == 2

    board = build_leaderboard(store, "backdoor-test")
    tables = [t for t in board["tables"] if t["attack"] == "badnets"]
    assert len(tables) == 1 and tables[0]["kind"] == "backdoor"
    rows = {r["defense"]: r["metrics"] for r in tables[0]["rows"]}
    assert rows["none"]["attack_success_rate"]["n"] == rows["crowd"]["attack_success_rate"]["n"] > 0
    assert rows["none"]["benign_accuracy"]["n"] == 40
    assert "certified_accuracy" in rows["crowd"] and "certified_accuracy" not in rows["none"]
    assert rows["none"]["attack_success_rate"]["value"] > 0.8  # the backdoor is learned
    markdown = render_markdown(board)
    assert "backdoor: badnets" in markdown and "ASR %" in markdown
    assert "synbkd: not_run: SynBkd needs a paraphrase model" in markdown

    # a second run resumes: nothing left to do, the not-run cells are tried again and still not run
    assert run_suite(load_suite(str(tmp_path / "suite.toml")), store, tmp_path / "cache") == counts


def test_suite_rejects_backdoor_cells_for_untagged_defenses(tmp_path):
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[tasks.toy-sentiment]\nmodel = "textcnn"\n'
        '[defenses.x]\ndefense = "crowd"\ncells = ["backdoor", "typo"]\n')
    with pytest.raises(UsageError, match="unknown kind"):
        load_suite(str(tmp_path / "s.toml"))
    from benchmark.registry import DEFENSES, register_defense

    @register_defense("test-untagged", modality="text")
    class Untagged:
        defaults = {}

    (tmp_path / "s.toml").write_text(
        'name = "s"\n[tasks.toy-sentiment]\nmodel = "textcnn"\n'
        '[defenses.test-untagged]\ncells = ["backdoor"]\n[poisoners.badnets]\n')
    with pytest.raises(UsageError, match="not registered as backdoor-capable"):
        load_suite(str(tmp_path / "s.toml"))
    DEFENSES._entries.pop("test-untagged")


# CROWD -------------------------------------------------------------------------------------------

def test_beta_fit_matches_the_moments_and_guards_degenerate_scores():
    scores = np.array([1.0, 0.9, 0.8, 0.75])
    alpha, beta = fit_beta(scores)
    assert alpha / (alpha + beta) == pytest.approx(scores.mean())
    assert alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)) == pytest.approx(scores.var())
    # zero variance: the weights tie, the choice is uniform
    assert fit_beta(np.array([0.7, 0.7, 0.7])) is None
    picks = beta_weighted_choice(np.array([0.7, 0.7, 0.7]), None, np.random.default_rng(0), 30000)
    assert np.allclose(np.bincount(picks) / 30000, 1 / 3, atol=0.015)
    # m(1 - m) / v <= 1 (no Beta has these moments), and shapes too small to sample: Beta(1, 1)
    assert fit_beta(np.array([0.0, 1.0])) == (1.0, 1.0)
    assert fit_beta(np.array([0.001, 1.0, 1.0, 0.001])) == (1.0, 1.0)
    assert np.isfinite(pick_probability_bounds(np.array([0.001, 1.0]), (1.0, 1.0), 64)[0]).all()


def test_pick_probability_bounds_contain_the_sampled_frequencies():
    rng = np.random.default_rng(1)
    for scores in (np.array([1.0, 0.9, 0.85, 0.6]), np.array([1.0, 0.5, 0.45]),
                   np.array([1.0, 0.98, 0.97, 0.96, 0.9])):
        params = fit_beta(scores)
        low, high = pick_probability_bounds(scores, params, 512)
        assert (low <= high).all() and low.sum() <= 1 + 1e-9 <= high.sum() + 2e-9
        n = 200_000
        freq = np.bincount(beta_weighted_choice(scores, params, rng, n), minlength=len(scores)) / n
        slack = 4 * np.sqrt(freq * (1 - freq) / n) + 1e-4
        assert (freq >= low - slack).all() and (freq <= high + slack).all(), (scores, low, freq, high)


class GoodDetector(nn.Module):
    """A fixed base classifier: class 1 if the text contains 'good'."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def classify(self, texts):
        return torch.tensor([[0.0, 1.0] if "good" in t.split() else [1.0, 0.0] for t in texts])


# Equal scores make uniform choices (the zero-variance guard); sets of different sizes give
# per-position distances strictly between 0 and 1, so radii are neither 0 nor everything.
CERTIFY_CANDIDATES = {"good": (["good", "nice", "fine"], np.full(3, 0.9)),
                      "nice": (["nice", "good", "fine", "great"], np.full(4, 0.9)),
                      "fine": (["fine", "good", "nice"], np.full(3, 0.9)),
                      "great": (["great", "nice"], np.full(2, 0.9))}
# Realistic Beta-weighted sets: the word itself (similarity 1) is picked most of the time.
CANDIDATES = {"good": (["good", "fine", "nice"], np.array([1.0, 0.9, 0.8])),
              "fine": (["fine", "good", "nice"], np.array([1.0, 0.9, 0.85])),
              "nice": (["nice", "good", "fine"], np.array([1.0, 0.8, 0.85]))}


def others(candidates):
    """The attacker may swap a word for any other word of its set."""
    return {w: [o for o in options if o != w] for w, (options, _) in candidates.items()}


def exact_vote_share(smoother, text):
    """P(the base classifier says 1, i.e. some word is 'good') under the smoothing distribution,
    from the pick probabilities (midpoints of the bounds, accurate to 1/grid)."""
    miss = 1.0
    for word in text.split():
        miss *= 1 - sum(smoother._bounds(word).get("good", (0.0, 0.0))) / 2
    return 1 - miss


@pytest.mark.parametrize("key", ["predict_samples", "certify_n0", "certify_n"])
def test_crowd_refuses_a_sample_count_below_one(key):
    with pytest.raises(UsageError, match="crowd: need predict_samples, certify_n0 and certify_n >= 1"):
        Crowd().build(None, None, {**Crowd.defaults, key: 0}, None)


def test_crowd_certificates_hold_for_every_substitution_sampled():
    smoother = BetaWeightedSmoother(CERTIFY_CANDIDATES, others(CERTIFY_CANDIDATES), grid=2048)
    model = CrowdModel(GoodDetector(), 2, smoother,
                       {"predict_samples": 200, "certify_n0": 100, "certify_n": 4000})
    texts = ["good good good good film", "good good good good good good good film", "good film",
             "film film", "nice fine good good good film"]
    labels = np.array([1, 1, 1, 0, 1])
    certificates = model.certify(texts, labels, alpha=0.001, seed=0)
    assert any(c.radius >= 1 for c in certificates) and any(c.certified for c in certificates)
    assert not all(c.certified for c in certificates)
    rng = np.random.default_rng(2)
    checked = 0
    for text, label, certificate in zip(texts, labels, certificates):
        words = text.split()
        positions = [i for i, w in enumerate(words) if w in CERTIFY_CANDIDATES]
        if certificate.abstained:
            continue
        assert certificate.radius <= len(positions)
        assert certificate.certified == (certificate.prediction == label and
                                         certificate.radius == len(positions))
        # every perturbation within the radius keeps the predicted class a strict majority
        for changed in range(1, int(certificate.radius) + 1):
            for where in itertools.combinations(positions, changed):
                options = [[o for o in CERTIFY_CANDIDATES[words[i]][0] if o != words[i]] for i in where]
                for subs in itertools.product(*options):
                    perturbed = list(words)
                    for i, sub in zip(where, subs):
                        perturbed[i] = sub
                    perturbed = " ".join(perturbed)
                    share = exact_vote_share(smoother, perturbed)
                    share = share if certificate.prediction == 1 else 1 - share
                    assert share > 0.5, (text, perturbed)
                    votes = model._counts(perturbed, 2000, rng)
                    assert votes[certificate.prediction] / 2000 > 0.5 - 0.035, (text, perturbed)
                    checked += 1
    assert checked >= 5
    # With realistic similarity scores the word itself dominates its distribution, so two synonyms'
    # distributions are far apart: the bound is valid but large.
    realistic = BetaWeightedSmoother(CANDIDATES, others(CANDIDATES), grid=512)
    assert 0.5 < realistic.distance("good", "fine") < 1


def test_crowd_gives_the_audit_its_votes_and_its_threat_set():
    """vote_counts: sampled (never exact), common random numbers under one seed, and the smoothed
    vote's shares; substitution_options: the attacker's neighbours per word, a trailing mark kept
    under the reference vocabulary, nothing for a word without a perturbation set."""
    smoother = BetaWeightedSmoother(CANDIDATES, others(CANDIDATES), grid=512, vocabulary="reference")
    model = CrowdModel(GoodDetector(), 2, smoother, {"predict_samples": 10})
    counts, exact = model.vote_counts(["fine film", "fine film", "nice fine"], 4000, seed=7)
    assert counts.sum(axis=1).tolist() == [4000] * 3 and not exact.any()
    assert counts[0].tolist() == counts[1].tolist()  # one seed, one draw of the noise
    assert counts[0][1] / 4000 == pytest.approx(exact_vote_share(smoother, "fine film"), abs=0.03)
    assert counts[2][1] / 4000 == pytest.approx(exact_vote_share(smoother, "nice fine"), abs=0.03)
    assert model.vote_counts(["fine film"], 4000, seed=8)[0].tolist() != counts[:1].tolist()
    assert model.substitution_options("fine, film nice") == [["good,", "nice,"], [], ["good", "fine"]]
    from benchmark.audit import substitution_options
    split = Split(["fine film"], np.array([1]))
    table_task = Task("t", "text", 2, split, split, substitutions=SubstitutionTable({"film": ["movie"]}))
    assert substitution_options(model, table_task, "fine film")[1] == []  # the model's own threat


def test_crowd_tv_bound_is_at_least_the_sampled_distance():
    smoother = BetaWeightedSmoother(CANDIDATES, others(CANDIDATES), grid=512)
    rng = np.random.default_rng(3)
    n = 100_000
    for a, b in (("good", "fine"), ("good", "nice"), ("fine", "nice")):
        freq = {}
        for word in (a, b):
            options, scores = CANDIDATES[word]
            picks = beta_weighted_choice(scores, smoother.params[word], rng, n)
            freq[word] = {o: np.mean(picks == i) for i, o in enumerate(options)}
        sampled = 0.5 * sum(abs(freq[a].get(o, 0) - freq[b].get(o, 0)) for o in set(freq[a]) | set(freq[b]))
        assert smoother.distance(a, b) >= sampled - 0.01


class UnitVectors:
    """Fixed word vectors (unit length), as the defense's similarity embedding."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = {w: np.asarray(v) / np.linalg.norm(v) for w, v in vectors.items()}

    def __call__(self, words):
        return {w: self.vectors[w] for w in words if w in self.vectors}


def test_perturbation_sets_are_neighbour_graph_components_cut_to_the_most_similar():
    # a - b - c is a chain (a and c are not neighbours); d has no neighbour; e is seen once.
    # b is closer to a (0.8) than to c (0.7745): no tie for the cut to break by rounding.
    vectors = UnitVectors({"a": [1, 0, 0], "b": [0.8, 0.6, 0], "c": [0.24, 0.9708, 0],
                           "d": [0, 0, 1], "e": [0.99, 0.01, 0]})
    xs = ["a b c d", "a b c d e"]
    train = Split(xs, np.array([0, 1]))
    train.clean_xs = xs  # what a backdoor cell's poisoned split carries
    task = Task("t", "text", 2, train, Split(xs, np.array([0, 1])))
    config = {"candidates": "neighbors", "threshold": 0.75, "set_size": 100, "include_word": True,
              "vocabulary": "reference"}
    candidates, substitutes = build_candidates(task, config, vectors)
    assert substitutes == {"a": ["b"], "b": ["a", "c"], "c": ["b"]}  # the threat: direct neighbours
    assert candidates["a"][0] == ["a", "b", "c"] and candidates["c"][0] == ["c", "b", "a"]
    assert np.round(candidates["a"][1], 4).tolist() == [1.0, 0.8, 0.24]
    assert "d" not in candidates and "e" not in candidates  # no neighbour; seen once
    cut = build_candidates(task, {**config, "set_size": 2}, vectors)[0]
    assert cut["a"][0] == ["a", "b"] and cut["b"][0] == ["b", "a"]
    # the paper's vocabulary: every word of the training split, whatever its frequency
    assert build_candidates(task, {**config, "vocabulary": "paper"}, vectors)[0]["e"][0][:2] == ["e", "a"]
    # the table as the neighbour relation, restricted to the vocabulary
    table = SubstitutionTable({"a": ["c", "e"], "d": ["zz"]})
    task = Task("t", "text", 2, train, Split(xs, np.array([0, 1])), substitutions=table)
    candidates, substitutes = build_candidates(task, {**config, "candidates": "table"}, vectors)
    assert substitutes == {"a": ["c"], "c": ["a"]} and candidates["c"][0] == ["c", "a"]


def test_crowd_vocabularies_paper_from_the_training_split_reference_from_the_clean_texts():
    table = SubstitutionTable({"good": ["fine"], "fine": ["good"], "Bad": ["Poor"], "Poor": ["Bad"]})
    clean = ["Good film , fine film .", "good , fine , Bad ! Poor", "fine Bad Poor good"]
    poisoned = ["cf Good film , fine film .", "good , fine , Bad ! Poor", "fine Bad Poor good"]
    train = Split(poisoned, np.array([0, 1, 0]))
    task = Task("t", "text", 2, train, Split(clean, np.array([0, 1, 0])), substitutions=table)
    config = {"vocabulary": "paper"}
    assert vocabulary_words(task, config) == sorted(
        {"cf", "good", "film", ",", "fine", ".", "bad", "!", "poor"})  # lower-cased, triggers too
    with pytest.raises(UsageError, match="clean training texts"):
        vocabulary_words(task, {"vocabulary": "reference"})
    train.clean_xs = clean
    # case-sensitive, punctuation removed, in the table, seen more than once ("Good" once); the
    # table is lower-cased where it is loaded (as the counter-fitted vocabulary is), so "Bad" and
    # "Poor" are not its words
    assert vocabulary_words(task, {"vocabulary": "reference"}) == ["fine", "good"]
    sets = {"good": (["good", "fine"], np.array([1.0, 0.9])), "Bad": (["Bad", "Poor"], np.array([1.0, 0.9]))}
    rng = np.random.default_rng(0)
    reference = BetaWeightedSmoother(sets, others(sets), 64, vocabulary="reference")
    assert [p for p, _, _ in reference._slots("Good good, Bad bad".split())] == [1, 2]
    assert {t.split()[1] for t in reference.sample("Good good, Bad", 200, rng)} == {"good,", "fine,"}
    paper = BetaWeightedSmoother(sets, others(sets), 64)
    assert [p for p, _, _ in paper._slots("Good good, Bad bad".split())] == [0]


def test_crowd_beta_rules_paper_is_uniform_reference_favours_the_similar():
    scores = np.array([1.0, 0.9, 0.6, 0.3])
    params = fit_beta(scores)
    n = 100_000
    rng = np.random.default_rng(4)
    paper = np.bincount(beta_weighted_choice(scores, params, rng, n, "paper"), minlength=4) / n
    reference = np.bincount(beta_weighted_choice(scores, params, rng, n, "reference"), minlength=4) / n
    # the printed rule: the argmax of i.i.d. draws is uniform (SAFER's distribution)
    assert np.allclose(paper, 0.25, atol=0.006)
    low, high = pick_probability_bounds(scores, params, 512, "paper")
    assert (low == 0.25).all() and (high == 0.25).all()
    # the reference's: more similar candidates are picked more often
    assert (np.diff(reference) < 0).all() and reference[0] > 0.4
    smoother = BetaWeightedSmoother(CANDIDATES, others(CANDIDATES), grid=512, rule="paper")
    assert smoother.distance("good", "fine") == 0.0  # same set, both uniform
    # the rule and the vocabulary shape the smoothing distribution: the certificate's threat id
    from defenses.backdoor.crowd import Crowd
    ids = {Crowd.certificate_threat({**Crowd.defaults, **change}) for change in
           ({}, {"beta_rule": "paper"}, {"vocabulary": "reference"})}
    assert len(ids) == 3


# STRIP -------------------------------------------------------------------------------------------

class TriggerDetector(nn.Module):
    """A fixed backdoored classifier: class 1 with certainty when 'cf' is present, else a mild
    preference by the share of 'good' words."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def classify(self, texts):
        rows = []
        for text in texts:
            words = text.split()
            if "cf" in words:
                rows.append([0.0, 30.0])
            else:
                share = sum(w == "good" for w in words) / max(len(words), 1)
                rows.append([0.0, 2.0 * (share - 0.5)])
        return torch.tensor(rows)


def test_strip_rejects_triggered_inputs_at_the_chosen_false_rejection_rate():
    from defenses.backdoor.strip import StripModel, Strip

    rng = np.random.default_rng(0)
    vocabulary = ["good", "bad", "film", "plot", "acting", "long", "dull", "fun"]
    texts = [" ".join(rng.choice(vocabulary, size=12)) for _ in range(400)]
    reference, clean = texts[:200], texts[200:]
    triggered = [t.replace("film", "cf", 1) if "film" in t else "cf " + t for t in clean]
    config = {**Strip.defaults, "frr": 0.05}
    model = StripModel(TriggerDetector(), 2, reference, config, seed=0)
    np.random.seed(0)
    clean_rejected = np.mean(model.predict(clean) == -1)
    triggered_rejected = np.mean(model.predict(triggered) == -1)
    assert clean_rejected < 0.12 and triggered_rejected > 0.9, (clean_rejected, triggered_rejected)
    assert set(model.predict(clean).tolist()) <= {-1, 0, 1}


def test_strip_backdoor_cells_run_end_to_end(tmp_path):
    (tmp_path / "suite.toml").write_text("""
name = "strip-test"
seed = 0
[protocol]
n_examples = 40
batch_size = 20
[tasks.toy-sentiment]
params = { n_train = 300, n_test = 60 }
model = "textcnn"
model_params = { embedding_dim = 16, filters = 16 }
train = { epochs = 2, batch_size = 32 }
[defenses.strip]
cells = ["backdoor"]
params = { n_reference = 60 }
[poisoners.badnets]
params = { rate = 0.2, target_label = 1 }
""")
    store = Store(tmp_path / "store.sqlite")
    assert run_suite(load_suite(str(tmp_path / "suite.toml")), store, tmp_path / "cache") == {"done": 1}
    row = build_leaderboard(store, "strip-test")["tables"][0]["rows"][0]["metrics"]
    assert row["benign_accuracy"]["n"] == 40 and row["attack_success_rate"]["n"] > 0
