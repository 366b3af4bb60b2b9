"""A tiny random MatMul-free model + a byte-level BPE tokenizer saved as a model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from mulfree.data.tokenizer import EOS_TOKEN, save_hf_tokenizer, train_bpe_tokenizer
from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A recurrent state of constant size serves many requests at once.",
    "Ternary weights replace multiplications with additions and subtractions.",
    "Hello world, this is a tiny tokenizer for tests.",
] * 4


def make_model_dir(path: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random hgrn_bit model and its tokenizer (eos = `EOS_TOKEN`, id 0) into `path`."""
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=320)
    torch.manual_seed(seed)
    cfg = HGRNBitConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        vocab_size=tok.get_vocab_size(),
        eos_token_id=0,
        bos_token_id=0,
    )
    model = HGRNBitForCausalLM(cfg)
    model.save_pretrained(str(path))
    save_hf_tokenizer(tok, EOS_TOKEN, path)
    return path
