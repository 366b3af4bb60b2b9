import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared machine: one thread avoids OpenMP/BLAS threads waiting on each
    # other (tens of times slower under load), and makes BLAS reductions deterministic.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
