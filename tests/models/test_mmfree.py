"""MatMul-free LM (hgrn_bit): official-checkpoint loading, cached generation, naive vs fast
recurrence, save/load round trip, presets, and one-line errors on bad inputs."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tests._tolerances import EXACT, F64, F64_GRAD, assert_close_through_int8
from transformers import AutoConfig, AutoModelForCausalLM

import mulfree  # noqa: F401  (registers hgrn_bit with the Auto classes)
from mulfree.errors import MulfreeError
from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM, load_causal_lm
from mulfree.models.hf_compat import cache_kwargs, output_cache
from mulfree.models.mmfree.modeling_mmfree import HGRNBitCache

# Tolerances (tests/_tolerances.py): equivalence tests (cache vs full forward, scan vs loop) run
# the model in float64, where rounding differences (~1e-15) never reach an int8 rounding boundary,
# so results agree tightly and a real bug (a state off by one step) cannot hide; float32 runs
# through the int8 quantizer are compared by relative RMSE, never by an atol that a rounding flip
# on another CPU could exceed.

# A tiny shape in the official format: d 64, 3 layers, I = 256 * ceil(int(64*4*2/3) / 256) = 256.
D, L, V, I = 64, 3, 97, 256


def official_config_dict(**over):
    """config.json as the official code writes it (fields of the official HGRNBitConfig)."""
    cfg = {
        "architectures": ["HGRNBitForCausalLM"],
        "attn_mode": "fused_recurrent",
        "bos_token_id": 1,
        "conv_size": 4,
        "eos_token_id": 2,
        "expand_ratio": 1,
        "fuse_cross_entropy": True,
        "hidden_act": "swish",
        "hidden_ratio": 4,
        "hidden_size": D,
        "initializer_range": 0.02,
        "intermediate_size": None,
        "max_position_embeddings": 2048,
        "model_type": "hgrn_bit",
        "num_heads": 1,
        "num_hidden_layers": L,
        "rms_norm_eps": 1e-06,
        "share_conv_kernel": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.40.2",
        "use_cache": True,
        "use_lower_bound": True,
        "use_short_conv": False,
        "vocab_size": V,
    }
    cfg.update(over)
    return cfg


def official_state_dict(seed=0):
    """Random tensors under the official key names and shapes (written out, not taken from our model)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    def norm(n):
        return 1 + 0.2 * torch.randn(n, generator=g)

    sd = {
        "model.embeddings.weight": w(V, D, std=1.0),
        "model.lower_bounds": w(L, D, std=1.0),
        "model.norm.weight": norm(D),
        "lm_head.weight": w(V, D),
        "lm_head.norm.weight": norm(D),
    }
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "attn_norm.weight"] = norm(D)
        for proj in "ifgo":
            sd[p + f"attn.{proj}_proj.weight"] = w(D, D)
            sd[p + f"attn.{proj}_proj.norm.weight"] = norm(D)
        sd[p + "attn.g_norm.weight"] = norm(D)
        sd[p + "mlp_norm.weight"] = norm(D)
        sd[p + "mlp.gate_proj.weight"] = w(2 * I, D)
        sd[p + "mlp.gate_proj.norm.weight"] = norm(D)
        sd[p + "mlp.down_proj.weight"] = w(D, I)
        sd[p + "mlp.down_proj.norm.weight"] = norm(I)
    return sd


def reference_forward(sd, ids, eps=1e-6):
    """The official hgrn_bit forward, written from the spec with a plain time loop."""

    def rms(x, weight, e):
        rstd = 1 / torch.sqrt(x.square().mean(-1, keepdim=True) + e)
        return x * rstd * weight

    def bitlinear(x, prefix):
        xn = rms(x, sd[prefix + ".norm.weight"], 1e-8)
        s = 127.0 / xn.abs().amax(-1, keepdim=True).clamp_min(1e-5)
        xq = (xn * s).round().clamp(-128, 127) / s
        wt = sd[prefix + ".weight"]
        sw = 1.0 / wt.abs().mean().clamp_min(1e-5)
        return F.linear(xq, (wt * sw).round().clamp(-1, 1) / sw)

    use_lb = "model.lower_bounds" in sd
    if use_lb:
        lb = sd["model.lower_bounds"].softmax(0)
        lb = lb.cumsum(0) - lb[0]
    x = sd["model.embeddings.weight"][ids]
    for li in range(L):
        p = f"model.layers.{li}."
        r = x
        h_in = rms(x, sd[p + "attn_norm.weight"], eps)
        f = bitlinear(h_in, p + "attn.f_proj").sigmoid()
        if use_lb and li > 0:
            f = lb[li] + (1 - lb[li]) * f
        i = F.silu(bitlinear(h_in, p + "attn.i_proj")) * (1 - f)
        h = torch.zeros(ids.shape[0], D, dtype=x.dtype)
        hs = []
        for t in range(ids.shape[1]):
            h = f[:, t] * h + i[:, t]
            hs.append(h)
        o = torch.stack(hs, 1)
        gated = rms(bitlinear(h_in, p + "attn.g_proj"), sd[p + "attn.g_norm.weight"], eps) * F.silu(
            o
        )
        r = bitlinear(gated, p + "attn.o_proj") + r
        u = rms(r, sd[p + "mlp_norm.weight"], eps)
        gate, up = bitlinear(u, p + "mlp.gate_proj").chunk(2, -1)
        x = r + bitlinear(F.silu(gate) * up, p + "mlp.down_proj")
    x = rms(x, sd["model.norm.weight"], eps)
    return bitlinear(x, "lm_head")


def write_checkpoint(path, sd, cfg):
    path.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    return write_checkpoint(
        tmp_path_factory.mktemp("official"), official_state_dict(), official_config_dict()
    )


def tiny_model(seed=0, dtype=torch.float64, **over):
    torch.manual_seed(seed)
    cfg = HGRNBitConfig(**{**dict(vocab_size=V, hidden_size=D, num_hidden_layers=L), **over})
    return HGRNBitForCausalLM(cfg).to(dtype).eval()


# --- official checkpoint --------------------------------------------------------------------


def test_official_checkpoint_loads_through_auto_and_matches_reference(official_dir):
    model = AutoModelForCausalLM.from_pretrained(official_dir)
    assert isinstance(model, HGRNBitForCausalLM)
    assert model.config.model_type == "hgrn_bit" and model.config.mlp_intermediate_size == I
    sd = official_state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    ids = torch.randint(0, V, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_forward(sd, ids)
        # The spec loop inside the model: same float32 operations in the same order -> identical.
        model.config.attn_mode = "naive"
        for layer in model.model.layers:
            layer.attn.mode = "naive"
        torch.testing.assert_close(model(ids).logits, ref, **EXACT.kw())
        # The chunked scan (the default) re-associates the recurrence's sums: compared in
        # float64, where that cannot flip an int8 activation code (tests/_tolerances.py).
        model.double()
        for layer in model.model.layers:
            layer.attn.mode = "fused_recurrent"
        ref64 = reference_forward({k: v.double() for k, v in sd.items()}, ids)
        torch.testing.assert_close(model(ids).logits, ref64, **F64.kw())


def test_official_variant_without_lower_bounds_and_with_heads(tmp_path):
    # use_lower_bound=False drops `model.lower_bounds`; num_heads only groups channels of an
    # elementwise recurrence, so it changes nothing numerically.
    sd = official_state_dict(seed=3)
    del sd["model.lower_bounds"]
    d = write_checkpoint(
        tmp_path / "ckpt", sd, official_config_dict(use_lower_bound=False, num_heads=4)
    )
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.model.lower_bounds is None and "model.lower_bounds" not in model.state_dict()
    ids = torch.randint(0, V, (1, 21), generator=torch.Generator().manual_seed(3))
    for layer in model.model.layers:
        layer.attn.mode = "naive"
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference_forward(sd, ids), **EXACT.kw())


def test_load_causal_lm_helper_loads_official_dir(official_dir):
    model = load_causal_lm(official_dir)
    assert isinstance(model, HGRNBitForCausalLM)
    assert torch.equal(model.lm_head.norm.weight, official_state_dict()["lm_head.norm.weight"])


# --- generation with the recurrent cache ----------------------------------------------------


def test_token_by_token_with_cache_equals_full_forward():
    model = tiny_model()
    ids = torch.randint(0, V, (2, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = HGRNBitCache(model.config)
        out = model(ids[:, :9], **cache_kwargs(cache), use_cache=True)  # prefill 9 tokens
        steps = [out.logits]
        for t in range(9, ids.shape[1]):
            out = model(ids[:, t : t + 1], **cache_kwargs(output_cache(out)), use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, **F64.kw())
    assert cache.get_seq_length() == ids.shape[1]
    # Constant memory: one [batch, hidden] float32 state per layer, whatever the length.
    states = [layer.recurrent_states[0] for layer in cache.layers]
    assert len(states) == L and all(s.shape == (2, D) for s in states)


def test_float32_cache_state_is_float32_and_decode_tracks_full_forward():
    model = tiny_model(dtype=torch.float32)
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :6], use_cache=True)
        steps = [out.logits]
        for t in range(6, 12):
            out = model(ids[:, t : t + 1], **cache_kwargs(output_cache(out)), use_cache=True)
            steps.append(out.logits)
    assert all(
        layer.recurrent_states[0].dtype == torch.float32 for layer in output_cache(out).layers
    )
    assert_close_through_int8(torch.cat(steps, 1), full)


def test_generate_greedy_equals_argmax_of_full_forward():
    model = tiny_model(seed=3)
    prompt = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False
        )
        assert out.shape == (2, 15)
        logits = model(out, use_cache=False).logits
    assert torch.equal(logits[:, 6:-1].argmax(-1), out[:, 7:])


def test_beam_search_with_cache_equals_without():
    # Beam search reorders the recurrent states between steps (Cache.reorder_cache).
    model = tiny_model(seed=10)
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(10))
    kw = dict(
        attention_mask=torch.ones_like(prompt), max_new_tokens=6, num_beams=3, do_sample=False
    )
    with torch.no_grad():
        cached = model.generate(prompt, **kw)
        uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_left_padding_does_not_change_real_tokens():
    model = tiny_model(seed=4)
    seq = torch.randint(3, V, (1, 11), generator=torch.Generator().manual_seed(4))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 11, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(seq).logits
        with_pad = model(padded, attention_mask=mask).logits[:, 5:]
        gen_alone = model.generate(
            seq, attention_mask=torch.ones_like(seq), max_new_tokens=5, do_sample=False
        )
        gen_pad = model.generate(
            padded, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0
        )
    torch.testing.assert_close(with_pad, alone, **F64.kw())
    assert torch.equal(gen_pad[:, 5:], gen_alone)


# --- naive vs fast recurrence in the model --------------------------------------------------


def test_naive_and_chunk_modes_agree_on_logits_and_grads():
    fast = tiny_model(seed=5).train()
    naive = tiny_model(seed=5, attn_mode="naive").train()
    naive.load_state_dict(fast.state_dict())
    ids = torch.randint(0, V, (2, 63), generator=torch.Generator().manual_seed(5))
    out_f = fast(ids, labels=ids)
    out_n = naive(ids, labels=ids)
    torch.testing.assert_close(out_f.logits, out_n.logits, **F64.kw())
    out_f.loss.backward()
    out_n.loss.backward()
    for (name, pf), (_, pn) in zip(fast.named_parameters(), naive.named_parameters(), strict=True):
        torch.testing.assert_close(
            pf.grad, pn.grad, **F64_GRAD.kw(), msg=lambda m, n=name: f"{n}: {m}"
        )


def test_loss_is_shifted_cross_entropy_and_every_param_gets_grad():
    model = tiny_model(seed=6, dtype=torch.float32).train()
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(6))
    out = model(ids, labels=ids)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)
    out.loss.backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert no_grad == []


def test_gradient_checkpointing_gives_same_grads():
    a = tiny_model(seed=7).train()
    b = tiny_model(seed=7).train()
    # transformers >= 5.2x calls it activation checkpointing; 5.14 only knows the older name
    enable = getattr(b, "activation_checkpointing_enable", None) or b.gradient_checkpointing_enable
    enable()
    assert all(layer.gradient_checkpointing for layer in b.model.layers)
    ids = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(7))
    a(ids, labels=ids).loss.backward()
    b(ids, labels=ids).loss.backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0, msg=lambda m, n=n: f"{n}: {m}")


# --- save / load ----------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model(seed=8)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(
        f.endswith((".bin", ".pt", ".pkl")) for f in files
    )
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "hgrn_bit"
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(model.state_dict())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["mulfree_format"] == "mulfree.hgrn_bit" and meta["mulfree_format_version"] == "1"
    assert json.loads(meta["config"])["hidden_size"] == D and meta["format"] == "pt"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, **EXACT.kw())
    assert loaded.config.to_dict()["hidden_size"] == D


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny_model(seed=9, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embeddings.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


# --- config and presets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,d,layers,inter,approx_params",
    [
        ("370M", 1024, 24, 2816, 374e6),
        ("1.3B", 2048, 24, 5632, 1.34e9),
        ("2.7B", 2560, 32, 6912, 2.70e9),
        ("tiny", 128, 4, 512, 2.1e6),
    ],
)
def test_presets_have_released_shapes(name, d, layers, inter, approx_params):
    cfg = HGRNBitConfig.from_name(name)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.mlp_intermediate_size) == (d, layers, inter)
    with torch.device("meta"):
        n = sum(p.numel() for p in HGRNBitForCausalLM(cfg).parameters())
    assert abs(n - approx_params) / approx_params < 0.02


def test_config_round_trips_through_auto_config(tmp_path):
    cfg = HGRNBitConfig.from_name("tiny", vocab_size=500)
    cfg.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, HGRNBitConfig)
    assert (again.vocab_size, again.hidden_size, again.layer_types) == (
        500,
        128,
        ["linear_attention"] * 4,
    )


# --- bad inputs -> one clear line -----------------------------------------------------------


def one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_missing_tensor_is_named(tmp_path):
    sd = official_state_dict()
    del sd["model.layers.1.attn.g_norm.weight"]
    d = write_checkpoint(tmp_path / "ckpt", sd, official_config_dict())
    with pytest.raises(MulfreeError) as e:
        AutoModelForCausalLM.from_pretrained(d)
    assert "missing tensors: model.layers.1.attn.g_norm.weight" in one_line(e)


def test_wrong_shape_is_named(tmp_path):
    sd = official_state_dict()
    sd["model.layers.2.mlp.down_proj.weight"] = torch.zeros(D, I + 1)
    d = write_checkpoint(tmp_path / "ckpt", sd, official_config_dict())
    with pytest.raises(MulfreeError) as e:
        load_causal_lm(d)
    assert (
        "model.layers.2.mlp.down_proj.weight: checkpoint (64, 257) vs model (64, 256)"
        in one_line(e)
    )


def test_unexpected_tensor_is_named(tmp_path):
    sd = official_state_dict()
    sd["model.layers.0.attn.h_conv1d.weight"] = torch.zeros(D, 1, 4)
    d = write_checkpoint(tmp_path / "ckpt", sd, official_config_dict())
    with pytest.raises(MulfreeError) as e:
        AutoModelForCausalLM.from_pretrained(d)
    assert "unexpected tensors: model.layers.0.attn.h_conv1d.weight" in one_line(e)


def test_newer_format_version_is_refused(tmp_path):
    sd = official_state_dict()
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file(
        sd,
        str(d / "model.safetensors"),
        metadata={
            "format": "pt",
            "mulfree_format": "mulfree.hgrn_bit",
            "mulfree_format_version": "99",
        },
    )
    (d / "config.json").write_text(json.dumps(official_config_dict()))
    with pytest.raises(MulfreeError) as e:
        load_causal_lm(d)
    assert "format version 99" in one_line(e)


def test_unknown_model_type(tmp_path):
    d = write_checkpoint(
        tmp_path / "ckpt", official_state_dict(), official_config_dict(model_type="not_a_model")
    )
    with pytest.raises(MulfreeError) as e:
        load_causal_lm(d)
    assert "unknown model_type 'not_a_model'" in one_line(e)
    # Through transformers directly it is transformers' own error.
    with pytest.raises(ValueError, match="not_a_model"):
        AutoModelForCausalLM.from_pretrained(d)


@pytest.mark.parametrize(
    "setup,expected",
    [
        pytest.param(lambda p: None, "model directory not found", id="no-dir"),
        pytest.param(lambda p: p.mkdir(), "no config.json", id="no-config"),
        pytest.param(
            lambda p: (p.mkdir(), (p / "config.json").write_text("{oops")),
            "cannot read",
            id="bad-json",
        ),
        pytest.param(
            lambda p: (
                p.mkdir(),
                (p / "config.json").write_text(json.dumps(official_config_dict())),
            ),
            "no .safetensors weights",
            id="no-weights",
        ),
    ],
)
def test_bad_directories(tmp_path, setup, expected):
    d = tmp_path / "ckpt"
    setup(d)
    with pytest.raises(MulfreeError) as e:
        load_causal_lm(d)
    assert expected in one_line(e)


@pytest.mark.parametrize(
    "over,expected",
    [
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"attn_mode": "chunkz"}, "attn_mode must be one of"),
        ({"use_short_conv": True}, "use_short_conv=True is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act must be one of"),
        ({"pad_token_id": 10_000}, "outside the vocabulary"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_bad_config_values(over, expected):
    with pytest.raises(MulfreeError) as e:
        HGRNBitConfig(**{**dict(vocab_size=V, hidden_size=D, num_hidden_layers=L), **over})
    assert expected in one_line(e)


def test_bad_config_in_checkpoint_dir(tmp_path):
    d = write_checkpoint(
        tmp_path / "ckpt", official_state_dict(), official_config_dict(num_heads=5)
    )
    with pytest.raises(MulfreeError) as e:
        load_causal_lm(d)
    assert "divisible by num_heads" in one_line(e)


def test_unknown_preset():
    with pytest.raises(MulfreeError) as e:
        HGRNBitConfig.from_name("7B")
    assert "unknown MatMul-free preset '7B'" in one_line(e)


def test_bad_forward_inputs():
    model = tiny_model()
    with pytest.raises(MulfreeError) as e:
        model(torch.zeros(5, dtype=torch.long))
    assert "input_ids must be [batch, seq]" in one_line(e)
    with pytest.raises(MulfreeError) as e:
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 1, 4, 4))
    assert "2D [batch, seq] attention_mask" in one_line(e)
    from transformers import DynamicCache

    with pytest.raises(MulfreeError) as e:
        model(torch.zeros(1, 4, dtype=torch.long), **cache_kwargs(DynamicCache()), use_cache=True)
    assert "recurrent-state cache" in one_line(e)


def test_bfloat16_model_runs_with_float32_state():
    model = tiny_model(seed=11, dtype=torch.bfloat16)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        ref = tiny_model(seed=11, dtype=torch.float32)(ids).logits
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    assert all(
        layer.recurrent_states[0].dtype == torch.float32 for layer in output_cache(out).layers
    )
    # In bf16 (8 significant bits) x * scale is rounded before the int8 rounding, as in the
    # official code, so many activations move by a quantization level; the logits still point
    # the same way as float32's (cosine 0.97 here; 0.9 leaves margin).
    cos = F.cosine_similarity(out.logits.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.9


def test_cached_generate_logs_no_deprecation_with_the_installed_transformers():
    """transformers 5.24 renamed the cache argument; our model and callers use the installed
    release's name (mulfree.models.hf_compat), so generate() logs no deprecation warning and its
    cached greedy tokens equal the uncached ones."""
    import logging

    from transformers.utils import logging as hf_logging

    logging.Logger.warning_once.cache_clear()  # warnings already given once would hide it
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        model = tiny_model(seed=3).eval()
        ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True,
                                    pad_token_id=0)  # fmt: skip
            full = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False,
                                  pad_token_id=0)  # fmt: skip
            out = model(ids, **cache_kwargs(HGRNBitCache(model.config)), use_cache=True)
            assert isinstance(output_cache(out), HGRNBitCache)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "deprecated" in r.getMessage()]
    assert torch.equal(cached, full)
