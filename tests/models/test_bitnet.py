"""BitNet b1.58 in the official layout: our reading of tiny random checkpoints (made here, in the
layout microsoft/bitnet-b1.58-2B-4T ships) against transformers' own BitNetForCausalLM.

Why the comparisons are exact where they are: for a packed ("bitlinear") checkpoint both sides
quantize activations with the same float32 formula (127 / absmax, round half even, clamp),
accumulate integer products exactly (|acc| < 2^24) and rescale with acc / (s_x * weight_scale)
(transformers' order is weight_scale * s_x: the same float32 product); everything else is
transformers' own module code on both sides. So logits are bit-equal, by construction. The
autobitlinear variants (offline ternary values, online master weights) fake-quantize to floats
and multiply, so their sums round differently than our exact-integer path: those are checked
layer by layer (one quantizer, the bound of mulfree.ternary.packed_linear) and by an exact chain
through the packed variant, never end to end through several int8 quantizers (habit 16).
"""

import os

import pytest
import torch

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitLinear calls torch.compile

from mulfree.engine.bitnet_model import from_checkpoint  # noqa: E402
from mulfree.errors import MulfreeError  # noqa: E402
from mulfree.models.bitnet import BitNetCheckpoint, pack_official, unpack_official  # noqa: E402
from mulfree.models.bitnet.synthetic import TINY, write_random_checkpoint  # noqa: E402

pytest.importorskip("accelerate")  # transformers' bitnet quantizer needs it to load
IDS = torch.tensor([[1, 5, 7, 9, 33, 100, 7, 8, 250, 3, 61]])


def hf_model(path):
    """transformers' own model of a checkpoint, float32 (its offline autobitlinear weights are
    left in the checkpoint dtype by from_pretrained: cast as a plain module)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m = torch.nn.Module.to(m, torch.float32).eval()
    m.config._attn_implementation = "eager"
    return m


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bitnet")
    return {v: write_random_checkpoint(root / v, variant=v, seed=3)
            for v in ("packed", "master", "autobitlinear", "llama")}  # fmt: skip


@pytest.mark.parametrize("n,k", [(4, 1), (36, 7), (128, 65)], ids=lambda v: str(v))
def test_official_packing_is_transformers_order(n, k):
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    q = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    packed = pack_official(q)
    torch.testing.assert_close(packed, pack_weights(q.clone()), atol=0, rtol=0)
    torch.testing.assert_close(unpack_official(packed), q, atol=0, rtol=0)
    ref = unpack_weights.__wrapped__ if hasattr(unpack_weights, "__wrapped__") else unpack_weights
    torch.testing.assert_close(ref(packed, torch.int8), q, atol=0, rtol=0)


def test_code_3_is_refused():
    with pytest.raises(MulfreeError, match="code 3"):
        unpack_official(torch.full((2, 3), 0xFF, dtype=torch.uint8))


@pytest.mark.parametrize("variant", ["packed", "llama"])
def test_packed_logits_equal_transformers(ckpts, variant):
    ref = hf_model(ckpts[variant])
    ours = from_checkpoint(ckpts[variant])
    with torch.no_grad():
        want = ref(IDS).logits
        got = ours(IDS).logits
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # greedy continuation through transformers' generate on both models
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours.generate(IDS[:, :4], **kw).tolist() == ref.generate(IDS[:, :4], **kw).tolist()


@pytest.mark.parametrize("variant", ["master", "autobitlinear"])
def test_autobitlinear_codes_and_scales_match(ckpts, variant):
    """The ternary codes and scale we read are those transformers computes with: online, its
    WeightQuant (absmean in float32) of the master weights, bit for bit; offline, the stored
    ternary values with w = q * weight_scale."""
    from transformers.integrations.bitnet import WeightQuant

    ref = hf_model(ckpts[variant])
    ck = BitNetCheckpoint(ckpts[variant])
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj"):
        q, scale = ck.ternary(name)
        mod = ref.get_submodule(name)
        if variant == "master":
            want = WeightQuant.forward(None, mod.weight.detach())  # q / scale, float32
            torch.testing.assert_close(q.float() / scale, want, atol=0, rtol=0)
        else:
            torch.testing.assert_close(q.float(), mod.weight.detach(), atol=0, rtol=0)
            torch.testing.assert_close(
                1.0 / scale, mod.weight_scale.float()[0], atol=0, rtol=2**-23
            )


@pytest.mark.parametrize("variant", ["master", "autobitlinear"])
def test_autobitlinear_projection_within_bound(ckpts, variant):
    """One projection on the same input: our exact-integer path vs transformers' fake-quant
    F.linear differ only by float32 rounding of its K products and sum, and of our rescale:
    |y - y_ref| <= (K + 2) 2^-24 sum_k |x_fq w_fq| (mulfree.ternary.packed_linear), plus one
    rounding of the output-side weight_scale product (2^-24 |y|)."""
    from mulfree.ternary.quant import act_fake_quant

    ref = hf_model(ckpts[variant])
    ours = from_checkpoint(ckpts[variant])
    x = torch.randn(9, TINY["intermediate_size"], generator=torch.Generator().manual_seed(1))
    name = "model.layers.1.mlp.down_proj"
    with torch.no_grad():
        want = ref.get_submodule(name)(x)
        got = ours.get_submodule(name)(x)
        q, scale = BitNetCheckpoint(ckpts[variant]).ternary(name)
        mag = act_fake_quant(x).abs() @ (q.float().abs() / scale).T
    K = x.shape[1]
    bound = (K + 2) * 2**-24 * mag + 2**-23 * want.abs()
    assert bool(((got - want).abs() <= bound).all())


def test_master_chain_through_packed_variant(ckpts, tmp_path):
    """End to end for master weights without a tolerance: our model of the master checkpoint
    equals our model of the packed checkpoint holding the codes/scales it quantizes to (exact),
    and that one equals transformers' (test_packed_logits_equal_transformers)."""
    from safetensors.torch import load_file, save_file

    from mulfree.models.bitnet import PROJECTIONS

    src = ckpts["master"]
    ck = BitNetCheckpoint(src)
    tensors = load_file(str(src / "model.safetensors"))
    for i in range(TINY["num_hidden_layers"]):
        for proj in PROJECTIONS:
            name = f"model.layers.{i}.{proj}"
            q, scale = ck.ternary(name)
            tensors[f"{name}.weight"] = pack_official(q)
            tensors[f"{name}.weight_scale"] = scale.reshape(1)
    import json

    raw = json.loads((src / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "bitnet", "linear_class": "bitlinear",
                                  "quantization_mode": "offline"}  # fmt: skip
    dst = tmp_path / "as_packed"
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(dst / "model.safetensors"))
    with torch.no_grad():
        a = from_checkpoint(src)(IDS).logits
        b = from_checkpoint(dst)(IDS).logits
        c = hf_model(dst)(IDS).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(b, c, atol=0, rtol=0)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda raw, t: raw.pop("quantization_config"), "no quantization_config"),
        (lambda raw, t: raw["quantization_config"].update(quant_method="gptq"), "unknown quantization_config"),
        (lambda raw, t: raw["quantization_config"].update(quantization_mode="sometimes"), "quantization_mode"),
        (lambda raw, t: raw["quantization_config"].update(use_rms_norm=True), "use_rms_norm"),
        (lambda raw, t: t.pop("model.layers.0.self_attn.q_proj.weight_scale"), "missing .*weight_scale"),
        (lambda raw, t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(3, 64, dtype=torch.uint8)}),
         "packed tensor .*up_proj.weight has shape \\(3, 64\\).*\\(24, 64\\) uint8"),
        (lambda raw, t: raw.update(hidden_act="gelu"), "hidden_act"),
        (lambda raw, t: raw.update(num_key_value_heads=3), "do not divide"),
    ],
    ids=["no-qconfig", "unknown-method", "unknown-mode", "rms-norm", "no-weight-scale", "packed-shape",
         "activation", "heads"],
)  # fmt: skip
def test_bad_checkpoints_one_line(ckpts, tmp_path, edit, match):
    import json

    from safetensors.torch import load_file, save_file

    src = ckpts["packed"]
    raw = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    edit(raw, tensors)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(MulfreeError, match=match) as e:
        from_checkpoint(tmp_path)
    assert "\n" not in str(e.value)
