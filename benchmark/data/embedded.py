"""Tasks that are always available offline: bundled digits and two generated confounded tasks."""
from __future__ import annotations

import numpy as np

from benchmark.data.base import Split, SubstitutionTable, Task, seeded_split
from benchmark.errors import UsageError
from benchmark.registry import register_task


@register_task("digits", modality="image", source="bundled")
def load_digits_task(seed: int = 0, test_fraction: float = 0.3, data_root=None) -> Task:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    xs = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    ys = digits.target.astype(np.int64)
    train, test = seeded_split(len(ys), test_fraction, seed, ys)
    return Task("digits", "image", 10, Split(xs[train], ys[train], "train"),
                Split(xs[test], ys[test], "test"), [str(d) for d in range(10)],
                source="scikit-learn load_digits (bundled)",
                notes=f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split, seed {seed}")


CTOY_SHAPES = ["triangle", "square", "circle"]
# Appendix A: each 4 x 4 block of a triangle / square / circle image is blue / green / red with
# probability `bias` (0.8) and one of the other two colours with (1 - bias) / 2 each.
CTOY_COLOURS = np.array([[0.1, 0.1, 0.9], [0.1, 0.9, 0.1], [0.9, 0.1, 0.1]], dtype=np.float32)
CTOY_BLOCK = 4
CTOY_TEST_COLOURS = ("biased", "counterfactual")


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    extent = int(rng.integers(size // 2, size - 2))
    top, left = rng.integers(0, size - extent + 1, size=2)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    r, c = rows - top, cols - left
    if shape == "square":
        mask = (r >= 0) & (r < extent) & (c >= 0) & (c < extent)
    elif shape == "circle":
        centre = (extent - 1) / 2
        mask = (r - centre) ** 2 + (c - centre) ** 2 <= (extent / 2) ** 2
    else:  # upward triangle: width grows with the row
        half = (r + 1) / 2
        mask = (r >= 0) & (r < extent) & (np.abs(c - (extent - 1) / 2) <= half)
    return mask


def _ctoy_images(masks: np.ndarray, colour_classes: np.ndarray, bias: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The mosaic: every 4 x 4 block tinted with a colour drawn from the biased distribution of
    `colour_classes` (one class per image), then the white geometry drawn on top."""
    n, size, _ = masks.shape
    blocks = size // CTOY_BLOCK
    other = rng.integers(1, 3, size=(n, blocks, blocks))  # which of the other two colours
    keep = rng.random((n, blocks, blocks)) < bias
    colour = np.where(keep, colour_classes[:, None, None], (colour_classes[:, None, None] + other) % 3)
    pixels = np.repeat(np.repeat(colour, CTOY_BLOCK, axis=1), CTOY_BLOCK, axis=2)
    xs = CTOY_COLOURS[pixels].transpose(0, 3, 1, 2).copy()  # N x 3 x size x size
    xs[np.broadcast_to(masks[:, None], xs.shape)] = 1.0
    return xs


def _ctoy_split(n: int, size: int, bias: float, rng: np.random.Generator, name: str,
                counterfactual: bool = False) -> Split:
    ys = rng.integers(0, 3, size=n)
    masks = np.stack([_shape_mask(CTOY_SHAPES[label], size, rng) for label in ys])
    biased = _ctoy_images(masks, ys, bias, rng)
    if not counterfactual:
        return Split(biased, ys, name)
    # The same geometries with the colour statistics of another class (either, at random).
    swapped = (ys + rng.integers(1, 3, size=n)) % 3
    return Split(_ctoy_images(masks, swapped, bias, rng), ys, name)


@register_task("ctoy", modality="image", source="generated")
def load_ctoy_task(seed: int = 0, n_train: int = 10000, n_test: int = 1000, size: int = 64,
                   bias: float = 0.8, test_colours: str = "biased", data_root=None) -> Task:
    """Confounded-Toy (CiiV paper, Appendix A): white triangles / squares / circles on a mosaic of
    4 x 4 colour blocks whose colours follow the class 80/10/10, in training and test alike
    (`test_colours = "biased"`, the paper's test set). `"counterfactual"` keeps the test
    geometries and draws their blocks from another class's colour distribution, so a model that
    reads the colours instead of the geometry loses accuracy. The defaults are the paper's (64 x 64
    images, 10k training and 1k test images); CPU suites set smaller ones. The training split does
    not depend on `test_colours`.
    """
    if size % CTOY_BLOCK or size < 4 * CTOY_BLOCK:
        raise UsageError(f"ctoy: size must be a multiple of {CTOY_BLOCK} and at least "
                         f"{4 * CTOY_BLOCK}, got {size}")
    if test_colours not in CTOY_TEST_COLOURS:
        raise UsageError(f"ctoy: test_colours must be one of {', '.join(CTOY_TEST_COLOURS)}, got "
                         f"{test_colours!r}")
    rng = np.random.default_rng(seed)
    train = _ctoy_split(n_train, size, bias, rng, "train")
    test = _ctoy_split(n_test, size, bias, rng, "test", counterfactual=test_colours == "counterfactual")
    return Task("ctoy", "image", 3, train, test, CTOY_SHAPES, source="generated",
                notes=f"{size}x{size}, colour bias {bias:.2f}, {test_colours} test colours, seed {seed}")


POSITIVE_CLUSTERS = [
    ["good", "great", "fine", "nice", "superb"],
    ["happy", "glad", "pleased", "cheerful", "delighted"],
    ["love", "adore", "enjoy", "like", "cherish"],
    ["brilliant", "excellent", "wonderful", "terrific", "splendid"],
]
NEGATIVE_CLUSTERS = [
    ["bad", "awful", "poor", "lousy", "dreadful"],
    ["sad", "unhappy", "gloomy", "miserable", "depressed"],
    ["hate", "loathe", "despise", "dislike", "detest"],
    ["boring", "dull", "tedious", "bland", "tiresome"],
]
NEUTRAL_CLUSTERS = [
    ["movie", "film", "picture", "feature"],
    ["story", "plot", "tale", "narrative"],
    ["acting", "performance", "cast", "portrayal"],
    ["ending", "finale", "conclusion", "climax"],
]
# Style words: correlated with the label in training only, like ctoy's colour blocks.
STYLE_WORDS = [["frankly", "honestly"], ["truly", "indeed"]]
TEMPLATES = [
    "the {n0} was {p0} and the {n1} felt {p1} {s}",
    "{s} i found the {n0} {p0} , the {n2} was {p1} too",
    "what a {p0} {n0} , its {n1} is {p1} {s}",
    "{s} the {n2} made me feel {p0} and the {n3} was {p1}",
]
CONTRAST = " but the {n} was {q}"
# How often each member of a cluster occurs in the text (both splits). The members after the third
# never occur: like most of a real substitution table, they are rare words only the table knows, so
# a model trained without the table never learns them and a word-substitution attacker has somewhere
# to go.
MEMBER_WEIGHTS = np.array([0.5, 0.3, 0.2, 0.0, 0.0])


def _toy_sentence(label: int, rng: np.random.Generator, style_bias: float) -> str:
    own = POSITIVE_CLUSTERS if label == 1 else NEGATIVE_CLUSTERS
    other = NEGATIVE_CLUSTERS if label == 1 else POSITIVE_CLUSTERS

    def word(clusters):
        cluster = clusters[rng.integers(len(clusters))]
        weights = MEMBER_WEIGHTS[:len(cluster)]
        return cluster[rng.choice(len(cluster), p=weights / weights.sum())]

    style_label = label if rng.random() < style_bias else 1 - label
    style = STYLE_WORDS[style_label][rng.integers(2)]
    fill = {f"n{i}": word(NEUTRAL_CLUSTERS) for i in range(4)}
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(p0=word(own), p1=word(own), s=style, **fill)
    if rng.random() < 0.3:
        text += CONTRAST.format(n=word(NEUTRAL_CLUSTERS), q=word(other))
    return " ".join(text.split())


def toy_substitution_table() -> SubstitutionTable:
    neighbors = {}
    for cluster in POSITIVE_CLUSTERS + NEGATIVE_CLUSTERS + NEUTRAL_CLUSTERS:
        for word in cluster:
            neighbors[word] = [other for other in cluster if other != word]
    return SubstitutionTable(neighbors, name="toy-sentiment synonym clusters")


@register_task("toy-sentiment", modality="text", source="generated")
def load_toy_sentiment_task(seed: int = 0, n_train: int = 2000, n_test: int = 500,
                            style_bias: float = 0.9, data_root=None) -> Task:
    """Generated sentiment text, the text twin of ctoy.

    The label is carried by sentiment words drawn from synonym clusters (shipped as the task's
    substitution table); style words follow the label with probability `style_bias` in training and
    are independent of it at test. Both splits use a cluster's first members (common synonyms more
    often) and never its rare last ones, which only the table holds (see MEMBER_WEIGHTS).
    """
    rng = np.random.default_rng(seed)

    def split(n, bias, name):
        ys = rng.integers(0, 2, size=n)
        return Split([_toy_sentence(int(y), rng, bias) for y in ys], ys, name)

    train = split(n_train, style_bias, "train")
    test = split(n_test, 0.5, "test")
    return Task("toy-sentiment", "text", 2, train, test, ["negative", "positive"],
                substitutions=toy_substitution_table(), source="generated",
                notes=f"style bias {style_bias:.2f} in training, 0.5 at test, seed {seed}")
