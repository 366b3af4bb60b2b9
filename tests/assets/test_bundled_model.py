"""The bundled model: loads through transformers, its card's numbers come from its own file, and
the packed engine's greedy text equals the PyTorch model's (same ternary quantization)."""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import mulfree  # noqa: F401  (registers hgrn_bit)
from mulfree.engine.generate import GenerateConfig, bundled_model, generate

ASSET = Path(mulfree.__file__).parent / "assets" / "mmfree-shakespeare-tiny"


def test_bundled_model_is_found_and_small():
    assert bundled_model() == ASSET
    total = sum(f.stat().st_size for f in ASSET.iterdir())
    assert total <= 10 * 1024 * 1024
    info = json.loads((ASSET / "training_info.json").read_text())
    card = (ASSET / "README.md").read_text()
    # The card states the numbers the training run recorded.
    assert f"{info['num_params']:,}" in card
    assert f"{info['final_val_loss']:.3f}" in card and f"{info['final_val_ppl']:.1f}" in card
    assert f"{info['tokens_seen']:,}" in card


def test_engine_greedy_equals_pytorch_greedy():
    tok = AutoTokenizer.from_pretrained(ASSET)
    model = AutoModelForCausalLM.from_pretrained(ASSET).eval()
    prompt = "ROMEO:"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model.generate(
            ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    want = ref[0, ids.shape[1] :].tolist()
    res = generate(GenerateConfig(prompt=prompt, max_tokens=24, stop_on_eos=False, temperature=0))
    assert res.token_ids == want
