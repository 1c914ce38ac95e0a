"""Fixtures shared by the test modules (the repository-level conftest.py sets up the environment)."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(items):
    """Start the longest module (the demo chain) first: under `-n 2` it overlaps everything else."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_pipeline.py") else 1)


@pytest.fixture
def one_thread():
    """One intra-op thread: CPU matmul results depend on the thread count, so runs compare bit for bit."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random LLaMA (vocab 96, hidden 32, 2 layers, fp32) saved as an HF model dir, one per session."""
    from helpers import tiny_llama_dir

    return tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "model", vocab=96)
