"""Pack a tokenized corpus into fixed-length sequences, split off a held-out set, and stream
training batches in a deterministic, resumable order.

Every training sample is a row of `seq_len` tokens cut from the concatenation of all documents,
each followed by the end-of-text id (no padding, so every token is a loss target and all
micro-batches weigh the same). The order of samples is a pure function of (seed, sample index):
a run's data position is one integer, which is what makes resume and multi-process runs exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from mulfree.errors import MulfreeError

ENCODE_CHUNK = 256


def tokenize_documents(docs: Sequence[str], tok: Tokenizer, eos_id: int) -> np.ndarray:
    """Encode documents (no special tokens added) and join them, each followed by `eos_id`.

    Returns a 1-D int32 array (every vocabulary we train fits in int32).
    """
    pieces = []
    eos = np.asarray([eos_id], dtype=np.int32)
    # In chunks: an Encoding holds offsets and token strings too, far more than the ids.
    for i in range(0, len(docs), ENCODE_CHUNK):
        for enc in tok.encode_batch(list(docs[i : i + ENCODE_CHUNK]), add_special_tokens=False):
            pieces.append(np.asarray(enc.ids, dtype=np.int32))
            pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


@dataclass
class PackedCorpus:
    """Packed sequences split into train / validation rows."""

    # int32 halves the memory of int64; batches are widened to int64 when they are taken.
    train: torch.Tensor  # [n_train, seq_len] int32
    val: torch.Tensor  # [n_val, seq_len] int32
    fingerprint: str  # sha256 over the tokens and the split: resume refuses different data
    num_tokens: int  # tokens in the corpus before packing drops the tail


def pack(tokens: np.ndarray, seq_len: int, val_fraction: float, seed: int) -> PackedCorpus:
    """Cut `tokens` into rows of `seq_len`, drop the incomplete tail, and hold out rows.

    The held-out rows are a seeded random subset of rows (at least one when val_fraction > 0).
    Splitting rows rather than documents works for a one-file corpus too; the cost is that a
    held-out row may share a document with its training neighbours.
    """
    if seq_len < 2:
        raise MulfreeError("sequence length must be at least 2")
    n = len(tokens) // seq_len
    want_val = 0 if val_fraction <= 0 else max(1, round(n * val_fraction))
    if n - want_val < 1:
        raise MulfreeError(
            f"the corpus is too small: {len(tokens)} tokens make {n} sequence(s) of {seq_len}, "
            f"need at least {want_val + 1} (add text or lower --seq-len)"
        )
    rows = torch.from_numpy(tokens[: n * seq_len].astype(np.int32)).view(n, seq_len)  # [n, T]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[perm[:want_val]] = True
    h = hashlib.sha256()
    h.update(tokens[: n * seq_len].tobytes())
    h.update(is_val.numpy().tobytes())
    return PackedCorpus(
        train=rows[~is_val].contiguous(),
        val=rows[is_val].contiguous(),
        fingerprint=h.hexdigest(),
        num_tokens=int(len(tokens)),
    )


class SampleStream:
    """An endless stream of training-row indices: each epoch is a fresh seeded permutation.

    `indices(start, count)` gives the row ids of stream positions [start, start + count); the
    stream never depends on how it was consumed before, so a resumed or sharded run reads exactly
    the rows an unbroken single-process run would.
    """

    def __init__(self, num_rows: int, seed: int):
        if num_rows < 1:
            raise MulfreeError("no training sequences")
        self.num_rows = num_rows
        self.seed = seed
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            # Seed per epoch (not one generator run on) so any epoch is reachable directly.
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_rows, generator=g)
            self._epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> torch.Tensor:
        out = []
        pos = start
        while pos < start + count:
            epoch, offset = divmod(pos, self.num_rows)
            take = min(self.num_rows - offset, start + count - pos)
            out.append(self._permutation(epoch)[offset : offset + take])
            pos += take
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
