"""Packed format round trip, engine vs PyTorch greedy decoding, HF generate, energy counts."""

from __future__ import annotations

import copy

import pytest
import torch

from mulfree import energy, kernels
from mulfree.engine import (
    Int4Embedding,
    Int8Embedding,
    PackedBitLinear,
    PackedHGRNBitForCausalLM,
    convert,
    load_packed,
    pack_model_,
    place_weights_,
    read_packed,
    save_packed,
)
from mulfree.engine.decode import Decoder
from mulfree.errors import MulfreeError
from mulfree.models.hf_compat import cache_kwargs
from mulfree.ternary import packing
from mulfree.ternary.bitlinear import BitLinear
from mulfree.ternary.quant import weight_quant_ternary
from tests._tolerances import assert_argmax_agrees, assert_close_through_int8

from .conftest import PROMPTS, make_model, train_tiny

N_NEW = 24


@torch.no_grad()
def assert_greedy_follows(logits_of, ref_model, prompt, n=N_NEW):
    """Greedy decoding by `logits_of(ids) -> [T, V]` follows the PyTorch `ref_model`, teacher-forced:
    each choice is checked against the reference's logits at that position, greedy where decidable
    (tests/_tolerances.py), so a near tie broken the other way by a rounding flip (int8) neither
    fails the test nor derails the rest of the sequence."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(logits_of(ids)[-1].argmax()))
    got = logits_of(ids)[len(prompt) - 1 : -1]
    ref = ref_model(torch.tensor([ids]), use_cache=False).logits[0, len(prompt) - 1 : -1]
    assert_argmax_agrees(got, ref)


def assert_engine_follows(packed, model, prompt, n=N_NEW):
    """The engine's step-by-step greedy decoding follows the PyTorch model (teacher-forced, as
    in assert_greedy_follows)."""
    dec = packed.fused_decoder()
    logits, rows, seq = dec.prefill([prompt]), [], []
    for _ in range(n):
        rows.append(logits[0].clone())
        seq.append(int(logits[0].argmax()))
        logits = dec.step([seq[-1]])
    with torch.no_grad():
        ref = model(torch.tensor([prompt + seq])).logits[0, len(prompt) - 1 : -1]
    assert_argmax_agrees(torch.stack(rows), ref)


def full_logits(model):
    return lambda ids: model(torch.tensor([ids]), use_cache=False).logits[0]


def engine_greedy(packed, prompt, n=N_NEW):
    dec = packed.fused_decoder()
    logits = dec.prefill([prompt])
    out = []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits = dec.step([out[-1]])
    return out


@pytest.mark.parametrize("tfmt", ["tq1", "tq2"])
@pytest.mark.parametrize("efmt", ["float32", "int8", "int4", "bfloat16"])
def test_convert_round_trip(model_dir, tmp_path, tfmt, efmt):
    from mulfree.models.mmfree import HGRNBitForCausalLM

    src = HGRNBitForCausalLM.from_pretrained(str(model_dir))
    r = convert(str(model_dir), str(tmp_path / "p"), ternary_format=tfmt, embeddings=efmt)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(r.tokenizer_files)
    config, tensors, meta = read_packed(r.path)
    assert meta["ternary_format"] == tfmt and meta["embedding_format"] == efmt
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "rms_norm_eps", "eos_token_id",
                "use_lower_bound", "mlp_intermediate_size", "elementwise_mul"):  # fmt: skip
        assert getattr(config, key) == getattr(src.config, key), key
    n_linear = 0
    for name, m in src.named_modules():
        if isinstance(m, BitLinear):
            q, s = weight_quant_ternary(m.weight)
            data = tensors[f"{name}.weight_packed"]
            got = packing.unpack(data, tfmt, m.out_features, m.in_features)
            torch.testing.assert_close(got, q, atol=0, rtol=0)
            assert float(tensors[f"{name}.weight_scale"]) == float(s.detach())
            torch.testing.assert_close(
                tensors[f"{name}.norm.weight"], m.norm.weight, atol=0, rtol=0
            )
            n_linear += 1
    assert n_linear == 6 * src.config.num_hidden_layers + 1
    emb = src.model.embeddings.weight
    if efmt == "int8":
        deq = (
            tensors["model.embeddings.weight_int8"].float()
            * tensors["model.embeddings.weight_step"][:, None]
        )
        # int8 absmax per row: error <= half a step (+ float rounding)
        assert (
            (deq - emb).abs() <= tensors["model.embeddings.weight_step"][:, None] * 0.5001
        ).all()
    elif efmt == "int4":
        step = tensors["model.embeddings.weight_step"]  # [V, G]
        deq = Int4Embedding.decode(tensors["model.embeddings.weight_int4"], step, emb.shape[1])
        bound = step.repeat_interleave(32, dim=1)[:, : emb.shape[1]] * 0.5001
        assert ((deq - emb).abs() <= bound).all()  # half a step per group (+ float rounding)
    else:
        got = tensors["model.embeddings.weight"]
        torch.testing.assert_close(got, emb.to(got.dtype), atol=0, rtol=0)
    torch.testing.assert_close(
        tensors["model.lower_bounds"], src.model.lower_bounds, atol=0, rtol=0
    )
    # the loaded model's tq2 buffers hold the same codes
    packed = load_packed(tmp_path / "p")
    mods = dict(packed.named_modules())
    for name, m in src.named_modules():
        if isinstance(m, BitLinear):
            q, _ = weight_quant_ternary(m.weight)
            torch.testing.assert_close(mods[name].packed().unpack(), q, atol=0, rtol=0)


def test_repack_packed_model(packed_dir, tmp_path):
    r = convert(str(packed_dir), str(tmp_path / "tq2"), ternary_format="tq2", embeddings="int8")
    a, b = load_packed(packed_dir), load_packed(r.path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, atol=0, rtol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["own-norms", "fused-ifg"])
def test_engine_greedy_equals_pytorch(tmp_path, trained, fused):
    model, prompts = trained
    model = copy.deepcopy(model)
    if fused:  # equal i/f/g input norms -> identical int8 inputs -> one kernel call
        with torch.no_grad():
            for layer in model.model.layers:
                a = layer.attn
                a.f_proj.norm.weight.copy_(a.i_proj.norm.weight)
                a.g_proj.norm.weight.copy_(a.i_proj.norm.weight)
    save_packed(model, tmp_path, ternary_format="tq1", embedding_format="float32")
    packed = load_packed(tmp_path)
    assert packed.fused_decoder().fused_ifg == fused
    for prompt in prompts:
        assert_engine_follows(packed, model, prompt)


def test_engine_greedy_int8_embeddings_equal_pytorch_with_same_quantization(tmp_path, trained):
    model, prompts = trained
    model = copy.deepcopy(model)
    save_packed(model, tmp_path)  # defaults: tq1, int8 embeddings
    packed = load_packed(tmp_path)
    assert isinstance(packed.model.embeddings, Int8Embedding)
    # the PyTorch model with the same (int8) embedding quantization
    with torch.no_grad():
        model.model.embeddings.weight.copy_(packed.model.embeddings.dequantize())
    for prompt in prompts:
        assert_engine_follows(packed, model, prompt)


def test_engine_logits_close_to_pytorch_and_steps_equal_prefill(trained):
    model, prompts = trained
    packed = PackedHGRNBitForCausalLM.from_model(model)
    prompt = prompts[1]
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0]  # [T, V]
    dec = packed.fused_decoder()
    full = dec.prefill([prompt])[0].clone()
    # not bit-equal: the kernel's exact int32 sum + one division vs F.linear's fp32 sums, and
    # such 1-ulp differences can move a later int8 activation by one step
    assert (full - ref[-1]).abs().max() < 0.05 * ref[-1].abs().max()
    states = [s.clone() for s in dec.states]
    dec.reset(1)
    for t, tok in enumerate(prompt):  # recurrent steps vs the prefill
        step = dec.step([tok])[0]
        assert (step - ref[t]).abs().max() < 0.05 * ref[t].abs().max()
    # the fused prefill runs the steps' arithmetic (batched kernels are exact per row)
    assert torch.equal(step, full)
    assert all(torch.equal(a, b) for a, b in zip(dec.states, states, strict=True))


def test_batched_prefill_equals_each_prompt_stepped(trained):
    """Decoder.prefill on [B, T] (the batch API, HF-style) runs each row as prefill_slot does,
    not through the model's forward: the same bits as stepping each prompt alone."""
    model, prompts = trained
    packed = PackedHGRNBitForCausalLM.from_model(model)
    T = min(len(p) for p in prompts[:2])
    rows = [list(p[:T]) for p in prompts[:2]]
    dec = Decoder(packed)
    got = dec.prefill(rows).clone()
    got_states = [s.clone() for s in dec.states]
    for b, row in enumerate(rows):
        one = Decoder(packed)
        for tok in row:
            want = one.step([tok])[0]
        assert torch.equal(got[b], want)
        assert all(torch.equal(g[b], s[0]) for g, s in zip(got_states, one.states, strict=True))
    with pytest.raises(MulfreeError, match="at least one token"):
        dec.prefill([[]])


def test_hf_generate_on_packed_model(packed_dir):
    packed = load_packed(packed_dir)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        out = packed.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        expect = engine_greedy(packed, prompt, 12)
        assert out[0, len(prompt) :].tolist() == expect
    # batched, sampled generation runs and respects the length
    out = packed.generate(torch.tensor([[3, 4], [5, 6]]), max_new_tokens=5, do_sample=True, top_k=5)
    assert out.shape == (2, 7)


def test_pack_model_in_place_matches_engine_and_counts_adds(trained):
    model, prompts = trained
    model = copy.deepcopy(model)
    ref_model = copy.deepcopy(model)
    pack_model_(model)
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    layers = [m for m in model.modules() if isinstance(m, PackedBitLinear)]
    assert len(layers) == 6 * model.config.num_hidden_layers + 1
    assert_greedy_follows(full_logits(model), ref_model, prompts[0], 8)
    # energy: one token's ternary adds = sum of nnz(W) over every packed layer
    nnz = sum(int((m.packed().unpack() != 0).sum()) for m in layers)
    with energy.EnergyCounter(model) as c, torch.no_grad():
        model(torch.tensor([[7]]), use_cache=False)
    assert c.counts[("ternary_add", 32)] == nnz
    assert c.counts[("div", 32)] >= sum(m.out_features for m in layers)


def test_decoder_counts_energy_like_the_model(packed_dir):
    packed = load_packed(packed_dir)
    dec = packed.fused_decoder()
    dec.prefill([[1, 2]])
    with energy.EnergyCounter(packed) as c:
        dec.step([3])
    nnz = sum(
        int((m.packed().unpack() != 0).sum())
        for m in packed.modules()
        if isinstance(m, PackedBitLinear)
    )
    assert c.counts[("ternary_add", 32)] == nnz


def test_decoder_state_is_constant_memory(packed_dir):
    dec = load_packed(packed_dir).fused_decoder()
    dec.prefill([[1, 2, 3]])
    ptrs = [s.data_ptr() for s in dec.states]
    for t in range(50):
        dec.step([t % 200])
    assert [s.data_ptr() for s in dec.states] == ptrs
    assert all(s.shape == (1, dec.config.hidden_size) for s in dec.states)


def test_size_of_packed_370m_and_tie(tmp_path):
    # the formula-level size (the benchmark writes a real 370M file): tq1 + int8 embeddings
    import math

    from mulfree.engine.format import expected_specs
    from mulfree.models.mmfree import HGRNBitConfig

    def size(efmt):
        specs = expected_specs(HGRNBitConfig.from_name("370M"), "tq1", efmt)
        return sum(
            math.prod(s) * torch.empty(0, dtype=dt).element_size() for s, dt in specs.values()
        )

    V, D = 32000, 1024
    assert size("int4") <= 100e6  # 89.9 MB: the bound, with 4-bit embeddings
    # int8 (102.3 MB): V D code bytes + V steps; int4: V D / 2 code bytes + V D / 32 steps
    assert size("int8") - size("int4") == V * D // 2 - 4 * V * (D // 32 - 1)
    # tied embeddings: the head is packed from the embedding
    model = make_model(tie=True, seed=5)
    data = train_tiny(model, steps=40)
    model.requires_grad_(False)
    save_packed(model, tmp_path, embedding_format="float32")
    prompt = data[0, :6].tolist()
    assert_greedy_follows(full_logits(load_packed(tmp_path)), model, prompt)


def test_packed_from_pretrained_save_pretrained_round_trip(packed_dir, tmp_path):
    a = PackedHGRNBitForCausalLM.from_pretrained(packed_dir)
    a.save_pretrained(tmp_path, ternary_format="tq2")
    b = PackedHGRNBitForCausalLM.from_pretrained(tmp_path)
    assert a.embedding_format == b.embedding_format == "int8"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, atol=0, rtol=0)


def test_convert_official_style_bf16_checkpoint(tmp_path):
    """An official-style hgrn_bit dir: config.json + bf16 safetensors without mulfree metadata."""
    import json

    from safetensors.torch import save_file

    model = make_model(seed=6)
    src = tmp_path / "official"
    src.mkdir()
    cfg = model.config.to_dict()
    cfg.pop("elementwise_mul", None), cfg.pop("elementwise_mul_bits", None)  # not official fields
    (src / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}))
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    r = convert(str(src), str(tmp_path / "p"), ternary_format="tq2", embeddings="bfloat16",
                no_tokenizer=True)  # fmt: skip
    _, tensors, _ = read_packed(r.path)
    name = "model.layers.1.mlp.down_proj"
    m = model.get_submodule(name)
    q, s = weight_quant_ternary(sd[f"{name}.weight"].float())
    got = packing.unpack(tensors[f"{name}.weight_packed"], "tq2", m.out_features, m.in_features)
    torch.testing.assert_close(got, q, atol=0, rtol=0)
    torch.testing.assert_close(
        tensors["model.embeddings.weight"], sd["model.embeddings.weight"], atol=0, rtol=0
    )


@pytest.mark.parametrize("dim", [32, 50, 128])
def test_int4_embedding_codes_round_trip_and_lookup(dim):
    torch.manual_seed(dim)
    w = torch.randn(7, dim)
    w[3] = 0.0  # an all-zero row
    emb = Int4Embedding.from_float(w)
    codes, step = emb.weight_int4, emb.weight_step
    groups = -(-dim // 32)
    assert codes.shape == (7, 16 * groups) and step.shape == (7, groups)
    # codes are q + 8 with q in [-7, 7]; padding columns are zero codes (8)
    lo, hi = codes & 15, codes >> 4
    assert int(torch.minimum(lo, hi).min()) >= 1 and int(torch.maximum(lo, hi).max()) <= 15
    table = emb.dequantize()  # [7, dim]
    assert table.shape == (7, dim) and not table[3].any()
    bound = step.repeat_interleave(32, dim=1)[:, :dim] * 0.5001
    assert ((table - w).abs() <= bound).all()
    # values on the grid survive re-quantization exactly (idempotent)
    again = Int4Embedding.from_float(table)
    torch.testing.assert_close(again.dequantize(), table, atol=0, rtol=0)
    ids = torch.tensor([[6, 0, 3], [1, 1, 5]])
    torch.testing.assert_close(emb(ids), table[ids], atol=0, rtol=0)
    with pytest.raises(MulfreeError, match="out of range"):
        emb(torch.tensor([7]))


@pytest.mark.parametrize("same_norms", [False, True], ids=["own-norms", "fused-ifg"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_step_equals_torch_step(trained, same_norms, batch):
    """The compiled elementwise stages (csrc/mf_decode.c) against their spec, the torch ops of
    Decoder(fused=False). Tolerance: float rounding only (libm expf vs torch's vectorized exp,
    RMS sums in another order: ~1e-6 relative per stage); such a difference can move one int8
    activation by a step, which then shows as a larger logit change (as between the engine and
    the PyTorch model), so logits and states are compared through int8 (relative RMSE) and greedy tokens wherever
    the reference's top-2 gap is decidable (tests/_tolerances.py)."""
    if not kernels.available():
        pytest.skip("needs the compiled core")
    model, prompts = trained
    model = copy.deepcopy(model)
    if same_norms:
        with torch.no_grad():
            for layer in model.model.layers:
                a = layer.attn
                a.f_proj.norm.weight.copy_(a.i_proj.norm.weight)
                a.g_proj.norm.weight.copy_(a.i_proj.norm.weight)
    packed = PackedHGRNBitForCausalLM.from_model(model)
    fast, ref = Decoder(packed, fused=True), Decoder(packed, fused=False)
    assert fast.fused and not ref.fused and fast.fused_ifg == same_norms
    ids = torch.tensor([p[:4] for p in prompts[:2]] * 2)[:batch]  # [batch, 4]
    fast.reset(batch)
    ref.reset(batch)
    greedy_ref = []
    for t in range(8):
        tok = ids[:, t] if t < ids.shape[1] else torch.tensor(greedy_ref[-1])
        a, b = fast.step(tok).clone(), ref.step(tok).clone()
        assert_close_through_int8(a, b, what=f"step {t} logits: ")
        assert_argmax_agrees(a, b)
        greedy_ref.append(b.argmax(-1).tolist())
        for sa, sb in zip(fast.states, ref.states, strict=True):
            assert_close_through_int8(sa, sb, what=f"step {t} state: ")


def test_fused_step_needs_the_compiled_core(trained):
    packed = PackedHGRNBitForCausalLM.from_model(trained[0])
    assert not Decoder(packed, isa="torch").fused  # the torch path is the default there
    with pytest.raises(MulfreeError, match="compiled core"):
        Decoder(packed, isa="torch", fused=True)


def test_place_weights_keeps_outputs_and_fuses_ifg_as_a_view(trained):
    from mulfree.engine.modules import adjacent_weights

    model = copy.deepcopy(trained[0])
    with torch.no_grad():  # equal i/f/g input norms: the decoder fuses the three projections
        for layer in model.model.layers:
            a = layer.attn
            a.f_proj.norm.weight.copy_(a.i_proj.norm.weight)
            a.g_proj.norm.weight.copy_(a.i_proj.norm.weight)
    packed = PackedHGRNBitForCausalLM.from_model(model)
    ids = torch.tensor([trained[1][1]])
    before = packed(ids).logits
    old = {n: b.clone() for n, b in packed.named_buffers() if n.endswith("weight_packed")}
    place_weights_(packed)
    ptrs = {n: b.data_ptr() for n, b in packed.named_buffers() if n.endswith("weight_packed")}
    for n, b in packed.named_buffers():
        if n.endswith("weight_packed"):
            torch.testing.assert_close(b, old[n], atol=0, rtol=0)
    torch.testing.assert_close(packed(ids).logits, before, atol=0, rtol=0)
    place_weights_(packed)  # already placed: nothing moves
    assert ptrs == {n: b.data_ptr() for n, b in packed.named_buffers() if n in ptrs}

    a = packed.model.layers[0].attn
    view = adjacent_weights([a.i_proj, a.f_proj, a.g_proj])
    assert view is not None and view.data_ptr() == a.i_proj.weight_packed.data_ptr()
    assert adjacent_weights([a.i_proj, a.g_proj]) is None  # not back to back
    assert adjacent_weights([BitLinear(4, 4)]) is None  # not in an arena
    dec = Decoder(packed)
    assert dec.fused_ifg and dec.layers[0].ifg.data.data_ptr() == view.data_ptr()
    fused = packing.fuse_rows([m.packed() for m in (a.i_proj, a.f_proj, a.g_proj)])
    torch.testing.assert_close(dec.layers[0].ifg.data, fused[0], atol=0, rtol=0)
    torch.testing.assert_close(dec.layers[0].ifg.row_scales, fused[1], atol=0, rtol=0)


def test_load_packed_places_weights_and_copies_do_not_share_them(packed_dir, tmp_path):
    from mulfree.engine.modules import _arena_range, adjacent_weights

    model = load_packed(packed_dir)
    layers = [m for m in model.modules() if isinstance(m, PackedBitLinear)]
    where = [_arena_range(m) for m in layers]
    assert where and all(w is not None and w[0] is where[0][0] for w in where)
    a = model.model.layers[0].attn
    assert adjacent_weights([a.i_proj, a.f_proj, a.g_proj]) is not None
    # a deep copy has its own tensors: not "in the arena", so never read through it
    twin = copy.deepcopy(model)
    b = twin.model.layers[0].attn
    assert _arena_range(b.i_proj) is None and adjacent_weights([b.i_proj, b.f_proj]) is None
    torch.testing.assert_close(b.i_proj.weight_packed, a.i_proj.weight_packed, atol=0, rtol=0)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(twin(ids).logits, model(ids).logits, atol=0, rtol=0)
    place_weights_(twin)  # its own arena now
    assert _arena_range(b.i_proj)[0] is not where[0][0]
    twin.save_pretrained(str(tmp_path / "twin"))  # safetensors: placed tensors are not shared


def test_step_energy_prices_the_step_and_its_dense_fp32_counterpart(packed_dir):
    from mulfree.energy.tables import DEFAULT_TABLE, EnergyTable, price

    packed = load_packed(packed_dir)
    dec = packed.fused_decoder()
    dec.prefill([[1, 2]])
    states = [s.clone() for s in dec.states]
    e = dec.step_energy([3])
    for s, before in zip(dec.states, states, strict=True):  # the decoder's state is untouched
        torch.testing.assert_close(s, before, atol=0, rtol=0)
    counted = {}
    for dense in (False, True):
        dec._dense_fp32 = dense
        with energy.EnergyCounter(packed) as c:
            dec.step([3])
        counted[dense] = c
        for s, before in zip(dec.states, states, strict=True):
            s.copy_(before)
    dec._dense_fp32 = False
    tab = EnergyTable.load(DEFAULT_TABLE)
    assert e.table == tab.name
    assert e.total_pj == price(counted[False].counts, counted[False].bytes, tab)["total_pJ"]
    assert e.dense_fp32_pj == price(counted[True].counts, counted[True].bytes, tab)["total_pJ"]
    assert e.saving > 1
    # the counterfactual swaps each projection's packed bytes for 4 bytes per weight, its
    # add/sub for K multiplies and K - 1 adds per output; everything else is the same step
    lins = [lin for L in dec.layers for lin in (L.i, L.f, L.g, L.o, L.gate, L.down)]
    lins.append(dec.head)
    nk = sum(lin.out_features * lin.in_features for lin in lins)
    packed_bytes = sum(lin.data.numel() for lin in lins)
    assert not dec.fused_ifg  # own norms: i/f/g are three calls, as listed above
    t, d = counted[False], counted[True]
    assert d.bytes["weight_read"] - t.bytes["weight_read"] == 4 * nk - packed_bytes
    assert d.counts[("ternary_add", 32)] == 0 and t.counts[("ternary_add", 32)] > 0
    n_out = sum(lin.out_features for lin in lins)
    assert d.counts[("fp_add", 32)] - t.counts[("fp_add", 32)] == nk - n_out
    # counting twice gives the same numbers (the one-off nnz count is not part of the step)
    assert dec.step_energy([3]) == e


def test_place_weights_keeps_shared_weights_shared_and_survives_pickling():
    import pickle

    from mulfree.ternary.packed_linear import PackedTernaryLinear

    first = PackedTernaryLinear.from_float(torch.randn(64, 48), bias=None)
    second = PackedTernaryLinear.from_float(torch.randn(32, 48), bias=None)
    second.weight_packed = first.weight_packed  # tied, as a model may tie two projections
    second.out_features = 64
    model = torch.nn.Sequential(first, second)
    x = torch.randn(2, 48)
    before = model[1](x)
    place_weights_(model)
    assert model[0].weight_packed is model[1].weight_packed
    torch.testing.assert_close(model[1](x), before, atol=0, rtol=0)
    back = pickle.loads(pickle.dumps(model))  # the arena does not travel; the tensors do
    assert back[0]._mf_arena[0] is None
    torch.testing.assert_close(back[1](x), before, atol=0, rtol=0)


def test_step_energy_in_lmul_mode_prices_the_step_and_keeps_the_cache(packed_dir):
    model = load_packed(packed_dir)
    model.set_elementwise_mul("lmul", mantissa_bits=3)
    dec = model.fused_decoder()
    dec.prefill([[1, 2, 3]])
    want = dec.step([4]).clone()
    dec.reset(1)
    dec.prefill([[1, 2, 3]])
    e = dec.step_energy([4])  # counted through the model's forward (its cache), then undone
    assert e.dense_fp32_pj is None and e.saving is None and e.total_pj > e.memory_pj > 0
    torch.testing.assert_close(dec.step([4]), want, atol=0, rtol=0)


def test_decoder_built_under_inference_mode(trained):
    # a server builds its decoder on its first step, inside inference_mode: the placed weights
    # must stay ordinary tensors (the packed layers read their version counters afterwards)
    packed = PackedHGRNBitForCausalLM.from_model(trained[0])
    ids = torch.tensor([trained[1][1]])
    want = packed(ids).logits
    with torch.inference_mode():
        dec = Decoder(packed)
        dec.step([3])
    assert not any(b.is_inference() for b in packed.buffers())
    torch.testing.assert_close(packed(ids).logits, want, atol=0, rtol=0)


def _spy_decoder_steps(monkeypatch):
    calls = []
    real = Decoder.step

    def spy(self, ids):
        calls.append(len(ids))
        return real(self, ids)

    monkeypatch.setattr(Decoder, "step", spy)
    return calls


def test_hf_cached_step_runs_the_fused_decoder(trained, monkeypatch):
    from mulfree.models.mmfree import HGRNBitCache

    packed = PackedHGRNBitForCausalLM.from_model(trained[0])
    prompt = trained[1][1]
    calls = _spy_decoder_steps(monkeypatch)

    def run(fast: bool):
        cache = HGRNBitCache(packed.config)
        with torch.no_grad():
            out = packed(torch.tensor([prompt]), **cache_kwargs(cache), use_cache=True)
            rows = [out.logits[0, -1]]
            for tok in (5, 17, 42):
                if fast:
                    out = packed(torch.tensor([[tok]]), **cache_kwargs(cache), use_cache=True)
                else:  # asking for hidden states: the modules' forward runs
                    out = packed(torch.tensor([[tok]]), **cache_kwargs(cache), use_cache=True,
                                 output_hidden_states=True)  # fmt: skip
                rows.append(out.logits[0, -1])
        return torch.stack(rows), cache

    fast, cache_fast = run(True)
    assert len(calls) == 3 and cache_fast.get_seq_length() == len(prompt) + 3
    slow, cache_slow = run(False)
    assert len(calls) == 3  # output_hidden_states: the modules ran
    # fused norms / exp round differently from the modules (mulfree.engine.decode): compared
    # through int8, greedy tokens where decidable (tests/_tolerances.py); the states likewise
    assert_close_through_int8(fast, slow)
    assert_argmax_agrees(fast, slow)
    for a, b in zip(cache_fast.layers, cache_slow.layers, strict=True):
        assert_close_through_int8(a.recurrent_states[0], b.recurrent_states[0])
    # a step whose token is masked out runs the modules
    cache = HGRNBitCache(packed.config)
    with torch.no_grad():
        packed(torch.tensor([prompt]), **cache_kwargs(cache), use_cache=True)
        packed(torch.tensor([[5]]), attention_mask=torch.tensor([[0]]), **cache_kwargs(cache))
    assert len(calls) == 3
    # a step while energy is counted runs the fused decoder too (its calls as custom ops the
    # counter prices): the same logits and state, bit for bit, as the step uncounted
    twin = copy.deepcopy(cache)
    with torch.no_grad():
        want = packed(torch.tensor([[5]]), **cache_kwargs(twin), use_cache=True).logits
        with energy.EnergyCounter(packed) as c:
            got = packed(torch.tensor([[5]]), **cache_kwargs(cache), use_cache=True).logits
    assert len(calls) == 5 and c.counts[("ternary_add", 32)] > 0
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    for a, b in zip(cache.layers, twin.layers, strict=True):
        torch.testing.assert_close(a.recurrent_states[0], b.recurrent_states[0], atol=0, rtol=0)


def test_hf_generate_batched_left_padded_equals_single_rows(trained, monkeypatch):
    packed = PackedHGRNBitForCausalLM.from_model(trained[0])
    calls = _spy_decoder_steps(monkeypatch)
    a, b = trained[1][0], trained[1][2]
    pad = len(a) - len(b)
    assert pad > 0
    ids = torch.tensor([a, [0] * pad + b])
    mask = torch.tensor([[1] * len(a), [0] * pad + [1] * len(b)])
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    both = packed.generate(ids, attention_mask=mask, **kw)
    assert calls and calls[0] == 2  # the batch's steps ran on the fused decoder
    one_a = packed.generate(torch.tensor([a]), **kw)[0, len(a) :]
    one_b = packed.generate(torch.tensor([b]), **kw)[0, len(b) :]
    assert both[0, len(a) :].tolist() == one_a.tolist()
    assert both[1, len(a) :].tolist() == one_b.tolist()


def test_hf_generate_leaves_the_users_decoder_alone(packed_dir):
    packed = load_packed(packed_dir)
    dec = packed.fused_decoder()
    dec.prefill([[1, 2, 3]])
    states = [s.clone() for s in dec.states]
    packed.generate(torch.tensor([[7, 8], [9, 10]]), max_new_tokens=4, do_sample=False)
    assert dec.batch == 1
    for s, before in zip(dec.states, states, strict=True):
        torch.testing.assert_close(s, before, atol=0, rtol=0)


def test_hf_prompt_runs_the_fused_prefill(trained, monkeypatch):
    """HF generate's prompt (a fresh cache, the last position's logits) goes through the fused
    prefill, left-padded rows as their real tokens: the tokens are those of the engine's own
    greedy loop (prefill, then steps), and the cache's states those of stepping each row. A
    mask with a hole, a request for every position's logits, or hidden states run the modules."""
    from mulfree.models.mmfree import HGRNBitCache

    packed = PackedHGRNBitForCausalLM.from_model(trained[0])
    prompts = []
    real = Decoder.prefill
    monkeypatch.setattr(Decoder, "prefill", lambda self, ids: prompts.append(ids) or real(self, ids))
    a, b = trained[1][1], trained[1][2]
    pad = len(a) - len(b)
    assert pad > 0
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = packed.generate(torch.tensor([a, [0] * pad + b]),
                          attention_mask=torch.tensor([[1] * len(a), [0] * pad + [1] * len(b)]), **kw)  # fmt: skip
    assert prompts == [[a, b]]  # one prefill, the padding dropped
    for row, p in zip(out, (a, b), strict=True):
        assert row[len(a) :].tolist() == engine_greedy(packed, p, n=6)
    prompts.clear()

    def forward(ids, **extra):
        cache = HGRNBitCache(packed.config)
        with torch.no_grad():
            o = packed(torch.tensor(ids), **cache_kwargs(cache), use_cache=True, **extra)
        return o, cache

    fast, cache = forward([a], logits_to_keep=1)
    assert len(prompts) == 1 and fast.logits.shape == (1, 1, packed.config.vocab_size)
    assert cache.get_seq_length() == len(a)
    one = Decoder(packed)
    for tok in a:
        want = one.step([tok])[0]
    assert torch.equal(fast.logits[0, -1], want)
    for layer, s in zip(cache.layers, one.states, strict=True):
        assert torch.equal(layer.recurrent_states[0], s)
    slow, slow_cache = forward([a], logits_to_keep=1, output_hidden_states=True)
    assert len(prompts) == 1  # hidden states: the modules ran
    assert_close_through_int8(fast.logits, slow.logits)
    for x, y in zip(cache.layers, slow_cache.layers, strict=True):
        assert_close_through_int8(x.recurrent_states[0], y.recurrent_states[0])
    forward([a])  # every position's logits
    forward([a], logits_to_keep=1, attention_mask=torch.tensor([[1, 0] + [1] * (len(a) - 2)]))
    assert len(prompts) == 1
