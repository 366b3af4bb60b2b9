"""`convert` from a `mulfree train` run folder and from one of its checkpoints/step_* folders."""

import pytest
import torch

from mulfree.engine import convert, load_packed
from mulfree.engine.format import read_packed
from mulfree.errors import MulfreeError
from mulfree.train import TrainConfig, train

from ..train.helpers import write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert-run")
    cfg = TrainConfig(
        data=[str(write_corpus(root / "corpus", n_docs=4))], out_dir=str(root / "run"),
        model="mmfree-tiny", extra={"hidden_size": 32, "num_hidden_layers": 1},
        vocab_size=300, seq_len=32, batch_size=4, max_steps=4, warmup_steps=1,
        checkpoint_every=2, keep_checkpoints=2, eval_every=4, eval_sequences=4, progress=False,
    )  # fmt: skip
    train(cfg)
    return root / "run"


def _codes(path):
    _, tensors, _ = read_packed(path)
    return {k: v for k, v in tensors.items() if k.endswith("weight_packed")}


def test_convert_run_folder_step_folder_and_export_agree(run, tmp_path):
    steps = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in steps] == ["step_00000002", "step_00000004"]
    a = convert(str(run), str(tmp_path / "a"))  # the run's exported model/
    b = convert(str(steps[-1]), str(tmp_path / "b"))  # the last checkpoint: the same weights
    c = convert(str(steps[0]), str(tmp_path / "c"))  # an earlier checkpoint
    assert "tokenizer.json" in b.tokenizer_files  # taken from the run folder
    ka, kb, kc = _codes(a.path), _codes(b.path), _codes(c.path)
    assert ka.keys() == kb.keys() == kc.keys()
    assert all(torch.equal(ka[k], kb[k]) for k in ka)
    assert not all(torch.equal(ka[k], kc[k]) for k in ka)  # two more steps changed the weights
    model = load_packed(tmp_path / "c")
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1


def test_convert_rejects_a_folder_without_a_model(run, tmp_path):
    with pytest.raises(MulfreeError, match="no config.json"):
        convert(str(run / "checkpoints"), str(tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MulfreeError, match="no config.json"):
        convert(str(tmp_path / "empty"), str(tmp_path / "y"))
