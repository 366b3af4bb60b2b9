"""The torch-free packed engine (mulfree.engine.lite): the same logits as the torch Decoder's
fused step bit for bit, on every ISA level; a generate path that imports neither torch nor
transformers; a bundled packed copy equal to a fresh conversion; the NumPy sampler a twin of the
server's torch sampler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_np

from mulfree import kernels
from mulfree.data.tokenizer import load_tokenizer
from mulfree.engine import convert, lite, load_packed
from mulfree.engine.convert import ConvertConfig
from mulfree.engine.generate import (
    GenerateConfig,
    _Streamer,
    bundled_model,
    bundled_packed,
    generate,
)
from mulfree.engine.sampler import SamplerConfig, SamplingParams, make_generator
from mulfree.engine.sampler import sample as np_sample
from mulfree.engine.sampler import sample_torch as torch_sample
from mulfree.ternary.bitlinear import BITLINEAR_NORM_EPS

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled core")


def test_constants_mirror_the_torch_side():
    assert lite.BITLINEAR_NORM_EPS == BITLINEAR_NORM_EPS


@pytest.fixture(scope="module", params=[("tq1", "int8"), ("tq2", "int4"), ("tq1", "float32")])
def packed(request, model_dir, tmp_path_factory):
    tfmt, efmt = request.param
    out = tmp_path_factory.mktemp(f"lite-{tfmt}-{efmt}")
    convert(ConvertConfig(str(model_dir), str(out), tfmt, efmt))
    return out


@pytest.mark.parametrize("isa", kernels.available_isas()[1:])  # every compiled level
def test_lite_logits_equal_the_torch_decoder_bit_for_bit(packed, isa):
    ids = [3, 17, 5, 0, 42, 9, 11]
    lm = lite.LiteModel.load(packed, isa=isa)  # weights laid out for `isa` (t81 needs VBMI)
    dec = lite.LiteDecoder(lm, threads=2, isa=isa)
    ref = load_packed(packed).fused_decoder()
    with kernels.use_isa(isa):
        ref = type(ref)(ref.model, threads=2, isa=isa)
        ref.reset(1)
        for t in ids:
            want = ref.step([t])[0].numpy()
            got = dec.step(t)
            np.testing.assert_array_equal(got, want)  # bit-exact: the same compiled plan
    assert dec.fused_ifg == ref.fused_ifg
    # prefill = stepping the prompt from a zero state
    np.testing.assert_array_equal(dec.prefill(ids[:3]), lite.LiteDecoder(lm, isa=isa).prefill(ids[:3]))


def test_corrupt_file_is_one_error_line(packed, tmp_path):
    bad = tmp_path / "model.safetensors"
    data = bytearray((packed / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # a tensor byte: the CRC no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(lite.MulfreeError, match="corrupt"):
        lite.LiteModel.load(tmp_path)


@pytest.mark.parametrize("config, message", [
    (None, "no config in its metadata"),
    ("{oops", "unreadable config metadata"),
    ("[1, 2]", "the config metadata is not a JSON object"),
], ids=["missing", "not-json", "not-an-object"])  # fmt: skip
def test_bad_config_metadata_is_the_same_line_in_both_readers(packed_dir, tmp_path, config, message):
    from mulfree import tensorfile
    from mulfree.engine.header import metadata_crc32

    src = packed_dir / "model.safetensors"
    meta = tensorfile.read_metadata(src)
    if config is None:
        del meta["config"]
    else:
        meta["config"] = config
    meta["metadata_crc32"] = metadata_crc32(meta)  # a crafted file, not a damaged one
    tensorfile.write_tensors(tmp_path / "model.safetensors", tensorfile.read_tensors(src), meta)
    lines = []
    for read in (lite.LiteModel.load, load_packed):
        with pytest.raises(lite.MulfreeError, match=message) as e:
            read(tmp_path)
        lines.append(str(e.value))
    assert lines[0] == lines[1] and "\n" not in lines[0]


def test_generate_on_a_packed_model_imports_neither_torch_nor_transformers(packed_dir):
    code = (
        "import sys\n"
        "from mulfree.engine.generate import GenerateConfig, generate\n"
        f"r = generate(GenerateConfig('The quick', model={str(packed_dir)!r}, max_tokens=5,"
        " energy=False, seed=1, stop_on_eos=False))\n"
        "print(r.engine, len(r.token_ids), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["lite", "5", "False", "False"]


def test_lite_and_torch_paths_generate_the_same_tokens(packed_dir):
    """Both engines sample with mulfree.engine.sampler from the same seed; the lite path's
    prompt runs step by step, the torch path's through the model's batched forward, so equal
    tokens are asserted only where the logits are equal: the first token's logits agree with
    the torch Decoder stepping the prompt (bit-exact above); the rest follow from them."""
    cfg = dict(model=str(packed_dir), max_tokens=6, seed=5, stop_on_eos=False, energy=False)
    a = generate(GenerateConfig("The quick", **cfg))
    assert a.engine == "lite" and len(a.token_ids) == 6
    assert a.token_ids == generate(GenerateConfig("The quick", **cfg)).token_ids  # seeded
    model = load_packed(packed_dir)
    tok = load_tokenizer(packed_dir)
    ids = tok.encode("The quick").ids
    dec = model.fused_decoder()
    dec.reset(1)
    for t in ids:
        logits = dec.step([t])[0].numpy()
    lm = lite.LiteModel.load(packed_dir)
    np.testing.assert_array_equal(lite.LiteDecoder(lm).prefill(ids), logits)


def test_tokenizer_and_eos_match_the_transformers_path(packed_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(packed_dir))
    tok = load_tokenizer(packed_dir)
    for text in ["The quick", "ternary weights, 1.58 bits!", ""]:
        assert tok.encode(text).ids == list(hf(text).input_ids)
    lm = lite.LiteModel.load(packed_dir)
    assert hf.eos_token_id in lite.eos_ids(lm, tok, packed_dir)


def test_bundled_packed_copy_equals_a_fresh_conversion(tmp_path):
    shipped = bundled_packed()
    assert shipped is not None
    convert(ConvertConfig(str(bundled_model()), str(tmp_path), "tq1", "float32"))
    a, b = load_np(shipped / "model.safetensors"), load_np(tmp_path / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("weight_scale"):
            # 1 / mean|w| is a float32 reduction whose order follows torch's thread split:
            # equal up to its rounding (a few ulps), not bit for bit across machines
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
        elif k.endswith("weight_packed"):
            # a weight within that rounding of a ternarization boundary may pack differently
            assert (a[k] != b[k]).mean() <= 1e-3, k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # copied values


def test_streamer_emits_the_decoded_text_piece_by_piece(packed_dir):
    tok = load_tokenizer(packed_dir)
    ids = tok.encode("ternary weights and an add-only engine, step by step").ids
    pieces = []
    s = _Streamer(tok, pieces.append)
    for t in ids:
        s.push(t)
    assert "".join(pieces) == s.text() == tok.decode(ids, skip_special_tokens=True)


def test_generate_defaults_are_llama_cpp_sampling():
    c = GenerateConfig("x")
    assert (c.temperature, c.top_k, c.top_p, c.min_p, c.repeat_penalty) == (
        0.8,
        40,
        0.95,
        0.05,
        1.0,
    )
    with pytest.raises(lite.MulfreeError, match="min_p"):
        GenerateConfig("x", min_p=1.5)


def _far_from_boundaries(logits: torch.Tensor, p: SamplingParams, u: float) -> bool:
    """u lands at least 1e-4 (in probability) from every CDF step, computed in float64: float32
    softmax/cumsum in torch vs NumPy may differ by a few ulps, which could only matter there."""
    from mulfree.engine.sampler import _filter

    x = _filter(logits.double() / p.temperature, p)
    cdf = torch.cumsum(torch.softmax(x, -1), -1)
    return bool((cdf - u * cdf[-1]).abs().min() > 1e-4)


@pytest.mark.parametrize("seed", range(12))
def test_numpy_sampler_is_the_twin_of_the_torch_sampler(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(300, generator=gen) * 3
    cfgs = [SamplerConfig(0.8, 40, 0.95, 0.05), SamplerConfig(1.3, 0, 1.0, 0.0),
            SamplerConfig(0.5, 7, 0.9, 0.1), SamplerConfig(0.0, 40, 0.95, 0.05)]  # fmt: skip
    checked = 0
    for cfg in cfgs:
        p = SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.min_p)
        u = float(torch.rand((), generator=make_generator(seed), dtype=torch.float64))
        if cfg.temperature and not _far_from_boundaries(logits, p, u):
            continue
        assert np_sample(logits.numpy(), cfg, u) == torch_sample(logits, p, make_generator(seed))
        checked += 1
    assert checked >= 2


def test_repeat_penalty_discourages_recent_tokens():
    logits = np.array([2.0, 1.9, -1.0, -1.1], dtype=np.float32)
    greedy = SamplerConfig(temperature=0, repeat_penalty=1.5)
    assert np_sample(logits, greedy, 0.0, history=[]) == 0
    assert np_sample(logits, greedy, 0.0, history=[0]) == 1  # 2.0 / 1.5 < 1.9
    # a negative logit is multiplied, i.e. pushed further down
    neg = np.array([-1.0, -1.05], dtype=np.float32)
    assert np_sample(neg, greedy, 0.0, history=[]) == 0
    assert np_sample(neg, greedy, 0.0, history=[0]) == 1  # -1.0 * 1.5 < -1.05
