"""The `mulfree` command line: parse -> config -> one importable function per subcommand.

Each feature module exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func` on the parser to a callable taking the parsed namespace. Handlers import their heavy
dependencies lazily so `mulfree --help` stays fast.
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


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's usage-error code), no usage dump
        sys.stderr.write(f"mulfree: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mulfree", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
