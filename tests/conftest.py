import os

# Tests never touch the hub and never write into the developer's cache or results.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rbench-cache")
    os.environ["RBENCH_CACHE"] = str(cache)
    os.environ["RBENCH_RESULTS"] = str(tmp_path_factory.mktemp("rbench-results"))
    yield cache
