"""TextAttack imports offline with its real dependencies: no download attempt, no patching."""
import os
import subprocess
import sys


def test_textattack_imports_offline_without_download_attempts(tmp_path):
    script = (
        "import nltk\n"
        "calls = []\n"
        "nltk.download = lambda *a, **k: calls.append(a)\n"  # network boundary: record any attempt
        "from benchmark.textattack_env import import_textattack\n"
        "textattack = import_textattack()\n"
        "from textattack.constraints.pre_transformation import StopwordModification\n"
        "assert 'the' in StopwordModification().stopwords\n"
        "assert calls == [], calls\n"
        "print('ok', textattack.__name__)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TA_CACHE_DIR", "NLTK_DATA")}
    env["RBENCH_CACHE"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok textattack" in result.stdout
    assert (tmp_path / "textattack" / "post_install_check_3").exists()
    assert (tmp_path / "nltk_data" / "corpora" / "stopwords" / "english").exists()


def test_list_does_not_import_textattack():
    script = ("import sys\nfrom benchmark.cli import main\nmain(['list', 'attacks'])\n"
              "assert 'textattack' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
