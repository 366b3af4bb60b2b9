"""Shared fixtures for training tests: a small synthetic corpus and a tiny Llama config."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

WORDS = (
    "the king queen crown sword night day love death sea ship storm island spirit father son "
    "daughter brother ghost castle garden wind fire rain gold heart blood honour truth lie "
    "speak hear see come go stay fly fall rise sleep dream wake weep laugh sing"
).split()


def write_corpus(folder: Path, n_docs: int = 12, words_per_doc: int = 400, seed: int = 1) -> Path:
    """Write `n_docs` text files of seeded pseudo-sentences; returns the folder."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for _ in range(words_per_doc // 8):
            sent = " ".join(rng.choice(WORDS) for _ in range(8))
            lines.append(sent.capitalize() + ".")
        (folder / f"doc{d:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_tiny_llama(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A config.json for a ~35k-parameter LlamaForCausalLM (vocab set by the trainer)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_type": "llama",
        "vocab_size": 300,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def cli_env(threads: int = 1) -> dict[str, str]:
    """Environment for subprocess runs: fixed thread count, so float results are reproducible."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def run_cli(*args: str, threads: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mulfree.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(threads),
        timeout=timeout,
    )
