import os

# Tests never touch the hub and never write into the developer's cache or results.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' models are tiny: a second thread only adds synchronisation (measured up to 30x
    slower when other processes share the cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rbench-cache")
    os.environ["RBENCH_CACHE"] = str(cache)
    os.environ["RBENCH_RESULTS"] = str(tmp_path_factory.mktemp("rbench-results"))
    yield cache
