"""`--model` presets with `--model-arg` overrides."""

import pytest
from transformers import AutoModelForCausalLM

from mulfree.errors import MulfreeError
from mulfree.train.models import model_config


def _params(cfg) -> int:
    return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())


@pytest.mark.parametrize("width, depth", [(64, 2), (96, 3)])
def test_overridden_shape_keeps_transformerpp_matched(width, depth):
    over = {"hidden_size": width, "num_hidden_layers": depth, "vocab_size": 512}
    mm = model_config("mmfree-tiny", over)
    tpp = model_config("transformerpp-tiny", over)
    # The baseline is re-matched to the overridden shape, not to the preset's.
    assert tpp.intermediate_size == mm.mlp_intermediate_size
    assert (tpp.hidden_size, tpp.num_hidden_layers) == (width, depth)
    assert abs(_params(tpp) - _params(mm)) / _params(mm) < 0.01


def test_override_reaches_the_config_and_unknown_field_is_refused():
    assert model_config("mmfree-tiny", {"elementwise_mul": "lmul"}).elementwise_mul == "lmul"
    with pytest.raises(MulfreeError, match="no field 'bogus'"):
        model_config("transformerpp-tiny", {"bogus": 1})


def test_presets_take_the_resolvers_spelling_too():
    over = {"vocab_size": 512}
    for family in ("mmfree", "transformerpp"):
        assert model_config(f"{family}:tiny", over).to_dict() == model_config(f"{family}-tiny", over).to_dict()
    with pytest.raises(MulfreeError, match="unknown model 'mmfree:huge'"):
        model_config("mmfree:huge")
