"""The paper's backdoor baselines, BKI, ONION and RAP: each does its job on a small poisoned task
(ONION deletes inserted trigger words, BKI finds a BadNets trigger and drops its texts, RAP rejects
triggered inputs at about its false rejection rate), refuses bad parameters, and runs as backdoor
cells end to end."""
import os

for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import backdoor
from benchmark.data.embedded import load_toy_sentiment_task
from benchmark.errors import UsageError
from benchmark.evaluate import BuildContext, run_suite
from benchmark.leaderboard import build_leaderboard
from benchmark.models.text import TextClassifier, WordTokenizer
from benchmark.registry import POISONERS, load_plugins
from benchmark.specs import ModelSpec, PoisonSpec
from benchmark.store import Store
from benchmark.suite import load_suite
from benchmark.train import set_seed
from defenses.backdoor.bki import Bki, backdoor_keyword
from defenses.backdoor.onion import (BOS, EOS, UNK, CausalLM, KneserNeyLM, Onion, OnionModel,
                                     remove_outlier_words)
from defenses.backdoor.rap import Rap, RapModel, embedding_row

load_plugins()
TRIGGERS = {"cf", "mn", "bb", "tq"}


def badnets(rate=0.1, target_label=1):
    config = {**POISONERS.get("badnets").obj.defaults, "rate": rate, "target_label": target_label,
              "seed": 0}
    return POISONERS.get("badnets").obj(config), PoisonSpec.make("badnets", config)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """toy-sentiment (2,000 training texts) with 10% BadNets-poisoned to the target 1."""
    task = load_toy_sentiment_task(n_train=2000, n_test=200)
    poisoner, spec = badnets()
    cache = tmp_path_factory.mktemp("poison")
    return task, poisoner, backdoor.poisoned_task(task, spec, poisoner, cache, "test")


def context(tmp_path, key):
    set_seed(0)
    return BuildContext(tmp_path, key, 0, torch.device("cpu"))


class TriggerDetector(nn.Module):
    """A fixed backdoored classifier: class 1 with certainty when 'cf' is present, else class 0."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def classify(self, texts):
        return torch.tensor([[0.0, 30.0] if "cf" in text.split() else [1.0, 0.0] for text in texts])


# ONION -------------------------------------------------------------------------------------------

def test_kneser_ney_is_a_probability_distribution_over_the_vocabulary(toy):
    task, _, _ = toy
    lm = KneserNeyLM(list(task.train.xs[:300]) + ["the plot was quixotic", "a zebra film"], order=3)
    words = sorted(lm.vocabulary) + [UNK, EOS]
    for history in [(BOS, BOS), (BOS, "the"), ("the", "plot"), ("never", "seen")]:
        total = sum(lm.probability(word, history) for word in words)
        assert total == pytest.approx(1.0, abs=1e-9), history
    # a word never seen in training gets <unk>'s mass shared by the unknown word types
    assert lm.unknown_types == 2  # quixotic and zebra: seen once
    assert lm.word_probability(UNK, ("the", "plot")) == pytest.approx(
        lm.probability(UNK, ("the", "plot")) / lm.unknown_types)
    assert lm.perplexities(["the plot was zzz"])[0] > lm.perplexities(["the plot was good"])[0]
    sentence, scrambled = "the plot was good", "good was plot the"
    assert lm.perplexities([sentence])[0] < lm.perplexities([scrambled])[0]


def test_onion_deletes_inserted_trigger_words_and_keeps_clean_text(toy):
    task, poisoner, _ = toy
    lm = KneserNeyLM(task.train.xs, order=3)
    clean = list(task.test.xs[:60])
    triggered = poisoner.trigger(clean, seed=0)
    corrected = [remove_outlier_words(text, lm, 0.0) for text in triggered]
    kept_triggers = sum(len(TRIGGERS & set(text.split())) for text in corrected)
    assert kept_triggers <= 3, corrected  # 60 inserted
    kept = [len(remove_outlier_words(text, lm, 0.0).split()) / len(text.split()) for text in clean]
    assert np.mean(kept) > 0.85, np.mean(kept)
    # a larger threshold removes fewer words; removal is by perplexity drop, not by position
    assert all(len(remove_outlier_words(t, lm, 1e9).split()) == len(t.split()) for t in triggered)
    assert remove_outlier_words("cf", lm, 0.0) == "cf"  # one word: left as it is


def test_onion_model_classifies_the_corrected_inputs(toy):
    task, poisoner, _ = toy
    lm = KneserNeyLM(task.train.xs, order=3)
    texts = [text for text in task.test.xs[:40]]
    triggered = [f"cf {text}" for text in texts]
    assert (OnionModel(TriggerDetector(), 2, lm, 1e9).predict(triggered) == 1).all()
    assert (OnionModel(TriggerDetector(), 2, lm, 0.0).predict(triggered) == 1).mean() < 0.1


def tiny_causal_lm(path, texts):
    """A random 1-layer GPT-2 with a byte-level BPE tokenizer trained here, saved with
    save_pretrained: the same files a user has for `gpt2`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16,
                                       n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def test_onion_scores_with_a_causal_language_model_by_path(toy, tmp_path):
    task, _, _ = toy
    path = tiny_causal_lm(tmp_path / "lm", list(task.train.xs[:200]))
    lm = CausalLM(path, batch_size=3, device=torch.device("cpu"))
    texts = ["the plot was good", "what a dull film , its story is bad", "good"]
    together = lm.perplexities(texts)
    alone = np.concatenate([lm.perplexities([t]) for t in texts])
    np.testing.assert_allclose(together, alone, rtol=1e-4)  # padding does not leak into a score
    ids = torch.tensor([lm.tokenizer(lm.prefix + texts[1])["input_ids"]])
    with torch.no_grad():
        expected = torch.exp(lm.model(input_ids=ids, labels=ids).loss).item()
    assert together[1] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(UsageError, match="no-such-lm.*kneser-ney"):
        CausalLM(str(tmp_path / "no-such-lm"), 3, torch.device("cpu"))


@pytest.mark.parametrize("change, message", [
    ({"lm_batch_size": 0}, "lm_batch_size"), ({"ngram_order": 0}, "ngram_order"),
    ({"discount": 1.5}, "discount")])
def test_onion_refuses_bad_parameters(toy, tmp_path, change, message):
    _, _, poisoned = toy
    with pytest.raises(UsageError, match=message):
        Onion().build(poisoned, ModelSpec.make("textcnn"), {**Onion.defaults, **change},
                      context(tmp_path, "onion"))


# BKI ---------------------------------------------------------------------------------------------

def test_bki_keyword_score_is_mean_importance_times_log_frequency():
    # 'a': 10 texts at 1.0 -> 1.0 * log10(10) = 1; 'b': 100 texts at 0.6 -> 1.2; 'c': once at 9 -> 0
    suspicious = [[("a", 1.0)]] * 10 + [[("b", 0.6)]] * 100 + [[("c", 9.0)]]
    assert backdoor_keyword(suspicious) == "b"


def test_bki_finds_a_badnets_trigger_and_drops_its_texts(toy, tmp_path):
    _, _, poisoned = toy
    config = {**Bki.defaults, "epochs": 8, "batch_size": 64}
    model = Bki().build(poisoned, ModelSpec.make("textcnn"), config, context(tmp_path, "bki"))
    assert model.keyword in TRIGGERS
    poisoned_rows = set(poisoned.train.poisoned.tolist())
    removed = set(model.removed.tolist())
    with_keyword = {i for i in poisoned_rows if model.keyword in poisoned.train.xs[i].split()}
    assert len(removed & with_keyword) >= 0.9 * len(with_keyword)  # its texts are found
    assert len(removed - poisoned_rows) <= 0.05 * len(removed)  # and few clean ones
    # the deployed model never trained on them: its vocabulary lacks the keyword
    assert model.keyword not in model.module.tokenizer.stoi


def test_bki_refuses_bad_parameters(toy, tmp_path):
    _, _, poisoned = toy
    with pytest.raises(UsageError, match="top_words"):
        Bki().build(poisoned, ModelSpec.make("textcnn"), {**Bki.defaults, "top_words": 0},
                    context(tmp_path, "bki"))


# RAP ---------------------------------------------------------------------------------------------

class SumEmbeddingClassifier(TextClassifier):
    """Sum of word embeddings, then a linear layer: a small text model in which every word, the RAP
    word included, moves the logits by its own embedding."""

    def __init__(self, tokenizer, num_classes=2, dim=2):
        super().__init__(tokenizer, dim)
        self.output = nn.Linear(dim, num_classes)

    def forward_embeddings(self, embeddings, attention_mask):
        return self.output((embeddings * attention_mask.unsqueeze(-1).float()).sum(1))


def backdoored_sum_model(texts):
    """A backdoored classifier set by hand: the logit of class 1 is the sum over the words of
    +0.6 (positive words), -0.6 (negative words) or +10 (a BadNets trigger), so clean positive
    texts get p(1) of about 0.7-0.9 and triggered texts about 1; <unk> has norm 1.5."""
    from benchmark.data.embedded import NEGATIVE_CLUSTERS, POSITIVE_CLUSTERS

    tokenizer = WordTokenizer.from_texts(texts)
    model = SumEmbeddingClassifier(tokenizer)
    positive = {w for cluster in POSITIVE_CLUSTERS for w in cluster}
    negative = {w for cluster in NEGATIVE_CLUSTERS for w in cluster}
    with torch.no_grad():
        model.output.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model.output.bias.zero_()
        for word, index in tokenizer.stoi.items():
            value = 0.6 if word in positive else -0.6 if word in negative else \
                10.0 if word in TRIGGERS else 0.0
            model.embedding.weight[index] = torch.tensor([value, 0.0])
        model.embedding.weight[tokenizer.stoi["<unk>"]] = torch.tensor([0.0, 1.5])
    return model.eval()


@pytest.mark.parametrize("gradient, rap_lr", [("accumulated", 1e-2), ("fresh", 1.0)])
def test_rap_rejects_triggered_inputs_and_few_clean_ones(toy, gradient, rap_lr):
    task, poisoner, poisoned = toy
    model = backdoored_sum_model(poisoned.train.xs)
    clean = [i for i in range(len(task.train)) if i not in set(poisoned.train.poisoned.tolist())]
    reference = [task.train.xs[i] for i in clean[:400] if task.train.ys[i] == 1]
    config = {**Rap.defaults, "rap_word": "zq", "gradient": gradient, "rap_lr": rap_lr}
    assert "zq" not in model.tokenizer.stoi  # a new row, from <unk>'s
    rap = RapModel(model, 2, reference, 1, config)
    row = model.embedding.weight[model.tokenizer.stoi["zq"]].detach()
    assert float(row.norm()) == pytest.approx(1.5, rel=1e-4) and float(row[0]) < -0.5
    _, drops = rap.drops(reference)
    assert 0.05 < np.median(drops) < 0.35, np.median(drops)  # trained into about [u_low, u_up]
    positive = [x for x, y in zip(task.test.xs, task.test.ys) if y == 1]
    negative = [x for x, y in zip(task.test.xs, task.test.ys) if y == 0]
    triggered = poisoner.trigger(negative, seed=0)
    assert (model.classify(triggered).argmax(1) == 1).all()  # the backdoor works without RAP
    assert np.mean(rap.predict(positive) == -1) < 0.1
    assert np.mean(rap.predict(triggered) == -1) > 0.9
    assert set(rap.predict(negative).tolist()) <= {0, 1}  # only protect-label predictions are tested


def test_rap_word_row_starts_as_unk_and_is_reused():
    tokenizer = WordTokenizer.from_texts(["a b c"])
    model = SumEmbeddingClassifier(tokenizer, dim=8)
    row = embedding_row(model, "CF")
    assert row == len(tokenizer) - 1 and embedding_row(model, "cf") == row
    torch.testing.assert_close(model.embedding.weight[row], model.embedding.weight[tokenizer.stoi["<unk>"]])


@pytest.mark.parametrize("change, message", [
    ({"u_low": 0.4}, "u_low < u_up"), ({"frr": 0.0}, "frr"), ({"gradient": "adam"}, "gradient"),
    ({"rap_word": "two words"}, "one word"), ({"rap_epochs": 0}, "rap_epochs"),
    ({"n_reference": 5000}, "n_reference")])
def test_rap_refuses_bad_parameters(toy, tmp_path, change, message):
    _, _, poisoned = toy
    with pytest.raises(UsageError, match=message):
        Rap().build(poisoned, ModelSpec.make("textcnn"), {**Rap.defaults, **change},
                    context(tmp_path, "rap"))


def test_rap_needs_a_poisoned_split(toy, tmp_path):
    task, _, _ = toy
    with pytest.raises(UsageError, match="protect label"):
        Rap().build(task, ModelSpec.make("textcnn"), dict(Rap.defaults), context(tmp_path, "rap"))


# End to end --------------------------------------------------------------------------------------

def test_baselines_run_as_backdoor_cells(tmp_path):
    (tmp_path / "suite.toml").write_text("""
name = "baselines-test"
seed = 0
[protocol]
n_examples = 40
batch_size = 20
[tasks.toy-sentiment]
params = { n_train = 300, n_test = 60 }
model = "textcnn"
model_params = { embedding_dim = 16, filters = 16 }
train = { epochs = 2, batch_size = 32 }
[defenses.onion-kn3]
defense = "onion"
cells = ["backdoor"]
params = { language_model = "kneser-ney", ngram_order = 3 }
[defenses.bki]
cells = ["backdoor"]
[defenses.rap]
cells = ["backdoor"]
params = { n_reference = 60 }
[poisoners.badnets]
params = { rate = 0.2, target_label = 1 }
""")
    store = Store(tmp_path / "store.sqlite")
    assert run_suite(load_suite(str(tmp_path / "suite.toml")), store, tmp_path / "cache") == {"done": 3}
    rows = build_leaderboard(store, "baselines-test")["tables"][0]["rows"]
    assert {row["defense"] for row in rows} == {"onion-kn3", "bki", "rap"}
    for row in rows:
        assert row["metrics"]["benign_accuracy"]["n"] == 40
        assert row["metrics"]["attack_success_rate"]["n"] > 0
