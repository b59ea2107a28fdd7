"""Real tasks: read from a local directory in each dataset's own distribution format, or by
Hugging Face `datasets` name when no directory is given.

With `data_root`, every task reads `<data_root>/<task>/` (the layouts are in LAYOUTS) and nothing
touches the network. Without it the loader asks the hub; offline that fails with a DataError that
names the layout to put on disk and says to pass `--data-root`.

Every loader takes `n_train` / `n_test` (None = all) for a seeded, stratified subsample, and `seed`.
Text tasks take `substitutions` ("jia" or None): the Jia et al. (2019) counter-fitted neighbour
table, read from `<data_root>/synonyms/counterfitted_neighbors.json` (it has no hub copy).
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import pickle
import re
import struct
from pathlib import Path

import numpy as np

from benchmark.data.base import Split, SubstitutionTable, Task, seeded_split
from benchmark.errors import DataError, UsageError
from benchmark.registry import register_task

LAYOUTS = {
    "sst2": "sst2/train.txt, dev.txt, test.txt: one 'sentence<TAB>label' per line "
            "(label 0/1, 1 = positive; CRLF or LF line endings)",
    "agnews": "agnews/test.csv: header 'label,title,description', labels 1..4 "
              "(World, Sports, Business, Sci/Tech), CSV quoting",
    "imdb": "imdb/train/pos/*.txt, train/neg/*.txt, test/pos/*.txt, test/neg/*.txt "
            "(the aclImdb layout; imdb/aclImdb/... also works), one review per file",
    "yelp": "yelp/sentiment.train.0, sentiment.train.1, sentiment.test.0, sentiment.test.1 "
            "(Shen et al. 2017): one sentence per line, suffix .0 = negative, .1 = positive",
    "offenseval": "offenseval/train.tsv, dev.tsv, test.tsv: header 'Sentence<TAB>Label', "
                  "label 0/1 (1 = offensive), CSV quoting (OpenBackdoor layout)",
    "hsol": "hsol/train.tsv, test.tsv: header 'Sentence<TAB>Label', label 0/1 (1 = hate or "
            "offensive), CSV quoting (OpenBackdoor layout)",
    "mnist": "mnist/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte (idx format; each may be gzipped with a .gz suffix)",
    "cifar10": "cifar10/cifar-10-batches-py/data_batch_1..data_batch_5, test_batch "
               "(the CIFAR-10 python pickle batches)",
    "cifar100": "cifar100/cifar-100-python/train, test (and optionally meta) "
                "(the CIFAR-100 python pickles, 'fine_labels' used)",
    "synonyms": "synonyms/counterfitted_neighbors.json: a JSON object word -> list of "
                "neighbour words (Jia et al. 2019)",
}

SENTIMENT_NAMES = ["negative", "positive"]
AGNEWS_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]

# A word as TextAttack's tokenizer (words_from_text) keeps it: word characters, with apostrophes,
# hyphens, '*' and '@' allowed inside but not at either end. Table entries that tokenize to
# something else make TextAttack's windowed constraints raise StopIteration.
WORD = re.compile(r"\w(?:[\w'\-*@]*\w)?")


def _layout_error(what: Path, dataset: str, data_root: Path) -> DataError:
    return DataError(f"{what} not found; {dataset} is read from {data_root}/{LAYOUTS[dataset]}")


def _task_folder(data_root: Path, task: str) -> Path:
    folder = Path(data_root) / task
    if not folder.is_dir():
        raise _layout_error(folder, task, data_root)
    return folder


def _required_file(folder: Path, filename: str, task: str, data_root: Path) -> Path:
    path = folder / filename
    if not path.is_file():
        raise _layout_error(path, task, data_root)
    return path


def _read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raise DataError(f"{path}, line 1: the file starts with a byte-order mark (BOM); save it as "
                        f"UTF-8 without a BOM")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 ({error.reason} at byte "
                        f"{error.start}); re-encode the file as UTF-8") from error


def _lines(text: str) -> list[str]:
    """Lines of a file, CRLF or LF, without the terminator after the last line."""
    if text.endswith("\n"):
        text = text[:-1]
    return [line.removesuffix("\r") for line in text.split("\n")] if text else []


def _check_not_blank(line: str, path: Path, number: int) -> None:
    """A blank line (or one holding only a carriage return or spaces) is named as such, not
    reported as a row with a wrong number of columns."""
    if not line.strip():
        raise DataError(f"{path}, line {number}: blank line; remove it (every line is one example)")
    if "\r" in line:
        raise DataError(f"{path}, line {number}: a carriage return (CR) inside the line, e.g. "
                        f"old Mac line endings; save the file with LF or CRLF line endings")


def _clean_text(text: str, path: Path, line: int) -> str:
    text = text.strip()
    if not text:
        raise DataError(f"{path}, line {line}: empty text; remove the row")
    return text


def _parse_label(field: str, path: Path, line: int, labels: range) -> int:
    try:
        label = int(field.strip())
    except ValueError:
        raise DataError(f"{path}, line {line}: label {field!r} is not an integer") from None
    if label not in labels:
        raise DataError(f"{path}, line {line}: label {label} is outside "
                        f"{labels.start}..{labels.stop - 1}")
    return label


def _read_sst2_file(path: Path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for number, line in enumerate(_lines(_read_utf8(path)), start=1):
        _check_not_blank(line, path, number)
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}, line {number}: expected 'sentence<TAB>label' "
                            f"(2 tab-separated columns), found {len(fields)} column(s)")
        texts.append(_clean_text(fields[0], path, number))
        labels.append(_parse_label(fields[1], path, number, range(2)))
    return texts, np.array(labels, dtype=np.int64)


def _read_csv_rows(path: Path, delimiter: str, header: list[str]) -> list[tuple[int, list[str]]]:
    """(line number, row) pairs of a quoted CSV/TSV file, after checking its header."""
    reader = csv.reader(io.StringIO(_read_utf8(path), newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: {error}") from error
    if not rows or rows[0][1] != header:
        found = rows[0][1] if rows else "an empty file"
        raise DataError(f"{path}, line 1: header must be {delimiter.join(header)!r}, "
                        f"found {found!r}")
    for number, row in rows[1:]:
        if not any(field.strip() for field in row):
            raise DataError(f"{path}, line {number}: blank line; remove it (every line after the "
                            f"header is one example)")
        if len(row) != len(header):
            raise DataError(f"{path}, line {number}: expected {len(header)} columns "
                            f"({', '.join(header)}), found {len(row)}")
    return rows[1:]


def _read_sentence_label_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for number, (sentence, label) in _read_csv_rows(path, "\t", ["Sentence", "Label"]):
        texts.append(_clean_text(sentence, path, number))
        labels.append(_parse_label(label, path, number, range(2)))
    return texts, np.array(labels, dtype=np.int64)


def _read_agnews_csv(path: Path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for number, (label, title, description) in _read_csv_rows(
            path, ",", ["label", "title", "description"]):
        texts.append(_clean_text(f"{title.strip()} {description.strip()}", path, number))
        labels.append(_parse_label(label, path, number, range(1, 5)) - 1)
    return texts, np.array(labels, dtype=np.int64)


def _read_imdb_split(root: Path, split: str, data_root: Path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for label, polarity in enumerate(["neg", "pos"]):
        folder = root / split / polarity
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise DataError(f"no reviews in {folder}; task 'imdb' reads "
                            f"{data_root}/{LAYOUTS['imdb']}")
        for path in files:
            texts.append(_clean_text(_read_utf8(path), path, 1))
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def _read_yelp_split(folder: Path, split: str, data_root: Path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for label in (0, 1):
        path = _required_file(folder, f"sentiment.{split}.{label}", "yelp", data_root)
        for number, line in enumerate(_lines(_read_utf8(path)), start=1):
            texts.append(_clean_text(line, path, number))
            labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def _read_maybe_gzipped(folder: Path, filename: str, data_root: Path) -> bytes:
    if (folder / filename).is_file():
        return (folder / filename).read_bytes()
    zipped = folder / f"{filename}.gz"
    if not zipped.is_file():
        raise _layout_error(folder / filename, "mnist", data_root)
    try:
        return gzip.decompress(zipped.read_bytes())
    except (OSError, EOFError) as error:
        raise DataError(f"{zipped}: not a complete gzip file ({error})") from error


def _read_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """An idx array of unsigned bytes (magic 0x0000080N, N dimensions, big-endian sizes)."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s) "
                        f"(magic number {data[:4].hex()}, expected 0000080{ndim})")
    header_size = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header_size]) if len(data) >= header_size else ()
    if not shape or len(data) - header_size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) but "
                        f"the file holds {len(data) - header_size} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_mnist_split(folder: Path, prefix: str, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    image_name, label_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = _read_idx(_read_maybe_gzipped(folder, image_name, data_root),
                       folder / image_name, 3)
    labels = _read_idx(_read_maybe_gzipped(folder, label_name, data_root),
                       folder / label_name, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {image_name} has {len(images)} images but {label_name} has "
                        f"{len(labels)} labels")
    if labels.max(initial=0) > 9:
        raise DataError(f"{folder / label_name}: label {labels.max()} is outside 0..9")
    return (images.astype(np.float32) / 255.0)[:, None, :, :], labels


def _read_cifar_pickle(path: Path, keys: list[bytes]) -> list:
    """The values under `keys` of a CIFAR python pickle (as distributed: Python 2 pickles, so
    bytes keys). pickle runs code from the file: only use copies from the official source."""
    try:
        with path.open("rb") as handle:
            content = pickle.load(handle, encoding="bytes")
        return [content[key] for key in keys]
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
        wanted = ", ".join(map(repr, keys))
        raise DataError(f"{path}: not a CIFAR python pickle with keys {wanted} "
                        f"({type(error).__name__}: {error})") from error


def _read_cifar_batch(path: Path, label_key: bytes,
                      num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data, labels = _read_cifar_pickle(path, [b"data", label_key])
    data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} "
                        f"{data.shape}")
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(f"{path}: example {bad[0]} has label {labels[bad[0]]}, outside "
                        f"0..{num_classes - 1}")
    # Each row is the red, green and blue 32x32 planes in turn.
    return (data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0), labels


def stratified_sample(ys: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of `n` examples that keeps the class proportions.

    None, or an `n` at least the split's size, keeps every example.
    """
    if n is None or n >= len(ys):
        return np.arange(len(ys))
    if n < 1:
        raise UsageError(f"a sample size must be at least 1 (or None for all), got {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(ys, return_counts=True)
    quotas = counts * n / len(ys)
    take = np.floor(quotas).astype(np.int64)
    # Give the rounding remainder to the classes with the largest fractional quotas.
    take[np.argsort(-(quotas - take), kind="stable")[:n - take.sum()]] += 1
    chosen = [rng.choice(np.flatnonzero(ys == label), size=k, replace=False)
              for label, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def _subsample(split: Split, n: int | None, seed: int) -> Split:
    if n is None or n >= len(split):
        return split
    return split.subset(stratified_sample(split.ys, n, seed))


def _sampling_note(n_train: int | None, n_test: int | None, seed: int) -> str:
    if n_train is None and n_test is None:
        return ""
    return (f"; stratified subsample to n_train={n_train}, n_test={n_test} (None = all), "
            f"seed {seed}")


def load_substitution_table(path: str | Path) -> SubstitutionTable:
    """A Jia-format table (JSON word -> neighbours) keeping only word entries.

    Keys and neighbours that are not single TextAttack words (punctuation such as "'", "\\x96",
    or "'s", "it´s") are dropped; a word listed as its own neighbour is an error.
    """
    table = SubstitutionTable.from_json(path)
    words_only = {word: [n for n in neighbours if WORD.fullmatch(n)]
                  for word, neighbours in table.neighbors.items() if WORD.fullmatch(word)}
    return SubstitutionTable(words_only, name=f"{table.name} (words only)")


def jia_synonyms(data_root: Path) -> SubstitutionTable:
    """The Jia et al. (2019) counter-fitted neighbour table at <data_root>/synonyms/."""
    path = Path(data_root) / "synonyms" / "counterfitted_neighbors.json"
    if not path.is_file():
        raise _layout_error(path, "synonyms", data_root)
    return load_substitution_table(path)


def _substitution_table(substitutions: str | None, data_root: Path | None):
    if substitutions in (None, "none"):  # TOML has no null: suites write "none"
        return None
    if substitutions != "jia":
        raise UsageError(f"unknown substitutions {substitutions!r}; valid: 'jia' or 'none'")
    if data_root is None:
        raise DataError("the Jia et al. substitution table has no hub copy: put "
                        f"<dir>/{LAYOUTS['synonyms']} and pass --data-root <dir>, or set "
                        "substitutions = \"none\"")
    return jia_synonyms(data_root)


def _check_test_split(test_split: str) -> None:
    if test_split not in ("test", "dev"):
        raise UsageError(f"test_split must be 'test' or 'dev', got {test_split!r}")


def _load_hub(task: str, name: str, config: str | None = None):
    """A DatasetDict from the Hugging Face hub (or its local cache)."""
    import datasets

    try:
        return datasets.load_dataset(name, config)
    except OSError as error:  # offline mode, no connection, or no such dataset
        hub_name = f"{name}/{config}" if config else name
        raise DataError(f"could not load '{hub_name}' from the Hugging Face hub ({error}). To work "
                        f"offline, put the files at <dir>/{LAYOUTS[task]} and pass --data-root "
                        f"<dir>") from error


def _hub_labels(dataset, column: str) -> np.ndarray:
    return np.asarray(dataset[column], dtype=np.int64)


def _hub_text_split(dataset, text_column: str, label_column: str, n: int | None, seed: int,
                    name: str) -> Split:
    # Sample on the labels first so only the chosen rows are materialised.
    ys = _hub_labels(dataset, label_column)
    indices = stratified_sample(ys, n, seed)
    return Split(list(dataset.select(indices)[text_column]), ys[indices], name)


def _hub_image_split(dataset, image_column: str, label_column: str, mode: str, n: int | None,
                     seed: int, name: str) -> Split:
    ys = _hub_labels(dataset, label_column)
    indices = stratified_sample(ys, n, seed)
    pixels = np.stack([np.asarray(image.convert(mode), dtype=np.uint8)
                       for image in dataset.select(indices)[image_column]])
    # (N, H, W) grey or (N, H, W, 3) colour -> (N, C, H, W) in [0, 1]
    images = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    return Split(np.ascontiguousarray(images, dtype=np.float32) / 255.0, ys[indices], name)


def _hub_split(hub, split: str, task: str, name: str):
    if split not in hub:
        raise DataError(f"hub dataset '{name}' has no '{split}' split (found "
                        f"{', '.join(hub)}); task '{task}' needs it")
    return hub[split]


@register_task("sst2", modality="text", source="real")
def load_sst2_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                   test_split: str = "test", substitutions: str | None = "jia",
                   data_root: Path | None = None) -> Task:
    """SST-2 sentences, the 6,920 / 872 / 1,821 split (RanMASK, CROWD). Hub: SetFit/sst2.

    `test_split="dev"` evaluates on dev.txt (the hub's validation split) instead of test.txt.
    """
    _check_test_split(test_split)
    table = _substitution_table(substitutions, data_root)
    if data_root is not None:
        folder = _task_folder(data_root, "sst2")
        train_file = _required_file(folder, "train.txt", "sst2", data_root)
        test_file = _required_file(folder, f"{test_split}.txt", "sst2", data_root)
        train = _subsample(Split(*_read_sst2_file(train_file), name="train"), n_train, seed)
        test = _subsample(Split(*_read_sst2_file(test_file), name="test"), n_test, seed)
        source = str(folder)
    else:
        hub = _load_hub("sst2", "SetFit/sst2")
        hub_test = "validation" if test_split == "dev" else "test"
        train = _hub_text_split(_hub_split(hub, "train", "sst2", "SetFit/sst2"), "text", "label",
                                n_train, seed, "train")
        test = _hub_text_split(_hub_split(hub, hub_test, "sst2", "SetFit/sst2"), "text", "label",
                               n_test, seed, "test")
        source = "huggingface:SetFit/sst2"
    return Task("sst2", "text", 2, train, test, SENTIMENT_NAMES, substitutions=table,
                source=source, notes=f"evaluated on the {test_split} split"
                                     + _sampling_note(n_train, n_test, seed))


@register_task("agnews", modality="text", source="real")
def load_agnews_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                     train_fraction: float = 0.8, substitutions: str | None = "jia",
                     data_root: Path | None = None) -> Task:
    """AG News, 4 topics; text = title + " " + description. Hub: fancyzhx/ag_news.

    The local folder has only the 7,600-row test.csv, so train and test are a seeded stratified
    split of it (`train_fraction` to train). The hub has its own 120,000-row train split, and
    `train_fraction` is not used there.
    """
    if not 0 < train_fraction < 1:
        raise UsageError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    table = _substitution_table(substitutions, data_root)
    if data_root is not None:
        folder = _task_folder(data_root, "agnews")
        everything = Split(*_read_agnews_csv(_required_file(folder, "test.csv", "agnews",
                                                            data_root)), name="test.csv")
        train_idx, test_idx = seeded_split(len(everything), 1 - train_fraction, seed,
                                           everything.ys)
        train = _subsample(everything.subset(train_idx, "train"), n_train, seed)
        test = _subsample(everything.subset(test_idx, "test"), n_test, seed)
        source = str(folder)
        notes = (f"train and test both carved from the AG News test set ({len(everything)} "
                 f"rows): stratified {train_fraction:.0%} / {1 - train_fraction:.0%}, seed {seed}")
    else:
        hub = _load_hub("agnews", "fancyzhx/ag_news")
        train = _hub_text_split(_hub_split(hub, "train", "agnews", "fancyzhx/ag_news"), "text",
                                "label", n_train, seed, "train")
        test = _hub_text_split(_hub_split(hub, "test", "agnews", "fancyzhx/ag_news"), "text",
                               "label", n_test, seed, "test")
        source = "huggingface:fancyzhx/ag_news"
        notes = "hub train / test"
    return Task("agnews", "text", 4, train, test, AGNEWS_NAMES, substitutions=table,
                source=source, notes=notes + _sampling_note(n_train, n_test, seed))


@register_task("imdb", modality="text", source="real")
def load_imdb_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                   substitutions: str | None = "jia", data_root: Path | None = None) -> Task:
    """IMDB movie reviews (Maas et al. 2011), 25,000 / 25,000. Hub: stanfordnlp/imdb.

    Reviews are kept as distributed (with their `<br />` tags), as the hub copy has them.
    """
    table = _substitution_table(substitutions, data_root)
    if data_root is not None:
        folder = _task_folder(data_root, "imdb")
        root = folder / "aclImdb" if (folder / "aclImdb").is_dir() else folder
        train = _subsample(Split(*_read_imdb_split(root, "train", data_root), name="train"),
                           n_train, seed)
        test = _subsample(Split(*_read_imdb_split(root, "test", data_root), name="test"),
                          n_test, seed)
        source = str(root)
    else:
        hub = _load_hub("imdb", "stanfordnlp/imdb")
        train = _hub_text_split(_hub_split(hub, "train", "imdb", "stanfordnlp/imdb"), "text",
                                "label", n_train, seed, "train")
        test = _hub_text_split(_hub_split(hub, "test", "imdb", "stanfordnlp/imdb"), "text",
                               "label", n_test, seed, "test")
        source = "huggingface:stanfordnlp/imdb"
    return Task("imdb", "text", 2, train, test, SENTIMENT_NAMES, substitutions=table,
                source=source, notes="train / test" + _sampling_note(n_train, n_test, seed))


@register_task("yelp", modality="text", source="real")
def load_yelp_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                   substitutions: str | None = "jia", data_root: Path | None = None) -> Task:
    """Yelp review polarity.

    Locally: Shen et al. (2017) sentence-level files (sentiment.{train,test}.{0,1}; the dev files
    are not read). Hub: fancyzhx/yelp_polarity, which is a different corpus: whole reviews
    (Zhang et al. 2015), so results from the two are not comparable.
    """
    table = _substitution_table(substitutions, data_root)
    if data_root is not None:
        folder = _task_folder(data_root, "yelp")
        train = _subsample(Split(*_read_yelp_split(folder, "train", data_root), name="train"),
                           n_train, seed)
        test = _subsample(Split(*_read_yelp_split(folder, "test", data_root), name="test"),
                          n_test, seed)
        source = str(folder)
        notes = "Shen et al. sentence-level Yelp, train / test"
    else:
        hub = _load_hub("yelp", "fancyzhx/yelp_polarity")
        train = _hub_text_split(_hub_split(hub, "train", "yelp", "fancyzhx/yelp_polarity"), "text",
                                "label", n_train, seed, "train")
        test = _hub_text_split(_hub_split(hub, "test", "yelp", "fancyzhx/yelp_polarity"), "text",
                               "label", n_test, seed, "test")
        source = "huggingface:fancyzhx/yelp_polarity"
        notes = "Zhang et al. full-review Yelp polarity, train / test"
    return Task("yelp", "text", 2, train, test, SENTIMENT_NAMES, substitutions=table,
                source=source, notes=notes + _sampling_note(n_train, n_test, seed))


@register_task("offenseval", modality="text", source="real")
def load_offenseval_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                         test_split: str = "test", substitutions: str | None = None,
                         data_root: Path | None = None) -> Task:
    """OffensEval 2019 (OLID) offensive / not. Hub: cardiffnlp/tweet_eval, config offensive.

    `test_split="dev"` evaluates on dev.tsv (the hub's validation split) instead of test.tsv.
    """
    _check_test_split(test_split)
    table = _substitution_table(substitutions, data_root)
    if data_root is not None:
        folder = _task_folder(data_root, "offenseval")
        train_file = _required_file(folder, "train.tsv", "offenseval", data_root)
        test_file = _required_file(folder, f"{test_split}.tsv", "offenseval", data_root)
        train = _subsample(Split(*_read_sentence_label_tsv(train_file), name="train"),
                           n_train, seed)
        test = _subsample(Split(*_read_sentence_label_tsv(test_file), name="test"), n_test, seed)
        source = str(folder)
    else:
        name = "cardiffnlp/tweet_eval"
        hub = _load_hub("offenseval", name, "offensive")
        hub_test = "validation" if test_split == "dev" else "test"
        train = _hub_text_split(_hub_split(hub, "train", "offenseval", name), "text", "label",
                                n_train, seed, "train")
        test = _hub_text_split(_hub_split(hub, hub_test, "offenseval", name), "text", "label",
                               n_test, seed, "test")
        source = "huggingface:cardiffnlp/tweet_eval/offensive"
    return Task("offenseval", "text", 2, train, test, ["not offensive", "offensive"],
                substitutions=table, source=source,
                notes=f"evaluated on the {test_split} split"
                      + _sampling_note(n_train, n_test, seed))


# The hub copy of HSOL is one 24,783-row split; this share of it becomes the test split.
HSOL_HUB_TEST_FRACTION = 0.3


@register_task("hsol", modality="text", source="real")
def load_hsol_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                   test_split: str = "test", dev_fraction: float = 0.1,
                   substitutions: str | None = None, data_root: Path | None = None) -> Task:
    """HSOL (Davidson et al. 2017), binary: 1 = hate speech or offensive, 0 = neither.

    OpenBackdoor's dev.tsv is byte-identical to its test.tsv, so dev.tsv is never read: a dev split
    is re-drawn from train.tsv (stratified, `dev_fraction`, seed) and left out of training whichever
    split is evaluated, so selecting on dev and reporting on test stay independent.
    `test_split="dev"` evaluates on that held-out dev split.
    Hub: tdavidson/hate_speech_offensive, one unbalanced 3-class split, binarised here and split
    30% test, then dev from the rest.
    """
    _check_test_split(test_split)
    if not 0 < dev_fraction < 1:
        raise UsageError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    table = _substitution_table(substitutions, data_root)
    if data_root is not None:
        folder = _task_folder(data_root, "hsol")
        train_file = Split(*_read_sentence_label_tsv(
            _required_file(folder, "train.tsv", "hsol", data_root)), name="train.tsv")
        test = Split(*_read_sentence_label_tsv(
            _required_file(folder, "test.tsv", "hsol", data_root)), name="test")
        source = str(folder)
        origin = "OpenBackdoor train.tsv / test.tsv (dev.tsv not read: identical to test.tsv)"
    else:
        hub = _load_hub("hsol", "tdavidson/hate_speech_offensive")
        dataset = _hub_split(hub, "train", "hsol", "tdavidson/hate_speech_offensive")
        # class 0 = hate speech, 1 = offensive language, 2 = neither
        ys = (_hub_labels(dataset, "class") != 2).astype(np.int64)
        texts = list(dataset["tweet"])
        everything = Split(texts, ys, "hub")
        rest, test_idx = seeded_split(len(ys), HSOL_HUB_TEST_FRACTION, seed, ys)
        train_file, test = everything.subset(rest, "train"), everything.subset(test_idx, "test")
        source = "huggingface:tdavidson/hate_speech_offensive"
        origin = (f"hub split binarised (hate or offensive = 1), {HSOL_HUB_TEST_FRACTION:.0%} "
                  f"stratified test split, seed {seed}")
    train_idx, dev_idx = seeded_split(len(train_file), dev_fraction, seed, train_file.ys)
    train = train_file.subset(train_idx, "train")
    if test_split == "dev":
        test = train_file.subset(dev_idx, "test")
    return Task("hsol", "text", 2, _subsample(train, n_train, seed),
                _subsample(test, n_test, seed), ["neither", "hate or offensive"],
                substitutions=table, source=source,
                notes=f"{origin}; dev re-drawn from train ({dev_fraction:.0%} stratified, seed "
                      f"{seed}) and excluded from training; test = {test_split}"
                      + _sampling_note(n_train, n_test, seed))


@register_task("mnist", modality="image", source="real")
def load_mnist_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                    data_root: Path | None = None) -> Task:
    """MNIST, 60,000 / 10,000 28x28 grey images. Hub: ylecun/mnist."""
    if data_root is not None:
        folder = _task_folder(data_root, "mnist")
        train = Split(*_read_mnist_split(folder, "train", data_root), name="train")
        test = Split(*_read_mnist_split(folder, "t10k", data_root), name="test")
        train, test = _subsample(train, n_train, seed), _subsample(test, n_test, seed)
        source = str(folder)
    else:
        hub = _load_hub("mnist", "ylecun/mnist")
        train = _hub_image_split(_hub_split(hub, "train", "mnist", "ylecun/mnist"), "image",
                                 "label", "L", n_train, seed, "train")
        test = _hub_image_split(_hub_split(hub, "test", "mnist", "ylecun/mnist"), "image",
                                "label", "L", n_test, seed, "test")
        source = "huggingface:ylecun/mnist"
    return Task("mnist", "image", 10, train, test, [str(d) for d in range(10)], source=source,
                notes="train / test" + _sampling_note(n_train, n_test, seed))


@register_task("cifar10", modality="image", source="real")
def load_cifar10_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                      data_root: Path | None = None) -> Task:
    """CIFAR-10, 50,000 / 10,000 32x32 colour images. Hub: uoft-cs/cifar10."""
    if data_root is not None:
        folder = _task_folder(data_root, "cifar10") / "cifar-10-batches-py"
        batches = [_read_cifar_batch(_required_file(folder, f"data_batch_{i}", "cifar10",
                                                     data_root), b"labels", 10)
                   for i in range(1, 6)]
        train = Split(np.concatenate([xs for xs, _ in batches]),
                      np.concatenate([ys for _, ys in batches]), "train")
        test = Split(*_read_cifar_batch(_required_file(folder, "test_batch", "cifar10",
                                                        data_root), b"labels", 10), name="test")
        train, test = _subsample(train, n_train, seed), _subsample(test, n_test, seed)
        source = str(folder)
    else:
        hub = _load_hub("cifar10", "uoft-cs/cifar10")
        train = _hub_image_split(_hub_split(hub, "train", "cifar10", "uoft-cs/cifar10"), "img",
                                 "label", "RGB", n_train, seed, "train")
        test = _hub_image_split(_hub_split(hub, "test", "cifar10", "uoft-cs/cifar10"), "img",
                                "label", "RGB", n_test, seed, "test")
        source = "huggingface:uoft-cs/cifar10"
    return Task("cifar10", "image", 10, train, test, CIFAR10_NAMES, source=source,
                notes="train / test" + _sampling_note(n_train, n_test, seed))


def _cifar100_names(folder: Path) -> list[str]:
    meta = folder / "meta"
    if not meta.is_file():
        return [str(i) for i in range(100)]
    [names] = _read_cifar_pickle(meta, [b"fine_label_names"])
    return [name.decode() for name in names]


@register_task("cifar100", modality="image", source="real")
def load_cifar100_task(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                       data_root: Path | None = None) -> Task:
    """CIFAR-100 with its 100 fine labels, 50,000 / 10,000. Hub: uoft-cs/cifar100."""
    if data_root is not None:
        folder = _task_folder(data_root, "cifar100") / "cifar-100-python"
        train = Split(*_read_cifar_batch(_required_file(folder, "train", "cifar100", data_root),
                                          b"fine_labels", 100), name="train")
        test = Split(*_read_cifar_batch(_required_file(folder, "test", "cifar100", data_root),
                                         b"fine_labels", 100), name="test")
        train, test = _subsample(train, n_train, seed), _subsample(test, n_test, seed)
        class_names = _cifar100_names(folder)
        source = str(folder)
    else:
        hub = _load_hub("cifar100", "uoft-cs/cifar100")
        train_set = _hub_split(hub, "train", "cifar100", "uoft-cs/cifar100")
        train = _hub_image_split(train_set, "img", "fine_label", "RGB", n_train, seed, "train")
        test = _hub_image_split(_hub_split(hub, "test", "cifar100", "uoft-cs/cifar100"), "img",
                                "fine_label", "RGB", n_test, seed, "test")
        class_names = list(train_set.features["fine_label"].names)
        source = "huggingface:uoft-cs/cifar100"
    return Task("cifar100", "image", 100, train, test, class_names, source=source,
                notes="fine labels, train / test" + _sampling_note(n_train, n_test, seed))
