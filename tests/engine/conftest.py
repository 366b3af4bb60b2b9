"""Tiny random MatMul-free models (with a BPE tokenizer) for the engine tests."""

from __future__ import annotations

import pytest
import torch

from mulfree.data.tokenizer import EOS_TOKEN, save_hf_tokenizer, train_bpe_tokenizer
from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ternary weights replace multiplications with additions and subtractions.",
    "A recurrent state of constant size needs no cache that grows.",
] * 4

PROMPTS = [[5], [11, 40, 7, 99, 3], [250, 1, 17, 64, 64, 2, 180, 33, 9, 120, 77]]
VOCAB = 300


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # On shared cores OpenMP fork/join can stall for a scheduler slice per parallel region
    # (see mulfree.kernels); these tiny models run fastest and deterministically on one thread.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def train_tiny(model, steps=80, seed=0):
    """A few AdamW steps memorizing 4 random sequences: peaked next-token distributions like a
    trained model's (an untrained random model has near-ties that float rounding can flip).
    Returns the training ids [4, 48]; the model is left in eval mode."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(1, model.config.vocab_size, (4, 48), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return data


@pytest.fixture(scope="session")
def trained():
    """(trained tiny model, prompts): prefixes of its training rows plus unrelated prompts."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    model = make_model(vocab=VOCAB, seed=1)
    data = train_tiny(model)
    torch.set_num_threads(old)
    model.requires_grad_(False)
    return model, [data[0, :5].tolist(), data[1, :12].tolist(), *PROMPTS[:2]]


def make_model(*, hidden=64, layers=3, vocab=300, seed=0, ones_norms=False, tie=False):
    """A random hgrn_bit model in eval mode. Unless `ones_norms`, every norm weight and the lower
    bounds are randomized, as in a trained model (then i/f/g inputs differ: no fused call)."""
    torch.manual_seed(seed)
    cfg = HGRNBitConfig(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab,
                        eos_token_id=0, bos_token_id=0, tie_word_embeddings=tie)  # fmt: skip
    model = HGRNBitForCausalLM(cfg).eval()
    if not ones_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
                elif "lower_bounds" in name:
                    p.normal_()
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved checkpoint dir (save_pretrained) with a tokenizer; eos id 0."""
    path = tmp_path_factory.mktemp("ckpt")
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=VOCAB)
    model = make_model(vocab=tok.get_vocab_size())
    model.save_pretrained(str(path))
    save_hf_tokenizer(tok, EOS_TOKEN, path)
    return path


@pytest.fixture(scope="session")
def packed_dir(model_dir, tmp_path_factory):
    from mulfree.engine import convert

    out = tmp_path_factory.mktemp("packed")
    convert(str(model_dir), str(out))
    return out


def load_both_layouts(path, ids: list[int]):
    """The packed model at `path` loaded all-tq2 and all-t81: equal state dicts (tq2 bytes
    whatever the layout in memory), equal logits from the modules' own forward and equal greedy
    tokens from HF generate, bit for bit. Returns (tq2 model, t81 model)."""
    import torch

    from mulfree.engine import load_packed

    ref, t81 = load_packed(path, layout="tq2"), load_packed(path, layout="t81")
    sa, sb = ref.state_dict(), t81.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0)
    x = torch.tensor([ids])
    with torch.no_grad():  # the modules' own forward (t81 kernel, or converted per call)
        torch.testing.assert_close(t81(x).logits, ref(x).logits, atol=0, rtol=0)
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert t81.generate(x[:, :4], **kw).tolist() == ref.generate(x[:, :4], **kw).tolist()
    return ref, t81
