"""Training data: corpus reading, tokenizers, packing into fixed-length sequences."""

from mulfree.data.corpus import corpus_files, read_documents
from mulfree.data.packing import PackedCorpus, SampleStream, pack, tokenize_documents
from mulfree.data.tokenizer import (
    EOS_TOKEN,
    find_eos_token,
    load_tokenizer,
    save_hf_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "EOS_TOKEN",
    "PackedCorpus",
    "SampleStream",
    "corpus_files",
    "fetch_shakespeare",
    "find_eos_token",
    "load_tokenizer",
    "pack",
    "read_documents",
    "save_hf_tokenizer",
    "tokenize_documents",
    "train_bpe_tokenizer",
]


def __getattr__(name):
    # Lazy so `python -m mulfree.data.corpora` does not import the module twice.
    if name == "fetch_shakespeare":
        from mulfree.data.corpora import fetch_shakespeare

        return fetch_shakespeare
    raise AttributeError(f"module 'mulfree.data' has no attribute {name!r}")
