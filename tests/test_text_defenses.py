"""The certified text defenses on a small toy-sentiment task: their certificates are checked against
sampled perturbations (seeded), not assumed; plus the contracts the engine and the attacks use."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data import load_task
from benchmark.errors import UsageError
from benchmark.evaluate import build_defended
from benchmark.interfaces import ABSTAIN, Certifier, Randomized, WhiteBoxText
from benchmark.leaderboard import cell_metrics
from benchmark.models.text import split_words
from benchmark.registry import DEFENSES
from benchmark.specs import Cell, DefenseSpec, ModelSpec, Protocol, TaskSpec
from benchmark.suite import resolve_config
from defenses.text import intervals

REPO = Path(__file__).resolve().parents[1]
TASK = TaskSpec.make("toy-sentiment", {"seed": 0, "n_train": 800, "n_test": 120})
TRAIN = {"epochs": 6, "batch_size": 32}



@pytest.fixture(scope="module")
def task():
    return load_task(TASK, None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def defended(task, cache, name, **params):
    config = resolve_config(DEFENSES.get(name).obj.defaults, {**TRAIN, **params}, name)
    cell = Cell(TASK, ModelSpec.make("textcnn", {}), DefenseSpec.make(name, config), None,
                Protocol(), "toy", name)
    return build_defended(cell, task, cache, torch.device("cpu"))


def sample(task, count=60):
    return task.test.xs[:count], task.test.ys[:count]


def random_substitution(text, table, rng, rate=0.7):
    """Each word with table neighbours is replaced, with probability `rate`, by a uniform one."""
    words = split_words(text)
    return " ".join(rng.choice(table[w]) if table[w] and rng.random() < rate else w for w in words)


def smoothed_vote(model, text, n, seed):
    from defenses.text.smoothing import example_rng

    noisy = model.noisy([model.plan(text)], n, [example_rng(seed, 0)])[0]
    return int(np.argmax(noisy.counts(model.num_classes)))


def test_textcnn_logits_do_not_depend_on_the_batch(task, cache):
    model = defended(task, cache, "ibp").module
    text, longer = task.test.xs[0], task.test.xs[1] + " and a much longer tail of words " * 3
    with torch.no_grad():
        alone = model.classify([text])
        batched = model.classify([text, longer])[:1]
    assert torch.allclose(alone, batched, atol=1e-6)  # equal up to float summation order


def test_ibp_certificates_survive_random_substitutions(task, cache):
    model = defended(task, cache, "ibp")
    xs, ys = sample(task)
    certificates = model.certify(xs, ys, 0.05, seed=0)
    certified = [i for i, c in enumerate(certificates) if c.certified]
    assert certified, "IBP should certify some toy-sentiment examples"
    assert all(not c.certified or c.prediction == y for c, y in zip(certificates, ys))
    rng = np.random.default_rng(0)
    table = task.substitutions
    _, bounds = model.margins(xs)
    for i in range(len(xs)):
        variants = [random_substitution(xs[i], table, rng) for _ in range(30)]
        with torch.no_grad():
            logits = model.module.classify(variants)
        prediction = certificates[i].prediction
        margins = logits[:, prediction:prediction + 1] - logits
        assert (margins >= bounds[i][None, :] - 1e-4).all(), "interval bounds must enclose every variant"
        if i in certified:
            assert (logits.argmax(dim=1) == int(ys[i])).all()


def test_interval_bounds_enclose_the_network(task, cache):
    model = defended(task, cache, "ibp").module
    candidates = intervals.candidate_matrix(model.tokenizer, task.substitutions)
    ids, mask = model.tokenizer(task.test.xs[:8])
    with torch.no_grad():
        boxes = intervals.substitution_boxes(model.embedding, candidates, ids)
        features = intervals.textcnn_features(model, boxes, mask)
        logits = intervals.affine(features, model.output)
        assert torch.allclose(logits.value, model(ids, mask), atol=1e-5)  # the exact forward pass
        rng = np.random.default_rng(1)
        for _ in range(10):  # random points of the boxes (not only substitutes) stay inside
            point = boxes.lower + torch.as_tensor(rng.random(boxes.lower.shape), dtype=torch.float32) * (boxes.upper - boxes.lower)
            out = model.output(intervals.textcnn_features(model, intervals.Bounds(point, point, point), mask).value)
            assert (out >= logits.lower - 1e-4).all() and (out <= logits.upper + 1e-4).all()


def test_ciss_certificates_survive_random_substitutions(task, cache):
    model = defended(task, cache, "ciss", certify_n0=50, certify_n=500)
    xs, ys = sample(task, 40)
    certificates = model.certify(xs, ys, 0.05, seed=0)
    certified = [i for i, c in enumerate(certificates) if c.certified]
    assert certified, "CISS should certify some toy-sentiment examples"
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    for i in certified:
        certificate = certificates[i]
        assert certificate.radius >= certificate.details["r_hat"]
        variants = [random_substitution(xs[i], task.substitutions, rng) for _ in range(20)]
        original = model.encode([xs[i]])
        moved = model.encode(variants).value
        assert (moved >= original.lower - 1e-4).all() and (moved <= original.upper + 1e-4).all()
        distance = (moved - original.value).norm(dim=1)
        assert (distance <= certificate.details["r_hat"] + 1e-4).all()
        votes = model.counts(moved, 2000, [generator] * len(variants))
        assert (votes.argmax(axis=1) == int(ys[i])).all()


def test_ranmask_certificates_survive_perturbations_of_d_words(task, cache):
    model = defended(task, cache, "ranmask", rho=0.7, certify_n0=50, certify_n=1000)
    xs, ys = sample(task, 40)
    certificates = model.certify(xs, ys, 0.05, seed=0)
    certified = [i for i, c in enumerate(certificates) if c.certified]
    assert certified, "RanMASK should certify some toy-sentiment examples"
    vocabulary = model.module.tokenizer.itos[3:]
    rng = np.random.default_rng(0)
    for i in certified:
        d = int(certificates[i].radius)
        words = split_words(xs[i])
        assert certificates[i].details["length"] == len(words) and d >= 1
        for trial in range(5):  # arbitrary replacements of d words, not only synonyms
            perturbed = list(words)
            for position in rng.choice(len(words), size=d, replace=False):
                perturbed[position] = vocabulary[rng.integers(len(vocabulary))]
            assert smoothed_vote(model, " ".join(perturbed), 2000, trial) == int(ys[i])


def test_weighted_masking_draws_masks_in_proportion_to_the_weights():
    from defenses.text.ranmask import keep_rows, weighted_keep_rows

    weights = np.array([1.0, 2.0, 3.0, 4.0])
    rows = weighted_keep_rows(weights, 2, 40_000, np.random.default_rng(0))
    assert (rows.sum(axis=1) == 2).all()
    # Two masks drawn one after another without replacement, in proportion to the weights left.
    total = weights.sum()
    exact = [sum(weights[i] / total * weights[j] / (total - weights[i])
                 + weights[j] / total * weights[i] / (total - weights[j]) for j in range(4) if j != i)
             for i in range(4)]
    assert np.allclose(1 - rows.mean(axis=0), exact, atol=0.01)
    # Equal weights are uniform masking; zero-weight positions are masked only when nothing else is.
    even = weighted_keep_rows(np.ones(5), 2, 20_000, np.random.default_rng(1))
    assert np.allclose(even.mean(axis=0), keep_rows(5, 2, 20_000, np.random.default_rng(1)).mean(axis=0), atol=0.02)
    zeros = weighted_keep_rows(np.array([0.0, 1.0, 0.0, 1.0, 0.0]), 1, 20_000, np.random.default_rng(2))
    assert (~zeros[:, [1, 3]]).all() and np.allclose(1 - zeros[:, [0, 2, 4]].mean(axis=0), 2 / 3, atol=0.02)


def test_ranmask_lm_masking_masks_what_the_language_model_finds_surprising(task, cache, monkeypatch):
    from attacks.text import resources

    monkeypatch.setitem(resources.MLM_RECIPE, "steps", 200)  # a quicker masked LM for the test
    uniform = defended(task, cache, "ranmask", rho=0.7, predict_samples=20)
    lm = defended(task, cache, "ranmask", rho=0.7, masking="lm", predict_samples=20)
    assert not hasattr(lm, "certify")  # an empirical defense: no certificate
    assert all(torch.equal(a, b) for a, b in zip(lm.module.parameters(),
                                                 uniform.module.parameters()))  # one base model
    text = task.test.xs[0]
    words = text.split()
    odd = " ".join(words[:2] + ["zebra"] + words[3:])  # a word the LM has never seen
    plan, odd_plan = lm.plans([text, odd])
    weights = plan.extra["weights"]
    assert weights.shape == (len(words),) and (weights >= 0).all()
    # An unknown word weighs as a uniform guess over the LM's vocabulary, more than the word it replaced.
    assert odd_plan.extra["weights"][2] == pytest.approx(np.log(len(lm.lm_tokenizer)))
    assert odd_plan.extra["weights"][2] > weights[2] + 1
    rows = lm.sample(plan, 20_000, np.random.default_rng(0))
    assert (rows.sum(axis=1) == plan.extra["k"]).all()
    masked = 1 - rows.mean(axis=0)
    uniform_masked = 1 - uniform.sample(uniform.plan(text), 20_000, np.random.default_rng(0)).mean(axis=0)
    assert np.ptp(uniform_masked) < 0.03 < np.ptp(masked)
    order = np.argsort(weights)
    assert masked[order[-1]] > masked[order[0]] + 0.1  # the most surprising word is masked most
    # The deployed contract. (No accuracy floor: on this task the surprising words are the
    # sentiment words, so LM masking hides the label more often than uniform masking does.)
    assert set(lm.predict(task.test.xs[:10])) <= {ABSTAIN, 0, 1}
    assert np.allclose(lm.probs(task.test.xs[:10]).sum(axis=1), 1)
    assert np.allclose(lm.expected_probs(task.test.xs[:10], 8).sum(axis=1), 1)
    with pytest.raises(UsageError, match="masked_lm"):
        defended(task, cache, "ranmask", rho=0.7, masked_lm="bert-base-uncased")


def test_safer_certificates_survive_random_substitutions(task, cache):
    model = defended(task, cache, "safer", certify_n0=50, certify_n=500)
    xs, ys = sample(task, 30)
    certificates = model.certify(xs, ys, 0.05, seed=0)
    certified = [i for i, c in enumerate(certificates) if c.certified]
    assert certified
    rng = np.random.default_rng(0)
    for i in certified[:10]:
        for trial in range(3):
            variant = random_substitution(xs[i], task.substitutions, rng, rate=1.0)
            assert smoothed_vote(model, variant, 1000, trial) == int(ys[i])


def test_fast_certification_matches_the_naive_procedure(task, cache):
    spec = importlib.util.spec_from_file_location("perf_certify", REPO / "benchmarks" / "perf_certify.py")
    perf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(perf)
    xs, ys = sample(task, 4)
    for name, params in (("ranmask", {"rho": 0.7}), ("safer", {})):
        model = defended(task, cache, name, certify_n0=20, certify_n=150, **params)
        assert model.certify(xs, ys, 0.05, seed=3) == perf.naive_certify(model, xs, ys, 0.05, seed=3)


def test_contracts_for_the_engine_and_the_attacks(task, cache):
    xs = task.test.xs[:5]
    vote = defended(task, cache, "ranmask", rho=0.7, predict_samples=20)
    logit = defended(task, cache, "ranmask", rho=0.7, ensemble="logit", predict_samples=20)
    assert isinstance(vote, Certifier) and not hasattr(logit, "certify")  # only the vote is certified
    for model in (vote, logit, defended(task, cache, "safer", predict_samples=20),
                  defended(task, cache, "ciss", predict_samples=20)):
        assert isinstance(model, Randomized) and model.randomized
        expected = model.expected_probs(xs, 16)
        assert expected.shape == (5, 2) and np.allclose(expected.sum(axis=1), 1)
        probs = model.probs(xs)
        assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1)
        predictions = model.predict(xs)
        assert predictions.dtype == np.int64 and set(predictions) <= {ABSTAIN, 0, 1}
    ibp = defended(task, cache, "ibp")
    assert not isinstance(ibp, Randomized)
    for model in (vote, ibp, defended(task, cache, "ciss")):
        assert isinstance(model, WhiteBoxText)
        ids, mask = model.module.tokenizer(list(xs))
        embeddings = model.module.embedding(ids).detach().requires_grad_()
        model.module.forward_embeddings(embeddings, mask).sum().backward()
        assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    ciss = defended(task, cache, "ciss")
    with torch.no_grad():  # the surrogate is the head on the noise-free latent
        ids, mask = ciss.module.tokenizer(list(xs))
        assert torch.allclose(ciss.module(ids, mask), ciss.network.head(ciss.encode(xs).value), atol=1e-5)


def test_ciss_transformer_head_builds_and_certifies(task, cache):
    model = defended(task, cache, "ciss", epochs=1, head="transformer", decoder_length=4,
                     head_params={"hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
                                  "num_layers": 1, "vocab_size": 200},
                     certify_n0=10, certify_n=30)
    xs, ys = sample(task, 3)
    certificates = model.certify(xs, ys, 0.05, seed=0)
    assert len(certificates) == 3 and all(c.unit.startswith("latent_l2") for c in certificates)


def test_mcb_and_mcr_on_the_leaderboard():
    def outcome(label, prediction, radius, length, abstained=0):
        return {"label": label, "clean_prediction": prediction, "certified": int(radius >= 1 and prediction == label),
                "abstained": abstained, "radius": radius,
                "extra": {"certified_prediction": prediction, "length": length}}

    outcomes = [outcome(1, 0, 3, 10), outcome(1, ABSTAIN, 0, 10, abstained=1), outcome(0, 0, 1, 10),
                outcome(0, 0, 2, 10), outcome(1, 1, 3, 10)]
    metrics = cell_metrics(outcomes, has_attack=False, unit="words")
    assert metrics["mcb"]["value"] == 1 and metrics["mcb"]["n"] == 5
    assert metrics["mcr"]["value"] == pytest.approx(0.1)
    assert metrics["certified_accuracy"]["successes"] == 3
    assert "mcb" not in cell_metrics(outcomes, has_attack=False, unit="synonym_set")
    # a certificate whose deployed prediction was wrong (a randomized rule can disagree) never counts
    outcomes[2]["clean_prediction"] = 1
    metrics = cell_metrics(outcomes, has_attack=False, unit="words")
    assert metrics["certified_accuracy"]["successes"] == 2
    assert metrics["certified_accuracy"]["value"] <= metrics["clean_accuracy"]["value"]


def test_pretrained_word_vectors_by_path(task, tmp_path):
    from benchmark.models import build_model

    vectors = tmp_path / "vectors.txt"
    vectors.write_text("good 1 2 3 4\nbad -1 -2 -3 -4\nnotaword 9 9 9 9\n")
    model = build_model(ModelSpec.make("textcnn", {"embedding_dim": 4, "vectors_path": str(vectors)}), task)
    stoi = model.tokenizer.stoi
    assert model.embedding.weight[stoi["good"]].tolist() == [1, 2, 3, 4]
    assert model.embedding.weight[stoi["bad"]].tolist() == [-1, -2, -3, -4]
    with pytest.raises(UsageError, match="embedding_dim"):
        build_model(ModelSpec.make("bilstm", {"embedding_dim": 8, "vectors_path": str(vectors)}), task)


def test_ciss_soft_radius_stays_finite_and_an_unreachable_margin_is_refused(task, cache):
    """p_A -> 0 (a confidently wrong example) must not give Phi^-1(0) = -infinity; and a margin
    above sigma * Phi^-1(soft_upper) would keep the hinge from ever reaching 0."""
    from defenses.text.ciss import soft_radius

    logits = torch.tensor([[60.0, -60.0], [0.0, 0.0]], requires_grad=True)
    radius = soft_radius(logits, torch.tensor([1, 0]), sigma=1.0, upper=0.99)
    assert torch.isfinite(radius).all() and radius[0] < 0
    radius.sum().backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(UsageError, match="margin 1 cannot be met.*at most sigma"):
        defended(task, cache, "ciss", sigma=0.25, margin=1.0)


def test_vote_predicts_by_argmax_and_abstains_only_under_cohens_rule(task, cache):
    """RanMASK's PREDICT (Algorithm 2) is the argmax of the vote counts and never abstains;
    Cohen's PREDICT (`predict_rule = "cohen"`) abstains when 5 copies cannot separate the top two
    counts at alpha = 0.05 (even 5 of 5 has a two-sided p of 0.0625)."""
    xs = task.test.xs[:20]
    argmax = defended(task, cache, "ranmask", rho=0.7, predict_samples=5).predict(xs)
    cohen = defended(task, cache, "ranmask", rho=0.7, predict_samples=5,
                     predict_rule="cohen").predict(xs)
    assert ABSTAIN not in set(argmax) and set(cohen) == {ABSTAIN}
    with pytest.raises(UsageError, match="predict_rule must be one of argmax, cohen"):
        defended(task, cache, "ranmask", predict_rule="vote")


@pytest.mark.parametrize("width, values", [(1, 2), (13, 2), (20, 8), (64, 2)])
def test_distinct_rows_are_numpys_unique_rows(width, values):
    from defenses.text.smoothing import distinct_rows

    rows = np.random.default_rng(width).integers(0, values, size=(500, width))
    rows[:200] = rows[7]  # many copies of one row
    unique, inverse = distinct_rows(rows)
    expected, expected_inverse = np.unique(rows, axis=0, return_inverse=True)
    assert np.array_equal(unique, expected) and np.array_equal(inverse, expected_inverse.reshape(-1))
    assert np.array_equal(unique[inverse], rows)
