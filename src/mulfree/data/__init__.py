"""Training data: corpus reading, tokenizers, packing into fixed-length sequences.

Names are served lazily (mulfree/_lazy.py): `mulfree.data.corpora.default_cache_dir`, which the
torch-free packed engine uses, must not import torch through `mulfree.data.packing`.
"""

from mulfree._lazy import attach

_NAMES = {
    "corpus_files": "mulfree.data.corpus",
    "read_documents": "mulfree.data.corpus",
    "PackedCorpus": "mulfree.data.packing",
    "SampleStream": "mulfree.data.packing",
    "pack": "mulfree.data.packing",
    "tokenize_documents": "mulfree.data.packing",
    "EOS_TOKEN": "mulfree.data.tokenizer",
    "find_eos_token": "mulfree.data.tokenizer",
    "load_tokenizer": "mulfree.data.tokenizer",
    "save_hf_tokenizer": "mulfree.data.tokenizer",
    "train_bpe_tokenizer": "mulfree.data.tokenizer",
    "fetch_shakespeare": "mulfree.data.corpora",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = sorted(_NAMES)
