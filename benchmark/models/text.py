"""Text classifiers share one contract so defenses and attacks can treat them alike:

- `model.tokenizer(texts) -> (input_ids, attention_mask)` as LongTensors (padded),
- `model.tokenizer.mask_token`, the string a masking defense substitutes for a word,
- `model.embedding`, the input embedding layer (white-box attacks work in its space),
- `model.forward_embeddings(embeddings, attention_mask) -> logits`, differentiable,
- `model(input_ids, attention_mask) -> logits` and `model.classify(texts) -> logits`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmark.errors import UsageError
from benchmark.registry import register_model

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"


def split_words(text: str) -> list[str]:
    return text.lower().split()


class WordTokenizer:
    """Whitespace word vocabulary built from the training text (and the substitution table, so that
    substitutes are known words, as in Jia et al.)."""

    mask_token = MASK

    def __init__(self, words: Sequence[str], max_length: int = 64):
        self.itos = [PAD, UNK, MASK] + [w for w in words if w not in (PAD, UNK, MASK)]
        self.stoi = {word: index for index, word in enumerate(self.itos)}
        self.max_length = max_length

    @classmethod
    def from_texts(cls, texts: Sequence[str], extra_words: Sequence[str] = (), min_count: int = 1,
                   max_length: int = 64) -> "WordTokenizer":
        counts = Counter(word for text in texts for word in split_words(text))
        words = sorted(w for w, c in counts.items() if c >= min_count)
        known = set(words)
        words += sorted(set(extra_words) - known)
        return cls(words, max_length)

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, text: str) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi.get(w, unk) for w in split_words(text)][: self.max_length] or [unk]

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.ids(t) for t in texts]
        width = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    def state(self) -> dict:
        return {"itos": self.itos, "max_length": self.max_length}


class TextClassifier(nn.Module):
    """Base of the word-level text classifiers; subclasses define `forward_embeddings`."""

    def __init__(self, tokenizer: WordTokenizer, embedding_dim: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.embedding = nn.Embedding(len(tokenizer), embedding_dim, padding_idx=0)

    def forward_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(self.embedding(input_ids), attention_mask)

    def classify(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.embedding.weight.device
        input_ids, attention_mask = self.tokenizer(texts)
        return self(input_ids.to(device), attention_mask.to(device))

    # The vocabulary travels with the weights so a cached model is self-describing.
    def get_extra_state(self):
        return self.tokenizer.state()

    def set_extra_state(self, state):
        if state["itos"] != self.tokenizer.itos:
            raise ValueError("cached text model was trained with a different vocabulary")


def load_word_vectors(model: TextClassifier, path: str | None) -> TextClassifier:
    """Initialise the embedding rows of vocabulary words found in a GloVe-format text file (`word v1
    ... vD` per line, D = embedding_dim), e.g. counter-fitted vectors a user has; the other rows
    keep their random initialisation. None: embeddings are trained from scratch (the default)."""
    if path is None:
        return model
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"vectors_path {path} is not a file; pass a GloVe-format text file")
    weight = model.embedding.weight
    found = 0
    with torch.no_grad(), file.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            parts = line.rstrip().split(" ")
            index = model.tokenizer.stoi.get(parts[0])
            if index is None or index == 0:
                continue
            if len(parts) - 1 != weight.shape[1]:
                raise UsageError(f"{path}, line {number}: {len(parts) - 1} values, but embedding_dim "
                                 f"is {weight.shape[1]}; set embedding_dim to the vectors' size")
            weight[index] = torch.tensor([float(v) for v in parts[1:]])
            found += 1
    if not found:
        raise UsageError(f"{path}: no vocabulary word has a vector; is it a GloVe-format file?")
    return model


def word_tokenizer_for(task, max_length: int = 64) -> WordTokenizer:
    extra = sorted(task.substitutions.vocabulary()) if task.substitutions is not None else []
    return WordTokenizer.from_texts(task.train.xs, extra, max_length=max_length)


class TextCNN(TextClassifier):
    """Kim (2014) CNN: parallel convolutions over word embeddings, max-pooled over time."""

    def __init__(self, tokenizer, num_classes, embedding_dim=64, filters=64, kernel_sizes=(3, 4, 5),
                 dropout=0.3):
        super().__init__(tokenizer, embedding_dim)
        self.kernel_sizes = tuple(kernel_sizes)
        self.convolutions = nn.ModuleList(nn.Conv1d(embedding_dim, filters, k) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(filters * len(kernel_sizes), num_classes)

    def forward_embeddings(self, embeddings, attention_mask):
        embeddings = embeddings * attention_mask.unsqueeze(-1).to(embeddings.dtype)
        width = max(self.kernel_sizes)
        if embeddings.shape[1] < width:  # pad short texts so every kernel fits
            embeddings = nn.functional.pad(embeddings, (0, 0, 0, width - embeddings.shape[1]))
        x = embeddings.transpose(1, 2)
        lengths = attention_mask.sum(dim=1)
        pooled = [torch.relu(conv(x)).masked_fill(~self.valid_windows(lengths, k, x.shape[2])[:, None, :], 0.0)
                  .amax(dim=2) for conv, k in zip(self.convolutions, self.kernel_sizes)]
        return self.output(self.dropout(torch.cat(pooled, dim=1)))

    @staticmethod
    def valid_windows(lengths: torch.Tensor, kernel_size: int, width: int) -> torch.Tensor:
        """(batch, windows) mask of the convolution windows that start inside the text: the pool
        ignores windows lying in the batch's padding, so a text's logits do not depend on the other
        texts in its batch (a text shorter than the kernel keeps its first window). Zero is a
        neutral fill: the pooled values are ReLU outputs."""
        starts = torch.arange(width - kernel_size + 1, device=lengths.device)
        return starts[None, :] <= (lengths - kernel_size).clamp(min=0)[:, None]


@register_model("textcnn", modality="text")
def textcnn(task, embedding_dim: int = 64, filters: int = 64, kernel_sizes=(3, 4, 5),
            dropout: float = 0.3, max_length: int = 64, vectors_path: str | None = None) -> TextCNN:
    model = TextCNN(word_tokenizer_for(task, max_length), task.num_classes, embedding_dim, filters,
                    kernel_sizes, dropout)
    return load_word_vectors(model, vectors_path)


class BiLSTM(TextClassifier):
    """Bidirectional LSTM over word embeddings, pooled (mean or max) over the real words only."""

    def __init__(self, tokenizer, num_classes, embedding_dim=64, hidden_size=64, num_layers=1,
                 pooling="mean", dropout=0.3):
        super().__init__(tokenizer, embedding_dim)
        if pooling not in ("mean", "max"):
            raise UsageError(f"bilstm pooling must be 'mean' or 'max', not {pooling!r}")
        self.pooling = pooling
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(2 * hidden_size, num_classes)

    def forward_embeddings(self, embeddings, attention_mask):
        # Packing keeps padding out of the backward direction, so a text's logits do not depend on
        # how long the other texts in its batch are.
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(embeddings, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                        total_length=embeddings.shape[1])
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        else:
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        return self.output(self.dropout(pooled))


@register_model("bilstm", modality="text")
def bilstm(task, embedding_dim: int = 64, hidden_size: int = 64, num_layers: int = 1,
           pooling: str = "mean", dropout: float = 0.3, max_length: int = 64,
           vectors_path: str | None = None) -> BiLSTM:
    """Bidirectional LSTM over word embeddings with masked mean or max pooling."""
    model = BiLSTM(word_tokenizer_for(task, max_length), task.num_classes, embedding_dim, hidden_size,
                   num_layers, pooling, dropout)
    return load_word_vectors(model, vectors_path)
