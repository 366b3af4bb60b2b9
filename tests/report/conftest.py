import pytest

from tests.eval.conftest import _one_thread  # noqa: F401  (autouse: one torch thread per test)

# Small samples for the fresh sections (L-Mul error, energy), so a whole report builds quickly.
FAST = dict(lmul_n=1000, lmul_model=None, energy_context=2, progress=False)


@pytest.fixture
def fast():
    return dict(FAST)
