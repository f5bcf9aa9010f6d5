"""Shared fixtures and the hardware/scale markers of the test suite (markers are declared in pyproject.toml).

Tiers: plain tests use tiny random-config models (seconds); ``real`` tests use the packaged MiniLM and Rotten
Tomatoes on small seeded subsets (minutes, every CI run); ``full`` tests run at full scale (``make test-full``).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from hf_sparse.testing import tiny_bert_classifier, tiny_classification_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Benchmarks run in-process set torch's thread count; later tests (comparing results bit for bit with a fresh
    process) must not inherit it."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    return tiny_bert_classifier(seed=0)


@pytest.fixture
def tiny_dataset():
    return tiny_classification_dataset(n=64, seed=0)


# -- hardware markers (the one place they live) -------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device (skipped with the reason 'no CUDA device' elsewhere)"
    )


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    why = "no CUDA device" + ("" if torch.version.cuda else f" (torch {torch.__version__} is a CPU build)")
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
