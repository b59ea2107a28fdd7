"""Output files are replaced whole (a temporary file renamed into place) and JSON is strict; the
`--plugin` option is accepted after the subcommand, as the README writes it."""
import json
import math
import textwrap

import pytest

from benchmark.cli import main
from benchmark.files import write_json

SUITE = """
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


@pytest.fixture
def suite(tmp_path, monkeypatch):
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RBENCH_LEADERBOARDS", str(tmp_path / "leaderboards"))
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    return path


def test_leaderboard_files_are_replaced_whole(suite, tmp_path):
    store, out = tmp_path / "store.sqlite", tmp_path / "board"
    assert main(["run", str(suite), "--store", str(store)]) == 0
    assert main(["leaderboard", str(suite), "--store", str(store), "--out", str(out), "--html"]) == 0
    names = ["leaderboard.md", "leaderboard.json", "leaderboard.csv", "index.html"]
    inodes = {name: (out / name).stat().st_ino for name in names}
    assert main(["leaderboard", str(suite), "--store", str(store), "--out", str(out), "--html"]) == 0
    # A new file renamed over the old one (a new inode), never the old file rewritten in place.
    assert all((out / name).stat().st_ino != inodes[name] for name in names)
    assert not list(out.glob(".*partial*"))


@pytest.mark.parametrize("number", [math.nan, math.inf])
def test_json_output_is_strict_and_a_failed_write_leaves_the_old_file(tmp_path, number):
    path = tmp_path / "out.json"
    write_json(path, {"value": 1.0})
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(path, {"value": number})
    assert json.loads(path.read_text()) == {"value": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_plugin_option_after_the_subcommand(suite, tmp_path, capsys):
    plugin = tmp_path / "after_defense.py"
    plugin.write_text(textwrap.dedent("""
        from benchmark.registry import register_defense
        from defenses.vanilla import Vanilla

        @register_defense("after-subcommand-vanilla", modality="any")
        class AfterSubcommand(Vanilla):
            pass
        """))
    suite.write_text(SUITE.replace("[defenses.vanilla]", "[defenses.after-subcommand-vanilla]"))
    store = tmp_path / "store.sqlite"
    assert main(["run", str(suite), "--store", str(store), "--plugin", str(plugin)]) == 0
    assert main(["leaderboard", str(suite), "--store", str(store), "--out", str(tmp_path / "b"),
                 "--plugin", str(plugin)]) == 0
    assert "after-subcommand-vanilla" in (tmp_path / "b" / "leaderboard.md").read_text()
    capsys.readouterr()
    assert main(["list", "defenses", "--plugin", str(plugin)]) == 0
    assert "after-subcommand-vanilla" in capsys.readouterr().out
