"""The `mulfree` command line: parse -> config -> one importable function per subcommand.

Each feature module exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func` on the parser to a callable taking the parsed namespace. Handlers import their heavy
dependencies lazily so `mulfree --help` stays fast. Every parser shows its defaults
(`mulfree._argparse.HelpFormatter`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mulfree.errors import MulfreeError

# Modules that contribute subcommands (each has `register(subparsers)`).
COMMAND_MODULES = [
    "mulfree.lmul.cli",
    "mulfree.energy.cli",
    "mulfree.train.cli",
    "mulfree.hub.cli",
    "mulfree.eval.cli",
    "mulfree.serve.cli",
    "mulfree.engine.cli",
    "mulfree.report.cli",
    "mulfree.hw.cli",
]


DESCRIPTION = """\
mulfree: language models without floating-point multiplication, on the CPU.

Multiplication-free (MatMul-free, ternary) language models on packed add-only kernels, L-Mul
numerics for any Hugging Face model, evaluation, an OpenAI-compatible server and energy
estimates."""

EPILOG = """\
examples:
  mulfree generate -p "Once upon a time" -n 64       text from the bundled model
  mulfree generate -m packed/ -f prompt.txt --temp 0  greedy, prompt from a file
  echo "Hello" | mulfree generate -m packed/         prompt from stdin
  mulfree convert CHECKPOINT packed/                  pack a model (tq1 ternary)
  mulfree serve -m packed/ --port 8000                OpenAI API + web page at /
  mulfree eval --model DIR --tasks piqa --limit 200   zero-shot accuracy
  mulfree lm-eval --model hf --model_args pretrained=DIR --tasks piqa
                                                      lm-evaluation-harness on our models

`mulfree COMMAND --help` shows a command's options and their defaults."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        from mulfree._argparse import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2 (argparse's usage-error code), no usage dump
        sys.stderr.write(f"mulfree: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mulfree", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # everything after it is lm-eval's, options included
        argv = ["lm-eval", "--", *argv[1:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from mulfree import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)  # hgrn_bit reaches transformers' Auto classes when they load
    except MulfreeError as e:
        sys.stderr.write(f"mulfree: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mulfree: interrupted\n")
        return 130
    except Exception as e:  # a CLI user gets one line; MULFREE_DEBUG=1 shows the traceback
        if os.environ.get("MULFREE_DEBUG"):
            raise
        sys.stderr.write(f"mulfree: error: {type(e).__name__}: {e}\n")
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
