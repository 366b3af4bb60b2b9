"""`mulfree serve` on a packed hgrn_bit model runs the torch-free engine (LiteBackend): the same
slot decoder as the torch backend's fused path, so logits are the same bits (tolerance EXACT,
tests/_tolerances.py), without importing transformers' model code or building a PyTorch model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mulfree import kernels
from mulfree.engine.convert import ConvertConfig, convert
from mulfree.serve.backends import LiteBackend, MatMulFreeBackend, load_backend, make_backend
from tests.serve.conftest import make_server, request_json

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")


@pytest.fixture(scope="module")
def packed_dir(model_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("lite") / "packed"
    convert(ConvertConfig(str(model_dir), str(dst), "tq1", "float32"))
    return dst


@pytest.fixture(scope="module")
def lite(packed_dir):
    return load_backend(packed_dir, max_context=100_000)


def test_packed_dir_is_served_by_the_torch_free_engine_with_the_same_bits(lite, packed_dir):
    from mulfree.engine import load_packed

    assert isinstance(lite, LiteBackend) and lite.weights == "packed"
    ref = make_backend(load_packed(packed_dir), lite.tokenizer, "ref", weights="packed",
                       max_context=100_000)  # fmt: skip
    assert isinstance(ref, MatMulFreeBackend) and ref._fused() is not None
    assert lite.vocab_size == ref.vocab_size and lite.eos_token_ids == ref.eos_token_ids
    a, b = lite.encode("Ternary weights"), lite.encode("The quick brown fox")
    runs = {}
    for name, be in (("lite", lite), ("torch", ref)):
        be.reserve(4)
        sa, la = be.start(a)
        sb, lb = be.start(b)
        rows = [la, lb]
        for t in range(5):  # two requests stepping together, then one leaves
            states = [sa, sb] if t < 3 else [sa]
            out = be.step(states, [7 + t] * len(states)).clone()  # valid until the next call
            rows.extend(out)
            if t == 2:
                be.free(sb)
        be.free(sa)
        runs[name] = torch.stack(rows)
    assert torch.equal(runs["lite"], runs["torch"])


def test_lite_backend_energy_estimate(lite):
    from mulfree.serve.metrics import estimate_step_energy

    e1, e2 = estimate_step_energy(lite)
    assert 0 < e1 < e2 < 2 * e1  # the second row shares the weight reads


def test_serving_a_packed_dir_imports_no_model_code(packed_dir):
    # model code = transformers' modeling_utils (PreTrainedModel) and any model's modeling_*
    # module (ours, transformers'; small shared helpers such as modeling_outputs do not count);
    # some transformers releases import image-processor modules with the fast tokenizer: not model
    # code, and not counted
    code = (
        "import sys; from mulfree.serve.backends import load_backend; "
        f"b = load_backend({str(packed_dir)!r}); s = b.start(b.encode('hi'))[0]; "
        "b.step([s], [3]); print(type(b).__name__, "
        "sorted(m for m in sys.modules if m == 'transformers.modeling_utils' or "
        "(m.startswith(('transformers.models.', 'mulfree.models.')) "
        "and m.rsplit('.', 1)[-1].startswith('modeling_'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    name, mods = r.stdout.split(" ", 1)
    assert name == "LiteBackend" and json.loads(mods.strip().replace("'", '"')) == []


def test_a_server_on_the_lite_backend_completes(lite):
    s = make_server(lite)
    try:
        status, _, body = request_json(
            s.url + "/v1/completions",
            "POST",
            {"model": lite.model_id, "prompt": "Ternary", "max_tokens": 4, "temperature": 0},
        )
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
    finally:
        s.stop()
