"""Model cards (README.md) with Hugging Face Hub front matter, for the directories mulfree writes.

The front matter is huggingface_hub's (`ModelCardData`): `library_name: mulfree`,
`pipeline_tag: text-generation` and tags, over whatever a source card already had (its
`license`, `datasets`, ... are kept, as is its text)."""

from __future__ import annotations

from pathlib import Path


def hub_card(src_readme: Path | None, *, title: str, section: str, text: str,
             tags: tuple[str, ...]) -> str:  # fmt: skip
    """The card: `src_readme`'s front matter and text (if it exists; an earlier `section` of
    ours in it is dropped, so re-writing does not stack them), or a `# title` heading, followed
    by `section` (a "## ..." heading) and `text`."""
    from huggingface_hub import ModelCard, ModelCardData

    data, body = {}, ""
    if src_readme is not None and src_readme.is_file():
        raw = src_readme.read_text(encoding="utf-8")
        if raw.startswith("---"):  # front matter (else ModelCard logs that it found none)
            card = ModelCard(raw, ignore_metadata_errors=True)
            data, raw = card.data.to_dict(), card.text
        old = raw.split(section)[0].strip()
        body = old + "\n\n" if old else ""
    data.setdefault("library_name", "mulfree")
    data.setdefault("pipeline_tag", "text-generation")
    data["tags"] = list(dict.fromkeys([*(data.get("tags") or []), *tags]))
    if not body:
        body = f"# {title}\n\n"
    return f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n{body}{section}\n\n{text.strip()}\n"
