import json

import pytest

from mulfree.data import corpus_files, read_documents
from mulfree.errors import MulfreeError


def test_folder_is_read_in_sorted_order_skipping_hidden_and_foreign_files(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("never", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert read_documents([tmp_path]) == ["first", "second", "third"]
    assert [p.name for p in corpus_files([tmp_path])] == ["a.txt", "b.txt", "c.md"]


def test_jsonl_gives_one_document_per_record_and_field_is_configurable(tmp_path):
    f = tmp_path / "c.jsonl"
    rows = [{"text": "one", "body": "uno"}, {"text": "two", "body": "dos"}, {"text": "  "}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_documents([f]) == ["one", "two"]  # blank records and lines are skipped
    g = tmp_path / "d.jsonl"
    g.write_text("\n".join(json.dumps(r) for r in rows[:2]), encoding="utf-8")
    assert read_documents([g], text_field="body") == ["uno", "dos"]


def test_files_and_folders_mix_in_given_order(tmp_path):
    (tmp_path / "x.txt").write_text("x", encoding="utf-8")
    d = tmp_path / "d"
    d.mkdir()
    (d / "y.txt").write_text("y", encoding="utf-8")
    assert read_documents([d, tmp_path / "x.txt"]) == ["y", "x"]


@pytest.mark.parametrize(
    "setup, message",
    [
        pytest.param(lambda p: [p / "nope.txt"], "does not exist", id="missing-file"),
        pytest.param(
            lambda p: (p / "e").mkdir() or [p / "e"], "holds no text files", id="empty-folder"
        ),
        pytest.param(
            lambda p: (p / "blank.txt").write_text(" \n\n", encoding="utf-8") and [p / "blank.txt"],
            "corpus is empty",
            id="blank-file",
        ),
        pytest.param(
            lambda p: (
                (p / "a.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
                and [p / "a.jsonl"]
            ),
            "a.jsonl:2: record has no 'text' field",
            id="jsonl-missing-field",
        ),
        pytest.param(
            lambda p: (
                (p / "b.jsonl").write_text('{"text": "ok"}\n{broken\n', encoding="utf-8")
                and [p / "b.jsonl"]
            ),
            "b.jsonl:2: not valid JSON",
            id="jsonl-bad-json",
        ),
        pytest.param(
            lambda p: (
                (p / "c.jsonl").write_text('{"text": 5}\n', encoding="utf-8") and [p / "c.jsonl"]
            ),
            "is not a string",
            id="jsonl-non-string",
        ),
        pytest.param(
            lambda p: (p / "bin.txt").write_bytes(b"\xff\xfe\x00bad") and [p / "bin.txt"],
            "not UTF-8",
            id="not-utf8",
        ),
        pytest.param(lambda p: [], "no corpus given", id="no-paths"),
    ],
)
def test_bad_corpus_gives_one_clear_error(tmp_path, setup, message):
    paths = setup(tmp_path)
    with pytest.raises(MulfreeError, match=message.replace("(", r"\(")) as e:
        read_documents(paths)
    assert "\n" not in str(e.value)
