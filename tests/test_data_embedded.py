"""Embedded tasks are deterministic for a seed, have the documented confounders, and bad examples
are rejected with an error that names them."""
import numpy as np
import pytest

from benchmark.data import load_task
from benchmark.data.base import Split, SubstitutionTable, Task
from benchmark.data.embedded import STYLE_WORDS, load_ctoy_task, load_toy_sentiment_task
from benchmark.errors import DataError, UsageError
from benchmark.specs import TaskSpec


def test_digits_is_the_real_bundled_set():
    task = load_task(TaskSpec.make("digits"))
    assert len(task.train) + len(task.test) == 1797
    assert task.train.xs.shape[1:] == (1, 8, 8) and task.train.xs.dtype == np.float32
    assert set(np.unique(task.test.ys)) == set(range(10))


@pytest.mark.parametrize("loader, sizes", [(load_ctoy_task, {"n_train": 60, "n_test": 30}),
                                           (load_toy_sentiment_task, {})])
def test_generated_tasks_are_deterministic_for_a_seed(loader, sizes):
    first, again, other = loader(seed=1, **sizes), loader(seed=1, **sizes), loader(seed=2, **sizes)
    assert first.checksums() == again.checksums()
    assert first.checksums() != other.checksums()


def _block_colours(split):
    """Per image, the share of its block pixels (outside the white geometry) in each colour; NaN for
    an image the geometry covers entirely."""
    blocks = split.xs
    white = blocks.min(axis=1) > 0.95
    colour = np.argmax(blocks, axis=1)  # channel 2 red, 1 green, 0 blue
    class_of_channel = np.array([0, 1, 2])[::-1]  # blue -> triangle (0), green -> 1, red -> circle (2)
    shares = np.stack([((class_of_channel[colour] == c) & ~white).sum((1, 2)) for c in range(3)], 1)
    with np.errstate(invalid="ignore"):
        return shares / shares.sum(1, keepdims=True)


def test_ctoy_blocks_follow_the_class_80_10_10_and_the_counterfactual_swaps_them():
    """Appendix A: triangle / square / circle blocks are blue / green / red with probability 0.8, in
    training and in the (biased) test split; the counterfactual test split keeps the geometries
    and draws the blocks from another class's distribution."""
    biased = load_ctoy_task(seed=0, n_train=300, n_test=300, size=32)
    swapped = load_ctoy_task(seed=0, n_train=300, n_test=300, size=32, test_colours="counterfactual")
    for split in (biased.train, biased.test):
        shares = _block_colours(split)
        own = shares[np.arange(len(split)), split.ys]
        assert 0.75 < np.nanmean(own) < 0.85
    own = _block_colours(swapped.test)[np.arange(len(swapped.test)), swapped.test.ys]
    assert np.nanmean(own) < 0.15
    assert np.array_equal(biased.train.xs, swapped.train.xs)
    white = lambda xs: xs.min(axis=1) > 0.95
    assert np.array_equal(white(biased.test.xs), white(swapped.test.xs))
    assert np.array_equal(biased.test.ys, swapped.test.ys)


@pytest.mark.parametrize("params, problem", [({"size": 30}, "multiple of 4"),
                                             ({"test_colours": "unbiased"}, "test_colours")])
def test_ctoy_bad_parameters_are_named(params, problem):
    with pytest.raises(UsageError, match=problem):
        load_ctoy_task(n_train=3, n_test=3, **params)


def test_toy_sentiment_style_words_are_confounded_in_training_only():
    task = load_toy_sentiment_task(seed=0, n_train=2000, n_test=2000)

    def style_agreement(split):
        hits = []
        for text, label in zip(split.xs, split.ys):
            words = set(text.split())
            style = 0 if words & set(STYLE_WORDS[0]) else 1
            hits.append(style == label)
        return np.mean(hits)

    assert style_agreement(task.train) > 0.85
    assert 0.4 < style_agreement(task.test) < 0.6
    table = task.substitutions
    assert "great" in table["good"] and "good" not in table["good"]
    assert all(word in table.vocabulary() for text in task.test.xs[:50] for word in text.split()
               if word in table)


def test_empty_text_is_named():
    with pytest.raises(DataError, match="example 1: empty"):
        Task("t", "text", 2, Split(["fine", "  "], [0, 1], "train"), Split(["ok"], [0], "test"))


def test_label_out_of_range_is_named():
    with pytest.raises(DataError, match="example 0: label 5"):
        Task("t", "text", 2, Split(["a"], [5], "train"), Split(["ok"], [0], "test"))


def test_wrong_image_shape_and_nan_pixels_are_named():
    good = Split(np.zeros((2, 1, 4, 4), np.float32), [0, 1], "test")
    with pytest.raises(DataError, match=r"float32 array \(N, C, H, W\); got shape \(2, 4, 4\)"):
        Task("t", "image", 2, Split(np.zeros((2, 4, 4), np.float32), [0, 1], "train"), good)
    with pytest.raises(DataError, match="dtype float64"):
        Task("t", "image", 2, Split(np.zeros((2, 1, 4, 4)), [0, 1], "train"), good)
    pixels = np.zeros((2, 1, 4, 4), np.float32)
    pixels[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="example 1: pixels must be finite"):
        Task("t", "image", 2, Split(pixels, [0, 1], "train"), good)


def test_substitution_table_errors_name_the_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="table.json is not valid JSON"):
        SubstitutionTable.from_json(path)
    path.write_text('{"good": "great"}')
    with pytest.raises(DataError, match="word -> list of words"):
        SubstitutionTable.from_json(path)
    path.write_text('{"good": ["good", "great"]}')
    with pytest.raises(DataError, match="list themselves as a substitute \\(first: 'good'\\)"):
        SubstitutionTable.from_json(path)
