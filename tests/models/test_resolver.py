"""mulfree.models.resolve: one spec syntax for presets, packed models, checkpoints, train runs."""

from __future__ import annotations

import json

import pytest

from mulfree.errors import MulfreeError
from mulfree.models import resolve
from mulfree.models.resolver import WEIGHTS_FILE, parse_preset


def test_presets_in_both_spellings():
    a = resolve("mmfree:370M")
    with pytest.warns(FutureWarning, match="deprecated; write mmfree:370M"):
        b = resolve("mmfree-370M")  # the old spelling, for one release
    assert (a.kind, a.family, a.preset) == (b.kind, b.family, b.preset) == ("preset", "mmfree", "370M")
    assert resolve("transformerpp:d128").family == "transformerpp"
    assert parse_preset("gemma3-270m") is None  # not a preset family


def test_paths(tmp_path):
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / WEIGHTS_FILE).write_bytes(b"x")
    assert resolve(packed).kind == "packed" and resolve(packed / WEIGHTS_FILE).kind == "packed"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "hgrn_bit"}))
    (ckpt / WEIGHTS_FILE).write_bytes(b"x")
    r = resolve(ckpt)
    assert (r.kind, r.path, r.tokenizer_dir) == ("checkpoint", ckpt, ckpt)
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000005"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    r = resolve(run)  # a run without an exported model: its newest checkpoint, tokenizer in the run
    assert (r.kind, r.path, r.tokenizer_dir, r.origin) == ("checkpoint", step, run, "run")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    assert resolve(run).path == run / "model"
    assert resolve(step).tokenizer_dir == run
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MulfreeError, match="no config.json"):
        resolve(empty)


def test_unknown_spec_is_one_line():
    with pytest.raises(MulfreeError, match="neither a local folder nor a known model") as e:
        resolve("/no/such/model")
    assert "\n" not in str(e.value) and "FAMILY:PRESET" in str(e.value)


def test_the_weights_file_name_has_one_value():
    from mulfree.engine.header import WEIGHTS_FILE as engine_name

    assert engine_name == WEIGHTS_FILE
