"""The text attacks with real TextAttack objects on toy-sentiment: TextFooler over the task's table and
over an embedding file (WordEmbedding with nn_matrix), BERT-Attack with the suite's own masked LM and
the offline MiniLM SBERT constraint, ASCC through the white-box surrogate (word and WordPiece
tokenizers), EOT against a randomized model, threat-model identity through the whole pipeline, and
the metric conventions."""
import os

for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"

import numpy as np
import pytest
import torch

from benchmark.data import load_task
from benchmark.data.base import Task
from benchmark.defended import ClassifierModel
from benchmark.errors import NotApplicable, UsageError
from benchmark.evaluate import BuildContext, run_suite
from benchmark.leaderboard import build_leaderboard, cell_metrics
from benchmark.models import build_model
from benchmark.registry import ATTACKS
from benchmark.specs import AttackSpec, ModelSpec, TaskSpec
from benchmark.store import Store
from benchmark.suite import load_suite, resolve_config
from benchmark.train import fit

N_ATTACKED = 12



@pytest.fixture(scope="module")
def task():
    return load_task(TaskSpec.make("toy-sentiment", {"seed": 0, "n_train": 800, "n_test": 60}))


@pytest.fixture(scope="module")
def vanilla(task):
    torch.manual_seed(0)
    module = build_model(ModelSpec.make("textcnn", {"embedding_dim": 32, "filters": 32}), task)
    fit(module, task.train.xs, task.train.ys, epochs=6, batch_size=64, lr=2e-3, seed=0)
    return ClassifierModel(module, task.num_classes)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return BuildContext(tmp_path_factory.mktemp("cache"), "toy", 0, torch.device("cpu"))


def make(name, **params):
    entry = ATTACKS.get(name)
    return entry.obj(resolve_config(entry.obj.defaults, params, f"attack {name}"))


def correct_examples(model, task, n=N_ATTACKED):
    xs, ys = task.test.xs, task.test.ys
    keep = np.flatnonzero(model.predict(xs) == ys)[:n]
    return [xs[i] for i in keep], ys[keep]


def changed_words(original, adversarial):
    return [(a, b) for a, b in zip(original.split(), adversarial.split()) if a != b]


def test_textfooler_swaps_only_table_substitutes_and_fools_the_vanilla_model(task, vanilla, context):
    attack = make("textfooler", query_budget=300)
    attack.prepare(task, context)
    xs, ys = correct_examples(vanilla, task)
    outcomes = attack.run(vanilla, xs, ys, seed=0)
    for x, outcome in zip(xs, outcomes):
        assert len(outcome.adversarial.split()) == len(x.split())
        for old, new in changed_words(x, outcome.adversarial):
            assert new in task.substitutions[old]
        assert 0 < outcome.queries <= 300
    fooled = vanilla.predict([o.adversarial for o in outcomes]) != ys
    assert fooled.any()
    assert all(o.perturbation > 0 for o, f in zip(outcomes, fooled) if f)
    # The constraint is TextAttack's SBERT on the pinned MiniLM weights.
    built = attack._built[1]
    assert "SBERT" in [type(c).__name__ for c in built.constraints]


def test_textfooler_reads_a_counter_fitted_file_into_a_word_embedding(task, vanilla, context, tmp_path):
    from attacks.text.resources import read_word_vectors
    from benchmark.data.embedded import NEGATIVE_CLUSTERS, NEUTRAL_CLUSTERS, POSITIVE_CLUSTERS

    rng = np.random.default_rng(0)
    lines = ["3 8"]  # a word2vec header line is skipped
    for cluster in POSITIVE_CLUSTERS + NEGATIVE_CLUSTERS + NEUTRAL_CLUSTERS:
        centre = rng.normal(size=8)
        lines += [" ".join([w] + [f"{v:.4f}" for v in centre + 0.05 * rng.normal(size=8)])
                  for w in cluster]
    lines.append(", " + " ".join(["0.1"] * 8))  # punctuation: dropped
    path = tmp_path / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    words, _ = read_word_vectors(path)
    assert "," not in words and "great" in words

    attack = make("textfooler", embedding=str(path), max_candidates=3, query_budget=300)
    attack.prepare(task, context)
    transformation, (distance,) = attack.transformation_source
    embedding = transformation.embedding
    assert type(embedding).__name__ == "WordEmbedding" and embedding.nn_matrix is not None
    neighbours = {embedding.index2word(i) for i in embedding.nearest_neighbours("good", 3)}
    assert neighbours <= {"great", "fine", "nice", "superb"} and len(neighbours) == 3
    assert type(distance).__name__ == "WordEmbeddingDistance"
    xs, ys = correct_examples(vanilla, task, 6)
    for x, outcome in zip(xs, attack.run(vanilla, xs, ys, seed=0)):
        for old, new in changed_words(x, outcome.adversarial):
            assert embedding.get_cos_sim(old, new) >= 0.5


def test_bert_attack_trains_its_masked_lm_once_and_attacks_with_it(task, vanilla, context, monkeypatch):
    from attacks.text import resources

    monkeypatch.setitem(resources.MLM_RECIPE, "steps", 200)  # a quicker masked LM for the test
    attack = make("bert-attack", max_candidates=8, query_budget=300)
    attack.prepare(task, context)
    model, tokenizer = attack.language_model
    folders = list(context.cache_dir.glob("toy-masked-lm-*"))
    assert len(folders) == 1 and (folders[0] / "config.json").is_file()
    assert type(model).__name__ == "BertForMaskedLM"
    # Special tokens are never proposed as substitutes.
    with torch.no_grad():
        encoded = tokenizer(["the movie was great"], return_tensors="pt")
        top = model(**encoded).logits[0].topk(8).indices.flatten().tolist()
    assert not set(top) & set(tokenizer.all_special_ids)

    monkeypatch.setattr(resources, "train_masked_lm", lambda *a, **k: pytest.fail("retrained"))
    make("bert-attack").prepare(task, context)  # the cached folder is reused

    xs, ys = correct_examples(vanilla, task, 8)
    outcomes = attack.run(vanilla, xs, ys, seed=0)
    built = attack._built[1]
    assert type(built.transformation).__name__ == "WordSwapMaskedLM"
    assert {"MaxWordsPerturbed", "SBERT"} <= {type(c).__name__ for c in built.constraints}
    fooled = vanilla.predict([o.adversarial for o in outcomes]) != ys
    assert fooled.mean() >= 0.5
    for x, outcome in zip(xs, outcomes):
        assert len(changed_words(x, outcome.adversarial)) <= np.ceil(0.4 * len(x.split()))


def test_ascc_moves_words_within_the_table_and_lowers_accuracy(task, vanilla, context):
    attack = make("ascc", batch_size=16)
    attack.prepare(task, context)
    xs, ys = task.test.xs[:40], task.test.ys[:40]
    outcomes = attack.run(vanilla, xs, ys, seed=0)
    for x, outcome in zip(xs, outcomes):
        for old, new in changed_words(x, outcome.adversarial):
            assert new in task.substitutions[old]
        assert outcome.queries == 10
    clean = vanilla.predict(xs) == ys
    robust = clean & (vanilla.predict([o.adversarial for o in outcomes]) == ys)
    assert robust.sum() < clean.sum()

    limited = make("ascc", batch_size=16, max_perturbed_fraction=0.1)
    limited.prepare(task, context)
    for x, outcome in zip(xs, limited.run(vanilla, xs, ys, seed=0)):
        assert len(changed_words(x, outcome.adversarial)) <= np.ceil(0.1 * len(x.split()))


def test_ascc_aligns_words_to_wordpiece_tokens(task):
    torch.manual_seed(0)
    module = build_model(ModelSpec.make("hf", {"hidden_size": 32, "num_heads": 2,
                                               "intermediate_size": 64, "vocab_size": 200}), task)
    attack = make("ascc")
    attack.prepare(task, None)
    text = "the movie was splendid and the plot felt superb"
    _, _, (sites,) = attack.substitution_sites(module, [text])
    hf_tokenizer = module.tokenizer.hf_tokenizer
    tokens = hf_tokenizer.convert_ids_to_tokens(hf_tokenizer(text)["input_ids"])
    for word_index, position, words, ids in sites:
        assert tokens[position] == text.split()[word_index]  # a whole-word token
        assert hf_tokenizer.convert_ids_to_tokens(ids) == words  # every hull member is one token
    assert sites and all(len(site[2]) >= 2 for site in sites)
    outcomes = attack.run(ClassifierModel(module.eval(), 2), [text], np.array([1]), seed=0)
    assert len(outcomes[0].adversarial.split()) == len(text.split())


class WordDropout:
    """A randomized defended model: the base classifier on the text with each word dropped with
    probability `rate`, a fresh draw per query (its deployed rule), and EOT's expectation."""

    randomized = True

    def __init__(self, base: ClassifierModel, rate: float = 0.3):
        self.base, self.rate, self.num_classes = base, rate, base.num_classes
        self.rng = np.random.default_rng(0)
        self.calls = {"probs": 0, "expected_probs": 0}

    def drop(self, text):
        words = text.split()
        kept = [w for w in words if self.rng.random() >= self.rate]
        return " ".join(kept or words[:1])

    def probs(self, xs):
        self.calls["probs"] += len(xs)
        return self.base.probs([self.drop(x) for x in xs])

    def predict(self, xs):
        return self.probs(xs).argmax(axis=1)

    def expected_probs(self, xs, samples):
        self.calls["expected_probs"] += len(xs)
        draws = [self.base.probs([self.drop(x) for x in xs]) for _ in range(samples)]
        return np.mean(draws, axis=0)


def test_eot_variant_queries_the_expectation_and_skips_deterministic_models(task, vanilla):
    randomized = WordDropout(vanilla)
    xs, ys = correct_examples(vanilla, task, 4)
    deployed = make("deepwordbug", query_budget=100)
    deployed.run(randomized, xs, ys, seed=0)
    assert randomized.calls["probs"] > 0 and randomized.calls["expected_probs"] == 0

    randomized.calls = {"probs": 0, "expected_probs": 0}
    adaptive = make("deepwordbug", query_budget=100, eot_samples=4)
    outcomes = adaptive.run(randomized, xs, ys, seed=0)
    assert randomized.calls["expected_probs"] > 0 and randomized.calls["probs"] == 0
    assert len(outcomes) == len(xs)
    assert "EOT" in adaptive.describe() and "4 draws" in adaptive.describe()
    assert deployed.describe() != adaptive.describe()

    with pytest.raises(NotApplicable, match="deterministic"):
        adaptive.run(vanilla, xs, ys, seed=0)


def test_threat_ids_separate_tables_and_describe_constraints(tmp_path):
    suite_file = tmp_path / "ids.toml"
    suite_file.write_text("""
name = "ids"
[protocol]
n_examples = 6
batch_size = 6
[tasks.toy-sentiment]
model = "textcnn"
params = { n_train = 400, n_test = 30 }
model_params = { embedding_dim = 16, filters = 16 }
train = { epochs = 3 }
[defenses.vanilla]
[attacks.dwb-10]
attack = "deepwordbug"
params = { max_perturbed_fraction = 0.1, query_budget = 100 }
[attacks.dwb-50]
attack = "deepwordbug"
params = { max_perturbed_fraction = 0.5, query_budget = 100 }
[attacks.dwb-eot]
attack = "deepwordbug"
params = { max_perturbed_fraction = 0.5, query_budget = 100, eot_samples = 8 }
""")
    suite = load_suite(str(suite_file))
    specs = {c.attack_label: c.attack for c in suite.cells if c.attack is not None}
    assert specs["dwb-10"].params == {**specs["dwb-50"].params, "max_perturbed_fraction": 0.1}
    ids = {label: spec.threat_id for label, spec in specs.items()}
    assert len(set(ids.values())) == 3

    store = Store(tmp_path / "ids.sqlite")
    counts = run_suite(suite, store, cache_dir=tmp_path / "cache", device=torch.device("cpu"))
    assert counts == {"done": 3, "not_run": 1}  # the EOT variant does not apply to vanilla
    board = build_leaderboard(store, "ids")
    tables = {t["threat_id"]: t for t in board["tables"]}
    assert set(tables) == {"clean", ids["dwb-10"], ids["dwb-50"]}
    assert "at most 10% of words changed" in tables[ids["dwb-10"]]["description"]
    assert "at most 50% of words changed" in tables[ids["dwb-50"]]["description"]
    for threat_id in (ids["dwb-10"], ids["dwb-50"]):
        (row,) = tables[threat_id]["rows"]
        assert row["defense"] == "vanilla" and row["metrics"]["robust_accuracy"]["n"] == 6
    assert [c["attack"] for c in board["not_run"]] == ["dwb-eot"]


def test_mini_suite_runs_every_text_attack_on_toy_sentiment():
    suite = load_suite("mini")
    text_attacks = {c.attack.name for c in suite.cells
                    if c.attack is not None and c.task_label == "toy-sentiment"}
    assert {"textfooler", "bert-attack", "deepwordbug", "ascc"} <= text_attacks
    eot = {c.attack_label for c in suite.cells if c.attack is not None and
           c.attack.params.get("eot_samples") is not None}
    assert eot  # the adaptive variants are listed beside the deployed-rule ones


def test_metrics_follow_the_textattack_conventions():
    def outcome(label, clean, adversarial, queries=10, perturbation=0.2):
        success = int(clean == label and adversarial != label)
        return {"label": label, "clean_prediction": clean, "adversarial_prediction": adversarial,
                "success": success, "queries": queries, "perturbation": perturbation,
                "certified": None}

    outcomes = [outcome(1, 1, 1), outcome(1, 1, 0), outcome(0, 0, 1, perturbation=0.4),
                outcome(0, 1, 0, queries=1, perturbation=0.0)]  # wrong clean, right after attack
    metrics = cell_metrics(outcomes, has_attack=True)
    assert metrics["clean_accuracy"]["value"] == 0.75
    assert metrics["robust_accuracy"]["value"] == 0.25  # only clean-correct examples count
    assert metrics["attack_success_rate"]["value"] == pytest.approx(2 / 3)
    assert metrics["attack_success_rate"]["n"] == 3
    assert (metrics["mean_queries"]["value"], metrics["mean_queries"]["n"]) == (10.0, 3)
    assert metrics["mean_perturbation"]["value"] == pytest.approx(0.3)


@pytest.mark.parametrize("name, params, message", [
    ("textfooler", {"eot_samples": 0}, "eot_samples"),
    ("textfooler", {"similarity_metric": "l2"}, "similarity_metric"),
    ("bert-attack", {"max_perturbed_fraction": 1.5}, "max_perturbed_fraction"),
    ("ascc", {"steps": 0}, "steps"),
])
def test_bad_configs_are_usage_errors(name, params, message):
    with pytest.raises(UsageError, match=message):
        make(name, **params)


def test_attacks_need_the_task_first(task, vanilla):
    with pytest.raises(UsageError, match="prepare"):
        make("ascc").run(vanilla, task.test.xs[:2], task.test.ys[:2], seed=0)
    tableless = Task("plain", "text", 2, task.train, task.test)
    for name in ("textfooler", "ascc"):
        with pytest.raises(UsageError, match="no substitution table"):
            make(name).prepare(tableless, None)
