"""Malformed input, one row per kind: suites, data files, substitution tables, submissions and
store files. Each is refused with exit status 2 and a message that names the input and the fix,
and nothing is left half-written: no store, no leaderboard, no submission, inputs unchanged."""
import contextlib
import json
import os
import pickle
import shutil
import sqlite3
import struct
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.paths import REPO_ROOT

DIGITS = """
[protocol]
n_examples = 10
batch_size = 10
[tasks.digits]
model = "smallcnn"
model_params = { width = 4, feature_dim = 8 }
train = { epochs = 0 }
[defenses.vanilla]
[attacks.fgsm]
params = { eps = 0.1 }
"""


def run_suite(tmp_path: Path, toml: str, *options: str) -> list[str]:
    path = tmp_path / "suite.toml"
    path.write_text(textwrap.dedent(toml))
    return ["run", str(path), "--store", str(tmp_path / "store.sqlite"), *options]


def digits_with(replace: str, by: str):
    assert replace in DIGITS
    return lambda tmp_path: run_suite(tmp_path, DIGITS.replace(replace, by))


# Suites ------------------------------------------------------------------------------------------
SUITES = [
    ("unknown suite name", lambda t: ["run", "no-such-suite"],
     ["unknown suite 'no-such-suite'", "built-in suites:", "path of a .toml file"]),
    ("missing suite file", lambda t: ["run", str(t / "missing.toml")],
     ["missing.toml", "pass the path of an existing"]),
    ("invalid TOML", lambda t: run_suite(t, "name = [unclosed\n"), ["suite.toml", "not valid TOML", "line 1"]),
    ("unknown top-level key", lambda t: run_suite(t, "colour = 1\n" + DIGITS),
     ["unknown top-level key(s) colour", "valid:"]),
    ("unknown defense", digits_with("[defenses.vanilla]", "[defenses.vanila]"),
     ["[defenses.vanila]", "unknown defense 'vanila'", "valid defense names:"]),
    ("unknown attack", digits_with("[attacks.fgsm]", "[attacks.fgsn]"),
     ["[attacks.fgsn]", "unknown attack 'fgsn'", "valid attack names:"]),
    ("unknown task", digits_with("[tasks.digits]", "[tasks.digit]"),
     ["[tasks.digit]", "unknown task 'digit'", "valid task names:"]),
    ("unknown model", digits_with('model = "smallcnn"', 'model = "bigcnn"'),
     ["[tasks.digits]", "unknown model 'bigcnn'", "valid model names:"]),
    ("seed of the wrong type", lambda t: run_suite(t, 'seed = "zero"\n' + DIGITS),
     ["key 'seed'", "expected an integer, got str"]),
    ("budget of the wrong type", digits_with("eps = 0.1", 'eps = "small"'),
     ["[attacks.fgsm], key 'eps'", "expected float, got str"]),
    ("missing model key", digits_with('model = "smallcnn"', ""),
     ["[tasks.digits]", "missing key 'model'", "smallcnn"]),
    ("no defenses", digits_with("[defenses.vanilla]", ""),
     ["needs at least one entry under [defenses]"]),
    ("defense for another modality", lambda t: run_suite(t, DIGITS.replace(
        "[defenses.vanilla]", '[defenses.vanilla]\n[defenses.ibp]\ntasks = ["digits"]')),
     ["[defenses.ibp]", "'ibp' is for text tasks but is listed for image task 'digits'"]),
    ("attack for another modality", lambda t: run_suite(t, DIGITS + '[attacks.deepwordbug]\ntasks = ["digits"]\n'),
     ["[attacks.deepwordbug]", "'deepwordbug' is for text tasks but is listed for image task"]),
    ("backdoor cells for a defense without them", digits_with(
        "[defenses.vanilla]", '[defenses.mixup]\ncells = ["clean", "backdoor"]'),
     ["[defenses.mixup]", "not registered as backdoor-capable", "remove 'backdoor' from its cells"]),
    ("negative budget", digits_with("eps = 0.1", "eps = -0.1"), ["attack 'fgsm'", "eps must be >= 0"]),
    ("zero attack steps", digits_with("params = { eps = 0.1 }", 'attack = "pgd"\nparams = { eps = 0.1, steps = 0 }'),
     ["attack 'pgd'", "steps must be >= 1"]),
    ("alpha above 1", digits_with("batch_size = 10", "batch_size = 10\nalpha = 1.5"),
     ["alpha must be in (0, 1), got 1.5"]),
    ("alpha of 0", digits_with("batch_size = 10", "batch_size = 10\nalpha = 0.0"),
     ["alpha must be in (0, 1), got 0.0"]),
    ("negative n_examples", digits_with("n_examples = 10", "n_examples = -5"),
     ["[protocol]", "n_examples must be positive, got -5"]),
    ("unknown protocol key", digits_with("batch_size = 10", "batch_size = 10\nexamples = 3"),
     ["unknown protocol key 'examples'", "valid:"]),
    ("unknown defense parameter", digits_with("[defenses.vanilla]", "[defenses.vanilla]\nparams = { epoch = 3 }"),
     ["[defenses.vanilla]", "unknown parameter(s) epoch", "valid parameters:"]),
    ("randomized smoothing's former sample-count names", digits_with(
        "[defenses.vanilla]", "[defenses.randomized-smoothing]\nparams = { n0 = 64, n = 500 }"),
     ["[defenses.randomized-smoothing]", "unknown parameter(s) n, n0", "certify_n, certify_n0"]),
    # Typos that used to change the experiment silently, numbers out of range, misplaced messages.
    ("per_task naming an unknown task", digits_with("params = { eps = 0.1 }",
                                                    "params = { eps = 0.1 }\nper_task.digit = { eps = 0.3 }"),
     ["[attacks.fgsm], key 'per_task'", "unknown task(s) digit", "the suite's tasks: digits"]),
    ("defense tasks naming an unknown task", digits_with(
        "[defenses.vanilla]", '[defenses.vanilla]\n[defenses.mixup]\ntasks = ["digit"]'),
     ["[defenses.mixup], key 'tasks'", "unknown task(s) digit", "the suite's tasks: digits"]),
    ("attack tasks naming an unknown task", digits_with("[attacks.fgsm]", '[attacks.fgsm]\ntasks = ["mnist"]'),
     ["[attacks.fgsm], key 'tasks'", "unknown task(s) mnist", "the suite's tasks: digits"]),
    ("per_task entry that is not a table", digits_with("params = { eps = 0.1 }",
                                                       "params = { eps = 0.1 }\nper_task.digits = 0.3"),
     ["[attacks.fgsm], key 'per_task.digits'", "expected a table, got float"]),
    ("NaN budget", digits_with("eps = 0.1", "eps = nan"),
     ["key 'attacks.fgsm.params.eps'", "nan is not a finite number", "give a finite value"]),
    ("infinite budget", digits_with("eps = 0.1", "eps = inf"),
     ["key 'attacks.fgsm.params.eps'", "inf is not a finite number"]),
    ("NaN resources", lambda t: run_suite(t, "[resources]\nnum_gpus = nan\n" + DIGITS),
     ["key 'resources.num_gpus'", "nan is not a finite number"]),
    ("negative epochs", digits_with("epochs = 0", "epochs = -3"),
     ["[tasks.digits], key 'train', key 'epochs'", "must be >= 0, got -3"]),
    ("zero training batch size", digits_with("epochs = 0", "epochs = 0, batch_size = 0"),
     ["[tasks.digits], key 'train', key 'batch_size'", "must be >= 1, got 0"]),
    ("negative learning rate in a defense", digits_with("[defenses.vanilla]",
                                                        "[defenses.vanilla]\nparams = { lr = -0.1 }"),
     ["[defenses.vanilla], key 'lr'", "must be >= 0, got -0.1"]),
    ("training epochs of the wrong type", digits_with("epochs = 0", 'epochs = "ten"'),
     ["key 'train', key 'epochs'", "expected int, got str"]),
    ("negative seed", lambda t: run_suite(t, "seed = -1\n" + DIGITS),
     ["key 'seed'", "must be a non-negative integer, got -1"]),
    ("negative protocol seed", digits_with("batch_size = 10", "batch_size = 10\nseed = -2"),
     ["[protocol]", "seed must be a non-negative integer, got -2"]),
    ("negative task seed", digits_with('model = "smallcnn"', 'model = "smallcnn"\nparams = { seed = -4 }'),
     ["[tasks.digits], key 'params.seed'", "must be a non-negative integer, got -4"]),
    ("protocol key of the wrong type", digits_with("batch_size = 10", "batch_size = 10\ncertify = 3"),
     ["[protocol], key 'certify'", "expected bool, got int 3"]),
    ("a directory given as the suite", lambda t: ["run", str(t)],
     ["is a directory, not a suite file", "pass the path of a .toml file"]),
]


# Data files --------------------------------------------------------------------------------------
SST2_SUITE = """
[protocol]
n_examples = 4
batch_size = 4
[tasks.sst2]
model = "textcnn"
params = { substitutions = "none" }
[defenses.vanilla]
"""


def sst2(rows=None, synonyms=None, test_bytes=None):
    """A run of an SST-2 suite on a data root whose train.txt has `rows`, with optional table."""
    def make(tmp_path):
        folder = tmp_path / "data" / "sst2"
        folder.mkdir(parents=True)
        train = rows or [f"a good film {i}\t{i % 2}" for i in range(6)]
        (folder / "train.txt").write_text("".join(row + "\n" for row in train))
        (folder / "test.txt").write_bytes(test_bytes or b"bad\t0\ngreat\t1\n")
        suite = SST2_SUITE
        if synonyms is not None:
            (tmp_path / "data" / "synonyms").mkdir()
            (tmp_path / "data" / "synonyms" / "counterfitted_neighbors.json").write_text(synonyms)
            suite = suite.replace('"none"', '"jia"')
        return run_suite(tmp_path, suite, "--data-root", str(tmp_path / "data"))
    return make


def idx_bytes(array: np.ndarray) -> bytes:
    return (struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(np.uint8).tobytes())


def mnist(images_ndim=3, max_label=9):
    def make(tmp_path):
        folder = tmp_path / "data" / "mnist"
        folder.mkdir(parents=True)
        for prefix in ("train", "t10k"):
            shape = (12, 28, 28) if images_ndim == 3 else (12, 784)
            (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(shape)))
            labels = np.arange(12) % 10
            labels[-1] = max_label
            (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
        return run_suite(tmp_path, DIGITS.replace("[tasks.digits]", "[tasks.mnist]"),
                         "--data-root", str(tmp_path / "data"))
    return make


def cifar10_float_pixels(tmp_path):
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {b"data": np.zeros((10, 3072), dtype=np.float64), b"labels": list(range(10))}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    return run_suite(tmp_path, DIGITS.replace("[tasks.digits]", "[tasks.cifar10]"),
                     "--data-root", str(tmp_path / "data"))


def plugin_task(images: str):
    """A task registered by a plugin file whose training images are `images` (numpy source)."""
    def make(tmp_path):
        name = f"task-{abs(hash(images)) % 10**8}"
        plugin = tmp_path / "bad_task.py"
        plugin.write_text(textwrap.dedent(f"""
            import numpy as np
            from benchmark.data.base import Split, Task
            from benchmark.registry import register_task

            @register_task("{name}", modality="image")
            def load(seed=0, data_root=None):
                good = np.zeros((4, 1, 8, 8), dtype=np.float32)
                images = {images}
                return Task("{name}", "image", 2, Split(images, [0, 1, 0, 1], "train"),
                            Split(good, [0, 1, 0, 1], "test"))
            """))
        return ["--plugin", str(plugin)] + run_suite(
            tmp_path, DIGITS.replace("[tasks.digits]", f'[tasks.{name}]'))
    return make


DATA = [
    ("missing data directory", lambda t: run_suite(t, SST2_SUITE, "--data-root", str(t / "nowhere")),
     ["nowhere/sst2 not found", "sst2 is read from", "train.txt"]),
    ("wrong number of columns", sst2(rows=["a good film\t1\textra"]),
     ["train.txt, line 1", "expected 'sentence<TAB>label' (2 tab-separated columns), found 3"]),
    ("wrong header", lambda t: _offenseval(t, "Text\tLabel\nok\t0\n"),
     ["train.tsv, line 1", "header must be 'Sentence\\tLabel'"]),
    ("empty text", sst2(rows=["a good film\t1", "   \t0"]), ["train.txt, line 2", "empty text; remove the row"]),
    ("non-UTF-8 bytes", sst2(test_bytes=b"caf\xe9\t1\n"),
     ["test.txt, line 1: not UTF-8", "re-encode the file as UTF-8"]),
    ("label out of range", sst2(rows=["a good film\t1", "a bad film\t2"]),
     ["train.txt, line 2", "label 2 is outside 0..1"]),
    ("label that is not a number", sst2(rows=["a good film\tpositive"]),
     ["train.txt, line 1", "label 'positive' is not an integer"]),
    ("blank line", sst2(rows=["a good film\t1", "", "a bad film\t0"]),
     ["train.txt, line 2: blank line", "remove it"]),
    ("line holding only a carriage return", sst2(rows=["a good film\t1", "\r", "a bad film\t0"]),
     ["train.txt, line 2: blank line", "remove it"]),
    ("old Mac (CR) line endings", sst2(rows=["a good film\t1\ra bad film\t0"]),
     ["train.txt, line 1: a carriage return (CR) inside the line", "LF or CRLF line endings"]),
    ("byte-order mark before a header", lambda t: _offenseval(t, "\ufeffSentence\tLabel\nok\t0\n"),
     ["train.tsv, line 1: the file starts with a byte-order mark (BOM)", "UTF-8 without a BOM"]),
    ("blank line in a TSV file", lambda t: _offenseval(t, "Sentence\tLabel\nok\t0\n\nbad\t1\n"),
     ["train.tsv, line 3: blank line", "remove it"]),
    ("images of the wrong shape", mnist(images_ndim=2),
     ["train-images-idx3-ubyte", "not an idx file of unsigned bytes with 3 dimension(s)"]),
    ("image labels out of range", mnist(max_label=12), ["labels-idx1-ubyte", "label 12 is outside 0..9"]),
    ("images of the wrong dtype", cifar10_float_pixels, ["data_batch_1", "b'data' must be uint8 of shape (N, 3072)"]),
    ("NaN pixels", plugin_task("good.copy(); images[2, 0, 3, 3] = np.nan"),
     ["train split, example 2", "pixels must be finite and in [0, 1]"]),
    ("float64 images", plugin_task("good.astype(np.float64)"),
     ["train split", "images must be a float32 array (N, C, H, W)", "dtype float64"]),
]


def _offenseval(tmp_path, train_tsv):
    folder = tmp_path / "data" / "offenseval"
    folder.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (folder / name).write_text(train_tsv if name == "train.tsv" else "Sentence\tLabel\nok\t0\nbad\t1\n")
    return run_suite(tmp_path, SST2_SUITE.replace("sst2", "offenseval"), "--data-root", str(tmp_path / "data"))


# Substitution tables -----------------------------------------------------------------------------
TABLES = [
    ("malformed table JSON", sst2(synonyms="{\"good\": [\"great\""),
     ["counterfitted_neighbors.json is not valid JSON"]),
    ("table self-loop", sst2(synonyms=json.dumps({"good": ["good", "great"], "film": ["movie"]})),
     ["counterfitted_neighbors.json", "(first: 'good')", "remove each word from its own list"]),
    ("table of the wrong shape", sst2(synonyms=json.dumps({"good": "great"})),
     ["counterfitted_neighbors.json must be a JSON object word -> list of words"]),
]


# Submissions -------------------------------------------------------------------------------------
SUBMISSION_SUITE = DIGITS.replace("[attacks.fgsm]\nparams = { eps = 0.1 }\n", "")


def submission(name: str, model_body: str, *options: str, build: str = "return Model()"):
    """`rbench submit` of a defense whose model (returned untrained by `build`) has `model_body`."""
    def make(tmp_path):
        plugin = tmp_path / f"{name}.py"
        plugin.write_text(textwrap.dedent("""
            import numpy as np
            from benchmark.registry import register_defense

            class Model:
                num_classes = 10
                def predict(self, xs):
                    return np.zeros(len(xs), dtype=np.int64)
                def probs(self, xs):
                    return np.full((len(xs), 10), 0.1)
            """) + textwrap.indent(textwrap.dedent(model_body), "    ") + textwrap.dedent(f"""

            @register_defense("bad-{name}", modality="image")
            class Bad:
                def build(self, task, model_spec, config, context):
                    {build}
            """))
        suite = tmp_path / "submit-suite.toml"
        suite.write_text(SUBMISSION_SUITE)
        return ["submit", str(plugin), "--suite", str(suite), "--name", "entry",
                "--out", str(tmp_path / "submissions"), *options]
    return make


def _text_file(tmp_path):
    path = tmp_path / "defense.txt"
    path.write_text("print('hello')\n")
    return path


def _json_file(tmp_path, value):
    path = tmp_path / "entry.json"
    path.write_text(json.dumps(value))
    return path


def taken_name(tmp_path):
    """`submit --name entry` when entry.json holds the submission of another plugin file."""
    argv = submission("taken", "")(tmp_path)
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "entry.json").write_text(json.dumps(
        {"format": "rbench-submission/2", "plugin": {"file": "other.py", "sha256": "0" * 64}}))
    return argv


FAILED = "1 cell(s) of the submission failed, so nothing was written"
SUBMISSIONS = [
    ("submission file missing", lambda t: ["submit", str(t / "nope.py"), "--suite", "mini", "--name", "x"],
     ["plugin file not found", "nope.py", "pass the path of a .py file"]),
    ("submission without probs", submission("no_probs", "probs = None"),
     [FAILED, "no probs(xs) method", "DefendedModel contract"]),
    ("submission whose predict raises", submission("raises", """
        def predict(self, xs):
            return 1 / 0
        """), [FAILED, "predict raised ZeroDivisionError: division by zero (at ", "raises.py:"]),
    ("submission returning the wrong shape", submission("wrong_shape", """
        def predict(self, xs):
            return np.zeros((len(xs), 2), dtype=np.int64)
        """), [FAILED, "predict returned shape (2, 2), expected (2,): one label per input"]),
    ("submission returning NaN probabilities", submission("nan_probs", """
        def probs(self, xs):
            return np.full((len(xs), 10), np.nan)
        """), [FAILED, "probs returned NaN or infinite probabilities"]),
    ("submission returning out-of-range probabilities", submission("logits_as_probs", """
        def probs(self, xs):
            return np.full((len(xs), 10), 3.0)
        """), [FAILED, "probs returned values outside [0, 1]", "return probabilities (e.g. a softmax)"]),
    ("submission that never terminates", submission("loops", """
        def predict(self, xs):
            while True:
                pass
        """, "--time-limit", "3"), [FAILED, "predict did not return within 3 s", "--time-limit"]),
    ("submission exceeding the memory limit", submission("hungry", """
        def predict(self, xs):
            return np.ones(2**30, dtype=np.int64)[:len(xs)]
        """, "--memory-limit", "2"), [FAILED, "predict raised MemoryError", "memory limit is 2 GB",
                                      "Fix the defense or raise the sandbox limit it hit"]),
    ("submission reading the test labels", submission("peeks", "", build="return task.test.ys"),
     [FAILED, "build raised AttributeError: 'NoneType' object has no attribute 'ys'"]),
    ("sandbox limit that is not positive", submission("limit", "", "--time-limit", "0"),
     ["--time-limit must be a positive number"]),
    ("submission whose process dies", submission("dies", """
        def predict(self, xs):
            import os, signal
            os.kill(os.getpid(), signal.SIGKILL)
        """, "--memory-limit", "2"), [FAILED, "process died during predict (exit code -9",
                                      "memory limit of 2 GB", "or raise the sandbox limit it hit"]),
    ("entry name taken by another plugin", taken_name,
     ["entry.json is the submission of another plugin file (other.py", "choose another --name",
      "--replace"]),
    ("defense file that is not Python", lambda t: ["submit", str(_text_file(t)), "--suite", "mini",
                                                   "--name", "x"],
     ["defense.txt is not a Python file (.py)", "pass the path of a .py file"]),
    ("--plugin file that is not Python", lambda t: ["list", "defenses", "--plugin", str(_text_file(t))],
     ["defense.txt is not a Python file (.py)"]),
    ("--plugin that is a directory", lambda t: ["--plugin", str(t), "list", "defenses"],
     ["plugin file not found", "pass the path of a .py file"]),
    ("verify: a file that is not JSON", lambda t: ["verify", str(_text_file(t))],
     ["defense.txt is not a submission file (invalid JSON"]),
    ("verify: a submission of the old format", lambda t: ["verify", str(_json_file(t, {"format": "rbench-submission/1"}))],
     ["is not an rbench submission in the current format", "submit the defense again"]),
    ("verify: no examples", lambda t: ["verify", str(_json_file(t, {})), "--examples", "0"],
     ["--examples must be at least 1, got 0"]),
]


# Store files -------------------------------------------------------------------------------------
def foreign_store(tmp_path):
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    return run_suite(tmp_path, DIGITS)


def corrupted_store(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"not a database" * 300)
    return run_suite(tmp_path, DIGITS)


STORES = [
    ("foreign SQLite store", foreign_store, ["store.sqlite is an SQLite file but not an rbench results store",
                                             "left untouched", "pass another --store path"]),
    ("corrupted store", corrupted_store, ["store.sqlite is not a readable rbench results store",
                                          "pass another --store path"]),
]

CASES = SUITES + DATA + TABLES + SUBMISSIONS + STORES


def snapshot(directory: Path) -> dict:
    """Every file under `directory` with its bytes, except the model cache and the resumable
    submission stores (`rbench submit` keeps a failed run's finished cells for the next try)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).parts[0] not in ("cache", "results")}


@pytest.mark.parametrize("make_argv, expected", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_error(tmp_path, monkeypatch, capsys, make_argv, expected):
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RBENCH_RESULTS", str(tmp_path / "results"))
    argv = make_argv(tmp_path)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    message = capsys.readouterr().err
    missing = [fragment for fragment in expected if fragment not in message]
    assert not missing, f"message lacks {missing}:\n{message}"
    assert "Traceback" not in message
    assert snapshot(tmp_path) == before  # no store, leaderboard or submission; inputs untouched


@contextlib.contextmanager
def unprivileged():
    """Run as an ordinary user: root may write any file, so a test of a read-only store run as
    root drops its effective ids to nobody's for the duration."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_tmp():
    """A scratch folder an unprivileged user can enter (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="rbench-read-only-"))
    folder.chmod(0o777)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o777)
    shutil.rmtree(folder)


def _read_only_store(shared_tmp, monkeypatch):
    """A finished store of the DIGITS suite, made read-only, in a folder anyone may enter."""
    monkeypatch.setenv("RBENCH_CACHE", str(shared_tmp / "cache"))
    # the suite's leaderboard folder too, which the checkout (perhaps private to root) would hold
    monkeypatch.setenv("RBENCH_LEADERBOARDS", str(shared_tmp / "leaderboards"))
    suite = shared_tmp / "suite.toml"
    suite.write_text(DIGITS)
    store = shared_tmp / "store.sqlite"
    assert main(["run", str(suite), "--store", str(store)]) == 0
    for leftover in shared_tmp.glob("store.sqlite-*"):
        leftover.unlink()
    store.chmod(0o444)
    return suite, store


def test_a_read_only_store_is_refused_untouched(shared_tmp, monkeypatch, capsys):
    suite, store = _read_only_store(shared_tmp, monkeypatch)
    locked = shared_tmp / "locked"
    locked.mkdir(mode=0o555)
    capsys.readouterr()
    with unprivileged():
        read_only_file = main(["run", str(suite), "--store", str(store)])
        file_message = capsys.readouterr().err
        read_only_folder = main(["run", str(suite), "--store", str(locked / "new" / "store.sqlite")])
        folder_message = capsys.readouterr().err
    assert read_only_file == 2 and "Traceback" not in file_message
    assert f"results store {store}: its file {store} is read-only" in file_message
    assert f"chmod u+w {store}" in file_message and "pass another --store path" in file_message
    assert read_only_folder == 2 and f"its folder {locked} is read-only" in folder_message
    assert sorted(p.name for p in shared_tmp.glob("store.sqlite*")) == ["store.sqlite"]  # no -wal, -shm
    assert not any(locked.iterdir())


def test_a_read_only_store_still_gives_its_leaderboard(shared_tmp, monkeypatch):
    """`rbench leaderboard` reads a store its user may not write, leaving no -wal / -shm files.
    The command reads the checkout (templates, claims), so the unprivileged user must be able to."""
    with unprivileged():
        readable = os.access(REPO_ROOT / "benchmark" / "claims", os.R_OK | os.X_OK,
                             effective_ids=True)
    if not readable:
        pytest.skip(f"the checkout {REPO_ROOT} is not readable by an unprivileged user")
    suite, store = _read_only_store(shared_tmp, monkeypatch)
    # imported as root: the interpreter's own library may be private to root
    import benchmark.reproduction  # noqa: F401
    import benchmark.submit  # noqa: F401

    with unprivileged():
        board = main(["leaderboard", str(suite), "--store", str(store), "--out",
                      str(shared_tmp / "board")])
    assert board == 0 and (shared_tmp / "board" / "leaderboard.json").is_file()
    assert sorted(p.name for p in shared_tmp.glob("store.sqlite*")) == ["store.sqlite"]  # no -wal, -shm


def test_the_table_covers_every_kind_of_input():
    assert len(CASES) >= 74
    assert {len(SUITES) >= 15, len(DATA) >= 10, len(TABLES) >= 2, len(SUBMISSIONS) >= 7} == {True}
