"""Import TextAttack offline, with its real dependencies and no patching of its code.

TextAttack's first import tries to download NLTK corpora unless its post-install marker exists, and
its augmentation recipes need NLTK's English stop-word list at import time. We give it the project's
own stop-word list in an NLTK_DATA folder under the suite's cache and pre-create the marker, so the
import makes no download attempt. Import is slow (~9 s): callers import lazily, at attack time.
"""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.paths import default_cache_dir

STOPWORDS = Path(__file__).parent / "data" / "stopwords_en.txt"


def prepare_offline_environment(cache_dir: Path | None = None) -> None:
    cache_dir = Path(cache_dir or default_cache_dir())
    nltk_data = cache_dir / "nltk_data"
    stopwords = nltk_data / "corpora" / "stopwords" / "english"
    if not stopwords.exists():
        stopwords.parent.mkdir(parents=True, exist_ok=True)
        stopwords.write_text(STOPWORDS.read_text())
    paths = os.environ.get("NLTK_DATA", "").split(os.pathsep)
    if str(nltk_data) not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join([str(nltk_data), *filter(None, paths)])
    textattack_cache = Path(os.environ.setdefault("TA_CACHE_DIR", str(cache_dir / "textattack")))
    textattack_cache.mkdir(parents=True, exist_ok=True)
    (textattack_cache / "post_install_check_3").touch()


def import_textattack():
    prepare_offline_environment()
    import nltk

    nltk_data = os.environ["NLTK_DATA"].split(os.pathsep)[0]
    if nltk_data not in nltk.data.path:  # nltk was imported before the variable was set
        nltk.data.path.insert(0, nltk_data)
    import textattack

    return textattack
