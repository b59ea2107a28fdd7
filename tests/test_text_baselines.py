"""RanMASK's baselines (PGD-K, FreeLB, adversarial data augmentation) on toy-sentiment: their inner
steps do what the papers print (the ball, the accumulated gradient, the loss-maximising table
substitutes), they train the textcnn and the hf models, and they refuse what they cannot train."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from benchmark.data import load_task
from benchmark.errors import UsageError
from benchmark.evaluate import build_defended
from benchmark.models import build_model
from benchmark.registry import DEFENSES
from benchmark.specs import Cell, DefenseSpec, ModelSpec, Protocol, TaskSpec
from benchmark.suite import resolve_config
from defenses.text import augmentation, freelb, pgd

TASK = TaskSpec.make("toy-sentiment", {"seed": 0, "n_train": 400, "n_test": 80})
TINY_BERT = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
             "vocab_size": 500}


@pytest.fixture(scope="module")
def task():
    return load_task(TASK, None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def defended(task, cache, name, model="textcnn", model_params=None, **params):
    config = resolve_config(DEFENSES.get(name).obj.defaults, {"epochs": 4, "batch_size": 32, **params}, name)
    cell = Cell(TASK, ModelSpec.make(model, model_params or {}), DefenseSpec.make(name, config), None,
                Protocol(), "toy", name)
    return build_defended(cell, task, cache, torch.device("cpu"))


def batch(task, model, size=16):
    texts, labels = list(task.train.xs[:size]), torch.as_tensor(task.train.ys[:size])
    embeddings, attention_mask = pgd.embed(model, texts, labels.device)
    return texts, labels, embeddings, attention_mask


def test_pgd_perturbation_stays_in_the_ball_and_raises_the_loss(task):
    torch.manual_seed(0)
    model = build_model(ModelSpec.make("textcnn", {}), task).eval()
    _, labels, embeddings, attention_mask = batch(task, model)
    config = {**pgd.PGD_DEFAULTS, "max_norm": 1.0, "step_size": 0.5}
    delta = pgd.pgd_delta(model, embeddings, attention_mask, labels, config)
    assert delta.flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    padding = attention_mask == 0
    assert padding.any() and (delta[padding] == 0).all()  # the start and every step stay on tokens
    clean = F.cross_entropy(model.forward_embeddings(embeddings, attention_mask), labels)
    attacked = F.cross_entropy(model.forward_embeddings(embeddings + delta, attention_mask), labels)
    assert attacked > clean
    assert all(p.grad is None for p in model.parameters())  # the ascent touches no parameter


def test_freelb_gradient_is_the_mean_of_the_k_ascent_steps_gradients(task):
    torch.manual_seed(0)
    model = build_model(ModelSpec.make("textcnn", {"dropout": 0.0}), task)
    texts, labels, _, attention_mask = batch(task, model)
    config = {**freelb.FREELB_DEFAULTS, "steps": 3}
    torch.manual_seed(1)
    embeddings, _ = pgd.embed(model, texts, labels.device)
    freelb.freelb_loss(model, embeddings, attention_mask, labels, config).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]

    # The same steps by hand: the reference's loop, one backward per step, loss / K each.
    model.zero_grad()
    torch.manual_seed(1)
    embeddings, _ = pgd.embed(model, texts, labels.device)
    delta = pgd.random_start(embeddings.detach(), attention_mask, config["init_magnitude"])
    for step in range(config["steps"]):
        delta.requires_grad_()
        embeddings, _ = pgd.embed(model, texts, labels.device)
        loss = F.cross_entropy(model.forward_embeddings(embeddings + delta, attention_mask), labels)
        (loss / config["steps"]).backward()
        if step < config["steps"] - 1:
            delta = pgd.ascend(delta, delta.grad, config["step_size"], config["max_norm"])
    for mine, reference in zip(accumulated, (p.grad for p in model.parameters())):
        assert torch.allclose(mine, reference, atol=1e-6)


def test_augmentation_replaces_words_by_loss_maximising_table_neighbours(task):
    torch.manual_seed(0)
    model = build_model(ModelSpec.make("textcnn", {}), task)
    texts, labels, _, _ = batch(task, model)
    copies = augmentation.adversarial_copies(model, texts, labels, task.substitutions)
    assert model.training  # the search's eval mode is undone
    model.eval()
    with torch.no_grad():
        clean = F.cross_entropy(model.classify(texts), labels, reduction="none")
        for text, copy, label, clean_loss in zip(texts, copies, labels, clean):
            changed = [(j, old, new) for j, (old, new) in enumerate(zip(text.split(), copy.split()))
                       if old != new]
            for j, old, new in changed:
                neighbours = task.substitutions[old.lower()]
                assert new in neighbours
                words = text.split()
                variants = [" ".join(words[:j] + [n] + words[j + 1:]) for n in neighbours]
                losses = F.cross_entropy(model.classify(variants), label.repeat(len(variants)),
                                         reduction="none")
                assert losses.max() > clean_loss and variants[int(losses.argmax())].split()[j] == new
    assert any(text != copy for text, copy in zip(texts, copies))


@pytest.mark.parametrize("name", ["pgd-k", "freelb", "data-augmentation"])
def test_baselines_train_the_textcnn(task, cache, name):
    model = defended(task, cache, name)
    accuracy = (model.predict(task.test.xs) == task.test.ys).mean()
    assert accuracy > 0.8


@pytest.mark.parametrize("name", ["pgd-k", "freelb"])
def test_embedding_baselines_train_the_hf_model(task, cache, name):
    model = defended(task, cache, name, model="hf", model_params=TINY_BERT, epochs=1, steps=2)
    assert model.predict(task.test.xs[:8]).shape == (8,)


def test_a_model_without_input_embeddings_is_refused():
    with pytest.raises(UsageError, match="perturbs input embeddings.*textcnn, bilstm, hf"):
        pgd.require_embedding_model(torch.nn.Linear(4, 2), "pgd-k")


def test_bad_settings_and_a_task_without_a_table_are_refused(task, cache):
    with pytest.raises(UsageError, match="steps must be >= 1"):
        defended(task, cache, "freelb", steps=0)
    with pytest.raises(UsageError, match="max_norm must be >= 0"):
        defended(task, cache, "pgd-k", max_norm=-1.0)
    no_table = dataclasses.replace(task, substitutions=None)
    with pytest.raises(UsageError, match="no substitution table"):
        DEFENSES.get("data-augmentation").obj().build(no_table, ModelSpec.make("textcnn", {}),
                                                      {"epochs": 1}, None)
