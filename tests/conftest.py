"""Shared fixtures and the hardware/scale markers of the test suite (markers are declared in pyproject.toml).

Tiers: plain tests use tiny random-config models (seconds); ``real`` tests use the packaged MiniLM and Rotten
Tomatoes on small seeded subsets (minutes, every CI run); ``full`` tests run at full scale (``make test-full``).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from hf_sparse.testing import tiny_bert_classifier, tiny_classification_dataset  # noqa: E402


@pytest.fixture
def tiny_model():
    return tiny_bert_classifier(seed=0)


@pytest.fixture
def tiny_dataset():
    return tiny_classification_dataset(n=64, seed=0)
