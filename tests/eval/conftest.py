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


@pytest.fixture(scope="session")
def tok():
    from tests.eval.helpers import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model(tok):
    from tests.eval.helpers import tiny_llama

    return tiny_llama(len(tok))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from tests.eval.helpers import write_olmo_layout

    return write_olmo_layout(tmp_path_factory.mktemp("olmo_eval"))
