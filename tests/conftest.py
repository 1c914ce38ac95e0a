"""Fixtures shared by the test modules (the repository-level conftest.py sets up the environment)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: CPU matmul results depend on the thread count, so runs compare bit for bit."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
