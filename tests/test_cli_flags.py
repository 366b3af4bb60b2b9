"""The command line: llama.cpp-style short flags, prompts from a file or stdin, --stop, one
spelling per option (old ones hidden aliases), defaults in every --help, a user-facing
`mulfree --help`."""

from __future__ import annotations

import argparse
import io

import pytest

from mulfree.cli import build_parser, main
from mulfree.engine.generate import GenerateConfig, bundled_packed, generate

pytestmark = pytest.mark.skipif(bundled_packed() is None, reason="no bundled packed model")


class _Stdin(io.StringIO):
    def __init__(self, text: str, tty: bool = False):
        super().__init__(text)
        self.tty = tty

    def isatty(self):
        return self.tty


def _out(argv, capsys, monkeypatch, stdin: _Stdin | None = None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", stdin)
    assert main(argv) == 0
    return capsys.readouterr().out


LONG = ["generate", "--model", "{m}", "--max-tokens", "6", "--temperature", "0.9", "--seed", "3",
        "--threads", "1", "--quiet"]  # fmt: skip
SHORT = ["generate", "-m", "{m}", "-n", "6", "--temp", "0.9", "-s", "3", "-t", "1", "--quiet"]


def test_short_flags_and_prompt_sources_give_the_same_text(capsys, monkeypatch, tmp_path):
    m = str(bundled_packed())
    long = [a.format(m=m) for a in LONG]
    short = [a.format(m=m) for a in SHORT]
    want = _out([*long, "ROMEO:"], capsys, monkeypatch)
    assert want.strip()
    assert _out([*short, "-p", "ROMEO:"], capsys, monkeypatch) == want
    f = tmp_path / "prompt.txt"
    f.write_text("ROMEO:")
    assert _out([*short, "-f", str(f)], capsys, monkeypatch) == want
    assert _out([*short, "-"], capsys, monkeypatch, _Stdin("ROMEO:")) == want  # `-`
    assert _out(short, capsys, monkeypatch, _Stdin("ROMEO:")) == want  # a pipe
    assert _out([*short, "-f", "-"], capsys, monkeypatch, _Stdin("ROMEO:")) == want
    # hidden old/other spellings land on the same options
    assert _out([*short[:3], "--n-predict", "6", *short[5:], "ROMEO:"], capsys, monkeypatch) == want


@pytest.mark.parametrize(
    "argv, stdin, message",
    [
        (["-p", "a", "b"], None, "give the prompt once"),
        ([], _Stdin("", tty=True), "no prompt"),
        (["-f", "/nonexistent/prompt.txt"], None, "cannot read the prompt file"),
        (["--stop", "", "x"], None, "stop strings"),
    ],
    ids=["two-prompts", "no-prompt-on-a-terminal", "missing-file", "empty-stop"],
)
def test_prompt_errors_are_one_line(argv, stdin, message, capsys, monkeypatch):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", stdin)
    assert main(["generate", "-m", str(bundled_packed()), "-n", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_stop_ends_generate_before_the_stop_string(capsys, monkeypatch):
    cfg = dict(model=str(bundled_packed()), max_tokens=40, temperature=0, energy=False)
    free = generate(GenerateConfig("ROMEO:", **cfg)).text
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    assert stop.strip() and stop in free
    streamed = []
    r = generate(GenerateConfig("ROMEO:", stop=(stop,), **cfg), on_text=streamed.append)
    assert r.text == free[: free.index(stop)] == "".join(streamed)
    assert r.stop_reason == "stop"
    m = str(bundled_packed())
    out = _out(["generate", "-m", m, "-n", "40", "--temp", "0", "--stop", stop, "--stop", "\x00",
                "--quiet", "ROMEO:"], capsys, monkeypatch)  # fmt: skip
    assert out == r.text + "\n"


ALIASES = [
    (["energy", "--model", "x", "--lmul-bits", "4"], ["energy", "--model", "x", "--mantissa-bits", "4"],
     "lmul_bits"),
    (["lmul", "matmul", "--k", "3"], ["lmul", "matmul", "--mantissa-bits", "3"], "k"),
    (["lmul", "error", "--k", "2-3"], ["lmul", "error", "--mantissa-bits", "2-3"], "k"),
    (["serve", "--lmul", "3"], ["serve", "--mantissa-bits", "3"], "lmul"),
    (["train", "--out", "o", "--num-threads", "2"], ["train", "--out", "o", "-t", "2"], "num_threads"),
    (["generate", "--n-predict", "7"], ["generate", "-n", "7"], "max_tokens"),
    (["serve", "-t", "2"], ["serve", "--threads", "2"], "threads"),
    (["eval", "--model", "x", "--mantissa-bits", "3"], ["eval", "--model", "x",
                                                        "--mantissa-bits", "3"], "mantissa_bits"),
]  # fmt: skip


@pytest.mark.parametrize("old, new, dest", ALIASES, ids=[a[2] + "-" + a[0][0] for a in ALIASES])
def test_old_spellings_are_hidden_aliases(old, new, dest):
    p = build_parser()
    assert getattr(p.parse_args(old), dest) == getattr(p.parse_args(new), dest)
    assert getattr(p.parse_args(new), dest) is not None


# the old spellings of the L-Mul width: still accepted, with a one-line deprecation note
DEPRECATED = [(old, new) for old, new, _ in ALIASES
              if any(a in ("--k", "--lmul-bits", "--lmul") for a in old)]  # fmt: skip


@pytest.mark.parametrize("old, new", DEPRECATED, ids=[" ".join(o[:2]) for o, _ in DEPRECATED])
def test_old_mantissa_spellings_print_one_deprecation_line(old, new, capsys):
    p = build_parser()
    p.parse_args(new)
    assert capsys.readouterr().err == ""  # the one spelling: no note
    p.parse_args(old)
    err = capsys.readouterr().err
    used = next(a for a in old if a in ("--k", "--lmul-bits", "--lmul"))
    assert err.count("\n") == 1 and err.startswith("mulfree: FutureWarning: " + used), err
    assert "deprecated" in err and "use --mantissa-bits" in err


def test_deprecated_aliases_cover_every_old_mantissa_spelling():
    used = {a for o, _ in DEPRECATED for a in o if a in ("--k", "--lmul-bits", "--lmul")}
    assert used == {"--k", "--lmul-bits", "--lmul"}
    assert len(DEPRECATED) == 4  # energy --lmul-bits, lmul matmul/error --k, serve --lmul


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_every_help_shows_the_defaults_and_no_old_spelling():
    parser = build_parser()
    subs = dict(_subparsers(parser))
    assert {"generate", "serve", "eval", "convert", "train", "energy"} <= set(subs)
    for name, sub in subs.items():
        text = sub.format_help()
        for old in ("--num-threads", "--lmul-bits", "--n-predict", " --k ", "--lmul "):
            assert old not in text, (name, old)
        for a in sub._actions:
            d = a.default
            if a.help in (None, argparse.SUPPRESS) or d in (None, False, argparse.SUPPRESS):
                continue
            if isinstance(d, list | tuple) and not d or isinstance(a, argparse._HelpAction):
                continue
            assert "default" in sub._get_formatter()._expand_help(a), (name, a.dest)
    top = parser.format_help()
    assert "examples:" in top and "mulfree generate -p" in top and "parse ->" not in top


def test_serve_takes_the_model_as_option_or_positional_once(monkeypatch, capsys):
    from mulfree.serve import cli as serve_cli

    seen = []
    monkeypatch.setattr("mulfree.serve.serve", lambda cfg: seen.append(cfg))
    p = build_parser()
    for argv in (["serve", "-m", "d1", "-t", "2"], ["serve", "d1", "--threads", "2"]):
        assert serve_cli.cmd_serve(p.parse_args(argv)) == 0
    assert [(c.model, c.threads) for c in seen] == [("d1", 2), ("d1", 2)]
    assert main(["serve", "d1", "-m", "d2"]) == 2
    assert "give the model once" in capsys.readouterr().err


def test_energy_line_without_the_compiled_core_reports_no_saving():
    import subprocess
    import sys

    env = {**__import__("os").environ, "MULFREE_DISABLE_C": "1"}
    env.pop("MULFREE_REQUIRE_C", None)  # .ci/run sets it; this test is the missing-core case
    r = subprocess.run([sys.executable, "-m", "mulfree.cli", "generate", "-p", "ROMEO:", "-n", "2",
                        "--temp", "0"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stderr.splitlines() if x.startswith("energy per token"))
    assert "x less" not in line and "the compiled core is missing" in line
    assert "--only-binary mulfree" in line
