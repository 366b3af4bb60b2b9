"""In-process training runs with a tiny Llama: save -> load round trip, metrics, accumulation."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from mulfree.errors import MulfreeError
from mulfree.train import TrainConfig, evaluate, train
from mulfree.train.distributed import DistContext
from tests._tolerances import TRAIN_LOSS

from .helpers import write_corpus, write_tiny_llama

# Float tolerance for comparing runs that cut the same global batch into different micro-batches:
# the gradient sums the same terms in another order, so fp32 results agree to a few ulps per
# step; 5 steps of AdamW keep the loss within 1e-5 relative.
ACCUM_RTOL = TRAIN_LOSS.rtol


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return write_corpus(root / "corpus"), write_tiny_llama(root / "llama")


def config(setup, out, **kw):
    corpus, model = setup
    base = dict(
        data=[str(corpus)],
        out_dir=str(out),
        model=str(model),
        vocab_size=300,
        seq_len=32,
        batch_size=8,
        max_steps=12,
        warmup_steps=2,
        lr=3e-3,
        eval_every=6,
        eval_sequences=16,
        checkpoint_every=6,
        log_every=3,
        progress=False,
        val_fraction=0.1,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = config(setup, out)
    return cfg, train(cfg)


def test_train_save_load_round_trip(finished):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, res = finished
    model = AutoModelForCausalLM.from_pretrained(res.model_dir)
    tok = AutoTokenizer.from_pretrained(res.model_dir)
    assert model.config.vocab_size == len(tok) <= 300
    assert model.config.eos_token_id == tok.eos_token_id
    # The end-of-text embedding is a trained row, not a frozen all-zero padding row.
    assert model.config.pad_token_id is None
    assert model.get_input_embeddings().weight[tok.eos_token_id].abs().max() > 0
    # The exported weights are exactly the last checkpoint's.
    ckpt = load_file(str(res.out_dir / "checkpoints" / "step_00000012" / "model.safetensors"))
    for name, t in model.state_dict().items():
        assert torch.equal(t, ckpt[name]), name
    # And the reloaded model reproduces the held-out loss measured at the end of training.
    from mulfree.data import load_tokenizer, pack, read_documents, tokenize_documents

    t = load_tokenizer(res.model_dir)
    ids = tokenize_documents(read_documents(cfg.data), t, t.token_to_id("<|endoftext|>"))
    val = pack(ids, cfg.seq_len, cfg.val_fraction, cfg.seed).val
    ctx = DistContext(0, 1, 0, torch.device("cpu"), False)
    assert evaluate(model, val, 8, cfg, ctx) == pytest.approx(res.val_loss, rel=1e-6)
    # Encoding through AutoTokenizer matches the trainer's tokenizer.
    text = "The king and the queen sleep."
    assert tok(text, add_special_tokens=False)["input_ids"] == t.encode(text).ids
    info = json.loads((res.model_dir / "training_info.json").read_text())
    assert info["format"] == "mulfree-trained-model" and info["steps"] == 12
    assert info["tokens_seen"] == 12 * 8 * 32 == res.tokens_seen


def test_metrics_plot_and_checkpoints(finished):
    _, res = finished
    recs = [json.loads(line) for line in res.metrics_path.read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    val_recs = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in train_recs] == [3, 6, 9, 12]
    assert [r["step"] for r in val_recs] == [6, 12]
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]  # it learns
    assert val_recs[-1]["val_loss"] < val_recs[0]["val_loss"]
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in train_recs)
    assert res.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = sorted(p.name for p in (res.out_dir / "checkpoints").iterdir())
    assert steps == ["step_00000006", "step_00000012"]  # keep_checkpoints=2, no temporaries
    state = json.loads(
        (res.out_dir / "checkpoints" / "step_00000012" / "trainer_state.json").read_text()
    )
    assert state["format"] == "mulfree-train-checkpoint" and state["samples_seen"] == 96


def test_existing_run_needs_resume_and_same_recipe(setup, finished):
    cfg, res = finished
    with pytest.raises(MulfreeError, match="already holds a training run; pass --resume"):
        train(config(setup, res.out_dir))
    with pytest.raises(MulfreeError, match="lr: checkpoint 0.003, given 0.001"):
        train(config(setup, res.out_dir, resume=True, lr=1e-3))
    before = (res.model_dir / "model.safetensors").read_bytes()
    log_before = res.metrics_path.read_text()
    again = train(config(setup, res.out_dir, resume=True))  # finished: re-exports the same model
    assert again.val_loss == res.val_loss and again.train_loss == res.train_loss
    assert (res.model_dir / "model.safetensors").read_bytes() == before
    assert res.metrics_path.read_text() == log_before  # nothing logged twice


def test_gradient_accumulation_matches_one_big_batch(setup, tmp_path):
    losses = {}
    for micro in (8, 2):
        res = train(
            config(
                setup,
                tmp_path / f"m{micro}",
                micro_batch_size=micro,
                max_steps=5,
                log_every=1,
                eval_every=0,
                checkpoint_every=0,
            )
        )
        losses[micro] = [
            json.loads(x)["loss"]
            for x in res.metrics_path.read_text().splitlines()
            if '"loss"' in x
        ]
    assert len(losses[8]) == 5
    assert losses[2] == pytest.approx(losses[8], rel=ACCUM_RTOL)


def test_corpus_change_is_refused_on_resume(setup, tmp_path):
    corpus, _ = setup
    other = write_corpus(tmp_path / "other", seed=9)
    out = tmp_path / "run"
    train(config(setup, out, max_steps=6, eval_every=0))
    with pytest.raises(MulfreeError, match="the corpus differs"):
        train(config(setup, out, data=[str(other)], resume=True, max_steps=6, eval_every=0))
    assert corpus.exists()


def test_bf16_autocast_trains(setup, tmp_path):
    res = train(config(setup, tmp_path, bf16=True, max_steps=4, eval_every=0, checkpoint_every=0))
    assert res.val_loss is not None and res.val_loss < 10
    ckpt = load_file(str(tmp_path / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in ckpt.values())  # master weights stay fp32


def test_matmul_free_model_trains_saves_and_loads(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = config(setup, tmp_path, model="mmfree-tiny", max_steps=8, warmup_steps=2, log_every=1,
                 eval_every=0, checkpoint_every=0,
                 extra={"hidden_size": 32, "num_hidden_layers": 2})  # fmt: skip
    res = train(cfg)
    model = AutoModelForCausalLM.from_pretrained(res.model_dir)
    assert model.config.model_type == "hgrn_bit" and model.config.hidden_size == 32
    assert res.num_params == sum(p.numel() for p in model.parameters())
    ckpt = load_file(str(res.out_dir / "checkpoints" / "step_00000008" / "model.safetensors"))
    for name, t in model.state_dict().items():
        assert torch.equal(t, ckpt[name]), name
    # The MatMul-free recipe halves the learning rate from the midpoint on (auto for hgrn_bit).
    lrs = [json.loads(x)["lr"] for x in res.metrics_path.read_text().splitlines() if '"lr"' in x]
    from mulfree.train import lr_at

    assert lrs == [lr_at(s, cfg, True) for s in range(8)]
    assert lrs[4] == pytest.approx(0.5 * lr_at(4, cfg, False))


def test_matmul_free_resume_from_checkpoint_is_exact(setup, tmp_path):
    import shutil

    kw = dict(model="mmfree-tiny", max_steps=8, warmup_steps=2, log_every=1, eval_every=0,
              checkpoint_every=4, extra={"hidden_size": 32, "num_hidden_layers": 2})  # fmt: skip
    full = train(config(setup, tmp_path / "full", **kw))
    part = tmp_path / "part"
    shutil.copytree(full.out_dir, part)
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    shutil.rmtree(part / "model")
    resumed = train(config(setup, part, resume=True, **kw))
    a = load_file(str(full.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert resumed.val_loss == full.val_loss


def test_non_finite_gradient_stops_before_the_weights_change(setup, tmp_path, monkeypatch):
    calls = []

    def nan_norm(params, max_norm):
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_norm)
    with pytest.raises(MulfreeError, match=r"non-finite gradient norm \(nan\) at step 3"):
        train(config(setup, tmp_path, max_steps=6, checkpoint_every=2, eval_every=0))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]


def test_user_tokenizer_is_used_as_given(setup, tmp_path):
    from mulfree.data import load_tokenizer, read_documents, train_bpe_tokenizer

    corpus, _ = setup
    tok = train_bpe_tokenizer(read_documents([corpus]), 280)
    src = tmp_path / "my-tokenizer.json"
    tok.save(str(src))
    res = train(config(setup, tmp_path / "run", tokenizer=str(src), max_steps=2, warmup_steps=1,
                       eval_every=0, checkpoint_every=0, bf16=True, model="mmfree-tiny",
                       extra={"hidden_size": 32, "num_hidden_layers": 2}))  # fmt: skip
    saved = load_tokenizer(res.model_dir)
    assert saved.get_vocab() == tok.get_vocab()
    assert res.val_loss is not None and math.isfinite(res.val_loss)
    # A tokenizer without any known end-of-text token needs --eos-token.
    from tokenizers import Tokenizer, models

    bare = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    bare.save(str(tmp_path / "bare.json"))
    with pytest.raises(MulfreeError, match="name one with --eos-token"):
        train(config(setup, tmp_path / "run2", tokenizer=str(tmp_path / "bare.json")))
    assert not (tmp_path / "run2").exists()
