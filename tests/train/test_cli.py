"""`mulfree train` with bad input: one `mulfree: error:` line, non-zero exit, nothing written."""

import json

import pytest

from mulfree.cli import main

from .helpers import write_corpus, write_tiny_llama


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "corpus", n_docs=3)
    model = write_tiny_llama(root / "llama")
    (root / "empty").mkdir()
    (root / "blank.txt").write_text("\n \n", encoding="utf-8")
    (root / "tiny.txt").write_text("To be, or not to be.", encoding="utf-8")
    (root / "nomodel").mkdir()
    (root / "nomodel" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (root / "badtype").mkdir()
    (root / "badtype" / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    return root, corpus, model


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.err


CASES = {
    "unknown-flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "bad-number": (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    "bad-device": (["--device", "tpu"], "argument --device: invalid choice"),
    "negative-steps": (["--max-steps", "-5"], "max_steps must be a positive integer"),
    "warmup-too-long": (["--warmup-steps", "50", "--max-steps", "10"], "exceeds max_steps"),
    "micro-batch": (["--batch-size", "8", "--micro-batch-size", "3"], "not a multiple"),
    "missing-corpus": (["--data", "{root}/nope"], "corpus path does not exist"),
    "empty-folder": (["--data", "{root}/empty"], "holds no text files"),
    "blank-corpus": (["--data", "{root}/blank.txt"], "the corpus is empty"),
    "unknown-preset": (["--model", "gpt-17"], "unknown model 'gpt-17'"),
    "no-model-type": (["--model", "{root}/nomodel"], "has no model_type"),
    "unknown-model-type": (["--model", "{root}/badtype"], "unknown model_type 'no_such_model'"),
    "bad-model-arg": (["--model-arg", "hidden"], "--model-arg wants KEY=VALUE"),
    "unknown-model-field": (["--model-arg", "wingspan=3"], "has no field 'wingspan'"),
    "missing-tokenizer": (["--tokenizer", "{root}/tok.json"], "tokenizer file not found"),
    "seq-too-long": (["--seq-len", "4096"], "exceeds the model's max_position_embeddings 128"),
    "tiny-corpus": (["--data", "{root}/tiny.txt"], "the corpus is too small"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(name, inputs, capsys, tmp_path):
    root, corpus, model = inputs
    extra, message = CASES[name]
    out = tmp_path / "out"
    argv = ["train", "--data", str(corpus), "--model", str(model), "--out", str(out),
            "--vocab-size", "300", "--seq-len", "32", "--max-steps", "10", "--warmup-steps", "2",
            "--no-progress"]  # fmt: skip
    argv += [a.format(root=root) for a in extra]  # later flags override earlier ones
    rc, err = _run(argv, capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mulfree: error: "), err
    assert message in lines[0]
    assert not out.exists()


def test_required_flags(inputs, capsys, tmp_path):
    _, corpus, model = inputs
    rc, err = _run(["train", "--model", str(model), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--data is required" in err
    rc, err = _run(["train", "--data", str(corpus), "--model", str(model)], capsys)
    assert rc == 2 and "the following arguments are required: --out" in err
    assert not (tmp_path / "o").exists()
