"""Packed (and float) model directories are Hugging Face directories: config.json routed to
`load_packed` through the Auto classes, generation_config.json, a chat template, a model card
with Hub front matter carried through convert; older packed dirs without config.json still load;
lm-eval's own CLI loads them through `mulfree lm-eval`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import mulfree  # noqa: F401  (registers hgrn_bit and hgrn_bit_packed)
from mulfree.engine import load_packed
from mulfree.engine.convert import convert
from mulfree.engine.generate import GenerateConfig, bundled_model, generate

pytestmark = pytest.mark.skipif(bundled_model() is None, reason="no bundled model")
CARD_TAGS = {"mulfree", "hgrn_bit", "matmul-free", "ternary", "packed"}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "tiny-packed"
    convert(str(bundled_model()), str(out), ternary_format="tq1", embeddings="int8")
    return out


def test_packed_dir_has_the_hugging_face_files(packed):
    from huggingface_hub import ModelCard

    for name in ("config.json", "generation_config.json", "tokenizer.json", "README.md",
                 "chat_template.jinja"):  # fmt: skip
        assert (packed / name).is_file(), name
    cfg = json.loads((packed / "config.json").read_text())
    assert cfg["model_type"] == "hgrn_bit_packed"
    assert cfg["mulfree_packed"]["ternary_format"] == "tq1"
    assert cfg["mulfree_packed"]["embedding_format"] == "int8"
    card = ModelCard.load(packed / "README.md")
    assert card.data.library_name == "mulfree" and card.data.pipeline_tag == "text-generation"
    assert CARD_TAGS <= set(card.data.tags)
    assert card.data.license == "cc-by-2.5"  # carried over from the source's card
    assert "## Packed by mulfree" in card.text and "bundled MatMul-free model" in card.text
    # re-packing keeps one packing note
    again = packed.parent / "again"
    convert(str(packed), str(again), ternary_format="tq2", embeddings="float32")
    text = ModelCard.load(again / "README.md").text
    assert text.count("## Packed by mulfree") == 1 and "tq2 ternary" in text


def test_auto_classes_and_pipeline_load_a_packed_dir(packed):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

    from mulfree.engine import PackedHGRNBitForCausalLM

    assert type(AutoConfig.from_pretrained(packed)).__name__ == "PackedHGRNBitConfig"
    model = AutoModelForCausalLM.from_pretrained(packed)
    assert isinstance(model, PackedHGRNBitForCausalLM)
    tok = AutoTokenizer.from_pretrained(packed)
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    ref = load_packed(packed)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, ref(ids).logits)  # the same loader, the same numbers
        want = ref.generate(ids, max_new_tokens=12, do_sample=False)
    gen = pipeline("text-generation", model=str(packed))
    got = gen("ROMEO:", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert got == tok.decode(want[0], skip_special_tokens=True)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    assert chat == "user: hi\nassistant:"  # the server's own fallback text


def test_packed_save_pretrained_writes_a_hugging_face_dir(packed, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_packed(packed)
    out = tmp_path / "saved"
    out.mkdir()
    model.save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "hgrn_bit_packed"
    assert (out / "generation_config.json").is_file() and (out / "README.md").is_file()
    again = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_old_packed_dirs_without_config_json_still_load(packed, tmp_path):
    from mulfree.serve import load_backend

    old = tmp_path / "old"
    shutil.copytree(packed, old)
    for name in ("config.json", "README.md", "chat_template.jinja"):
        (old / name).unlink()
    cfg = dict(max_tokens=8, temperature=0, energy=False)
    new_text = generate(GenerateConfig("ROMEO:", model=str(packed), **cfg)).text
    assert generate(GenerateConfig("ROMEO:", model=str(old), **cfg)).text == new_text
    assert load_backend(old).weights == load_backend(packed).weights == "packed"


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("lm_eval"), reason="lm-eval is not installed"
)
def test_lm_eval_cli_loads_a_packed_dir_through_mulfree_lm_eval(packed, tmp_path):
    from tests.serve.test_lm_eval import ITEMS, write_task

    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "mulfree.cli", "lm-eval", "--model", "hf", "--model_args",
           f"pretrained={packed},tokenizer={packed}", "--tasks", "mulfree_tiny_mc",
           "--include_path", write_task(tmp_path), "--device", "cpu", "--batch_size", "2",
           "--output_path", str(out), "--log_samples"]  # fmt: skip
    env = {**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (res,) = out.rglob("results_*.json")
    acc = json.loads(res.read_text())["results"]["mulfree_tiny_mc"]["acc,none"]
    # the oracle: the packed model's own log-likelihood of each choice, in float64
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(packed)
    model = load_packed(packed)
    correct = 0
    for item in ITEMS:
        scores = []
        for choice in item["choices"]:
            ctx = tok(item["question"]).input_ids
            whole = tok(item["question"] + " " + choice).input_ids
            with torch.inference_mode():
                lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(float(lp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        correct += max(range(len(scores)), key=scores.__getitem__) == item["answer"]
    assert acc == correct / len(ITEMS)
