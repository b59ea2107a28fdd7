"""Tasks: train/test splits of examples, the number of classes, the modality, and for text the
substitution table in force."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from benchmark.errors import DataError


@dataclass(frozen=True)
class Example:
    x: object  # str for text, float32 array (C, H, W) in [0, 1] for images
    y: int


class Split:
    """A split held as one array of inputs (images) or a list of strings (text) plus labels."""

    def __init__(self, xs: np.ndarray | Sequence[str], ys: np.ndarray, name: str = "split"):
        self.xs = xs
        self.ys = np.asarray(ys, dtype=np.int64)
        self.name = name
        if len(self.xs) != len(self.ys):
            raise DataError(f"{name}: {len(self.xs)} inputs but {len(self.ys)} labels")

    def __len__(self) -> int:
        return len(self.ys)

    def __getitem__(self, index: int) -> Example:
        return Example(self.xs[index], int(self.ys[index]))

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(len(self)))

    def inputs(self, indices: Sequence[int]):
        if isinstance(self.xs, np.ndarray):
            return self.xs[np.asarray(indices, dtype=np.int64)]
        return [self.xs[i] for i in indices]

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Split":
        return Split(self.inputs(indices), self.ys[np.asarray(indices, dtype=np.int64)],
                     name or self.name)

    def checksum(self) -> str:
        digest = hashlib.sha256()
        if isinstance(self.xs, np.ndarray):
            digest.update(np.ascontiguousarray(self.xs).tobytes())
        else:
            for text in self.xs:
                digest.update(text.encode("utf-8") + b"\0")
        digest.update(self.ys.tobytes())
        return digest.hexdigest()[:16]


class SubstitutionTable:
    """word -> allowed substitutes (the word itself excluded). Symmetric use is up to the caller.

    Words are lowercased here, once, as the tokenizers lowercase their input: the vocabulary, the
    interval boxes of IBP / CISS and the smoothing sets are all built from this table, so a table
    written with upper-case words ("Great": ["Superb"]) must give the same boxes as the text the
    model reads. Entries that meet after lowercasing are merged (first-seen order)."""

    def __init__(self, neighbors: dict[str, list[str]], name: str = "table"):
        self.name = name
        merged: dict[str, list[str]] = {}
        for word, subs in neighbors.items():
            key = word.lower()
            group = merged.setdefault(key, [])
            for sub in subs:
                sub = sub.lower()
                if sub != key and sub not in group:
                    group.append(sub)
        self.neighbors = merged

    def __getitem__(self, word: str) -> list[str]:
        return self.neighbors.get(word, [])

    def __contains__(self, word: str) -> bool:
        return bool(self.neighbors.get(word))

    def vocabulary(self) -> set[str]:
        words = set(self.neighbors)
        for subs in self.neighbors.values():
            words.update(subs)
        return words

    def checksum(self) -> str:
        return hashlib.sha256(json.dumps(self.neighbors, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, path: str | Path) -> "SubstitutionTable":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"substitution table not found: {path}; expected a JSON object "
                            f"mapping each word to a list of substitute words (Jia et al. format)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"substitution table {path} is not valid JSON: {error}") from error
        if not isinstance(raw, dict) or not all(
                isinstance(v, list) and all(isinstance(w, str) for w in v) for v in raw.values()):
            raise DataError(f"substitution table {path} must be a JSON object word -> list of words")
        # A word listed as its own substitute is a malformed table (often a mis-keyed file), not
        # something to drop quietly.
        loops = [word for word, substitutes in raw.items() if word in substitutes]
        if loops:
            raise DataError(f"substitution table {path}: {len(loops)} word(s) list themselves as a "
                            f"substitute (first: {loops[0]!r}); remove each word from its own list")
        return cls(raw, name=path.name)


@dataclass
class Task:
    name: str
    modality: str  # "text" or "image"
    num_classes: int
    train: Split
    test: Split | None  # None in the view a sandboxed defense gets (without_test)
    class_names: list[str] = field(default_factory=list)
    substitutions: SubstitutionTable | None = None
    source: str = ""  # where the data came from (a directory, an HF name, "generated", "bundled")
    notes: str = ""
    _checksums: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        for split in (self.train, self.test):
            if split is not None:
                validate_split(split, self.modality, self.num_classes, self.name)

    def without_test(self) -> "Task":
        """What a sandboxed defense builds from: everything but the test split (inputs and labels);
        the harness hands it test inputs a batch at a time, never their labels."""
        return dataclasses.replace(self, test=None)

    def checksums(self) -> dict[str, str]:
        """The data's digests, computed once: every cache key of every cell of the task names them,
        and a task's data does not change once loaded."""
        if self._checksums is None:
            self._checksums = {"train": self.train.checksum(), "test": self.test.checksum()}
            if self.substitutions is not None:
                self._checksums["substitutions"] = self.substitutions.checksum()
        return dict(self._checksums)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.xs.shape[1:]) if self.modality == "image" else ()


def validate_split(split: Split, modality: str, num_classes: int, task_name: str) -> None:
    """Reject bad examples up front, naming the example, so no cell fails half-way."""
    where = f"task '{task_name}', {split.name} split"
    if len(split) == 0:
        raise DataError(f"{where} is empty")
    bad = np.flatnonzero((split.ys < 0) | (split.ys >= num_classes))
    if len(bad):
        raise DataError(f"{where}, example {bad[0]}: label {split.ys[bad[0]]} is outside "
                        f"0..{num_classes - 1}")
    if modality == "text":
        for index, text in enumerate(split.xs):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}, example {index}: empty or non-string text {text!r}; "
                                f"remove it from the data file")
    elif modality == "image":
        xs = split.xs
        if not isinstance(xs, np.ndarray) or xs.ndim != 4 or xs.dtype != np.float32:
            shape = getattr(xs, "shape", None)
            dtype = getattr(xs, "dtype", type(xs).__name__)
            raise DataError(f"{where}: images must be a float32 array (N, C, H, W); got shape "
                            f"{shape}, dtype {dtype}")
        finite = np.isfinite(xs).reshape(len(xs), -1).all(axis=1)
        in_range = ((xs >= 0) & (xs <= 1)).reshape(len(xs), -1).all(axis=1)
        bad = np.flatnonzero(~(finite & in_range))
        if len(bad):
            raise DataError(f"{where}, example {bad[0]}: pixels must be finite and in [0, 1]")
    else:
        raise DataError(f"{where}: unknown modality '{modality}' (expected 'text' or 'image')")


def seeded_split(n: int, test_fraction: float, seed: int, ys: np.ndarray | None = None):
    """Indices of a reproducible (stratified when labels are given) train/test split."""
    rng = np.random.default_rng(seed)
    if ys is None:
        order = rng.permutation(n)
        n_test = int(round(n * test_fraction))
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    train, test = [], []
    for label in np.unique(ys):
        members = rng.permutation(np.flatnonzero(ys == label))
        n_test = int(round(len(members) * test_fraction))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))
