import numpy as np
import pytest
import torch

from mulfree.data import (
    EOS_TOKEN,
    SampleStream,
    find_eos_token,
    load_tokenizer,
    pack,
    tokenize_documents,
    train_bpe_tokenizer,
)
from mulfree.errors import MulfreeError

DOCS = ["Now is the winter of our discontent, made glorious summer.", "Ça va? 日本語 ok\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(DOCS, vocab_size=300)


def test_bpe_is_byte_level_and_round_trips_any_text(tok):
    assert tok.get_vocab_size() <= 300
    assert tok.token_to_id(EOS_TOKEN) == 0
    for text in DOCS[:2] + ["unseen ☃ symbols ✓"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text


def test_tokenizer_file_and_folder_load_identically(tok, tmp_path):
    tok.save(str(tmp_path / "tokenizer.json"))
    for p in (tmp_path / "tokenizer.json", tmp_path):
        assert load_tokenizer(p).encode(DOCS[0]).ids == tok.encode(DOCS[0]).ids


def test_tokenizer_errors(tok, tmp_path):
    with pytest.raises(MulfreeError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MulfreeError, match="is not a tokenizers"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(MulfreeError, match="has no token '<eot>'"):
        find_eos_token(tok, "<eot>")
    with pytest.raises(MulfreeError, match="at least 257"):
        train_bpe_tokenizer(DOCS, vocab_size=100)


def test_documents_are_joined_with_eos(tok):
    ids = tokenize_documents(["ab", "cd"], tok, eos_id=0)
    a = tok.encode("ab", add_special_tokens=False).ids
    c = tok.encode("cd", add_special_tokens=False).ids
    assert ids.tolist() == a + [0] + c + [0]
    assert ids.dtype == np.int32


def test_pack_shapes_split_and_determinism():
    tokens = np.arange(1000, dtype=np.int32)
    p = pack(tokens, seq_len=10, val_fraction=0.1, seed=3)
    assert p.train.shape == (90, 10) and p.val.shape == (10, 10)
    assert p.train.dtype == torch.int32
    rows = torch.cat([p.train, p.val])[:, 0].long().sort().values
    assert torch.equal(rows, torch.arange(0, 1000, 10))  # disjoint and complete
    q = pack(tokens, seq_len=10, val_fraction=0.1, seed=3)
    assert torch.equal(p.val, q.val) and p.fingerprint == q.fingerprint
    r = pack(tokens, seq_len=10, val_fraction=0.1, seed=4)
    assert not torch.equal(p.val, r.val) and p.fingerprint != r.fingerprint
    tail = pack(np.arange(1009, dtype=np.int32), seq_len=10, val_fraction=0.0, seed=0)
    assert tail.train.shape == (100, 10) and tail.val.shape == (0, 10)


def test_pack_too_small_corpus():
    with pytest.raises(MulfreeError, match="too small: 15 tokens make 1 sequence"):
        pack(np.arange(15, dtype=np.int32), seq_len=10, val_fraction=0.1, seed=0)


def test_sample_stream_epochs_are_permutations_and_slices_compose():
    s = SampleStream(7, seed=5)
    whole = s.indices(0, 21)
    for e in range(3):
        assert sorted(whole[7 * e : 7 * e + 7].tolist()) == list(range(7))
    assert not torch.equal(whole[:7], whole[7:14])  # a fresh order each epoch
    fresh = SampleStream(7, seed=5)  # no state carried between calls matters
    parts = torch.cat([fresh.indices(0, 3), fresh.indices(12, 9), fresh.indices(3, 9)])
    assert torch.equal(parts, torch.cat([whole[0:3], whole[12:21], whole[3:12]]))
