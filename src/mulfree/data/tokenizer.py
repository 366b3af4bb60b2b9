"""Tokenizers for training: a user's `tokenizer.json`, or a byte-level BPE trained on the corpus.

Both are `tokenizers.Tokenizer` objects. Documents are joined with an end-of-text token when
packed, so a tokenizer must have one; `find_eos_token` picks the usual names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mulfree.errors import MulfreeError, first_line

EOS_TOKEN = "<|endoftext|>"
# Names used for the end-of-text token by the tokenizer families a user is likely to bring
# (GPT-2/NeoX, Llama-2/Mistral, Gemma, Llama-3).
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>")
MIN_VOCAB = 257  # 256 byte symbols + the end-of-text token


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json` file, or the `tokenizer.json` inside a folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise MulfreeError(f"tokenizer file not found: {p}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception with a parser message
        raise MulfreeError(f"{p} is not a tokenizers `tokenizer.json`: {first_line(e)}") from None


def train_bpe_tokenizer(docs: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) on `docs`; `EOS_TOKEN` is id 0.

    Byte-level means every UTF-8 string encodes (no unknown token), whatever the corpus held.
    """
    if vocab_size < MIN_VOCAB:
        raise MulfreeError(f"vocab size must be at least {MIN_VOCAB} for a byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        # The full byte alphabet even if the corpus lacks some bytes, so any text encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def find_eos_token(tok: Tokenizer, name: str | None = None) -> tuple[str, int]:
    """Return (token, id) of the end-of-text token: `name` if given, else a known candidate."""
    names = [name] if name else list(EOS_CANDIDATES)
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return n, i
    if name:
        raise MulfreeError(f"the tokenizer has no token {name!r} (given as the end-of-text token)")
    raise MulfreeError(
        "the tokenizer has none of the usual end-of-text tokens "
        f"({', '.join(EOS_CANDIDATES)}); name one with --eos-token"
    )


# The chat template of our base-LM tokenizers: role-tagged lines, then "assistant:" (the same
# text the server builds for a tokenizer without a template, mulfree.serve.backends).
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def save_hf_tokenizer(tok: Tokenizer, eos_token: str, out_dir: str | Path) -> None:
    """Write tokenizer.json + tokenizer_config.json (+ the chat template) so
    `AutoTokenizer.from_pretrained` loads it."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, bos_token=eos_token)
    hf.chat_template = SIMPLE_CHAT_TEMPLATE
    hf.save_pretrained(str(out_dir))
