"""Shared pieces of the command line: the help formatter, hidden aliases, the llama.cpp-style
generation flags and where a prompt comes from.

One spelling per option across commands (`--mantissa-bits` for the L-Mul width, `--threads`,
`-m/--model`); an older spelling stays accepted as a hidden alias (`hidden_alias`). The old
spellings of the L-Mul width (`--k`, `--lmul-bits`, `serve --lmul`) are deprecated: they still
work for one release and print a one-line note naming the new spelling (`deprecated=`)."""

from __future__ import annotations

import argparse
import sys

from mulfree.errors import MulfreeError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it is None/False/empty (nothing to show) or the
    help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or d is None
            or d is False
            or d == argparse.SUPPRESS
            or (isinstance(d, list | tuple) and not d)
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return super()._get_help_string(action)


class _DeprecatedAlias(argparse.Action):
    """Store the value like the option it stands for, after a one-line deprecation note."""

    def __init__(self, *args, use: str, **kw):
        self.use = use
        super().__init__(*args, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"mulfree: FutureWarning: {option_string} is deprecated and will be removed; "
              f"use {self.use}", file=sys.stderr)  # fmt: skip
        setattr(namespace, self.dest, values)


def hidden_alias(parser, *names: str, dest: str, deprecated: str | None = None, **kw) -> None:
    """Accept `names` for `dest` without listing them in --help (an old spelling). With
    `deprecated` (the option's one spelling, e.g. "--mantissa-bits"), using an old name prints
    a one-line FutureWarning note to stderr naming it."""
    if deprecated is not None:
        kw.update(action=_DeprecatedAlias, use=deprecated)
    parser.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


MANTISSA_BITS = "--mantissa-bits"  # the one spelling of the L-Mul width on every command


def add_prompt_args(p) -> None:
    """PROMPT (positional), -p/--prompt TEXT, -f/--file FILE; "-" (or a pipe) reads stdin."""
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text ('-': read it from stdin; default: stdin when piped)")
    p.add_argument("-p", "--prompt", dest="prompt_opt", default=None, metavar="TEXT",
                   help="prompt text (as llama.cpp's -p)")
    p.add_argument("-f", "--file", default=None, metavar="FILE",
                   help="read the prompt from FILE ('-': stdin)")  # fmt: skip


def read_prompt(args, stdin=None) -> str:
    """The one prompt the flags give; several sources, or none on a terminal, are an error."""
    stdin = stdin or sys.stdin
    given = [x for x in (args.prompt, args.prompt_opt) if x is not None]
    if args.file is not None:
        given.append(("file", args.file))
    if len(given) > 1:
        raise MulfreeError("give the prompt once: as PROMPT, -p TEXT or -f FILE")
    if not given:
        if stdin.isatty():
            raise MulfreeError("no prompt: give PROMPT, -p TEXT, -f FILE, or pipe it on stdin")
        return stdin.read()
    src = given[0]
    if isinstance(src, tuple):
        if src[1] == "-":
            return stdin.read()
        try:
            with open(src[1], encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise MulfreeError(f"cannot read the prompt file {src[1]}: {e}") from None
    return stdin.read() if src == "-" else src


def add_sampling_args(p) -> None:
    """llama.cpp's sampling flags, defaults from `mulfree.engine.sampler.SamplerConfig()` (the
    ones the server and its page use too)."""
    from mulfree.engine.sampler import SamplerConfig

    d = SamplerConfig()
    g = p.add_argument_group("sampling (llama.cpp's flags and defaults)")
    g.add_argument("--temp", "--temperature", dest="temperature", type=float,
                   default=d.temperature, help="sampling temperature; 0 = greedy")
    g.add_argument("--top-k", type=int, default=d.top_k, help="keep the k most likely, 0 = off")
    g.add_argument("--top-p", type=float, default=d.top_p, help="nucleus mass, 1 = off")
    g.add_argument("--min-p", type=float, default=d.min_p,
                   help="drop tokens below this fraction of the top one's probability, 0 = off")
    g.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty,
                   help="penalize the last --repeat-last-n tokens, 1 = off")
    g.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n,
                   help="tokens the penalties look back on")
    g.add_argument("--presence-penalty", type=float, default=d.presence_penalty,
                   help="subtracted once from a recent token's logit, 0 = off")
    g.add_argument("--frequency-penalty", type=float, default=d.frequency_penalty,
                   help="subtracted per occurrence of a recent token, 0 = off")
    g.add_argument("-s", "--seed", type=int, default=None,
                   help="sampling seed, for a reproducible run (default: random, printed)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before TEXT (repeatable)")  # fmt: skip
