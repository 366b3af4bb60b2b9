"""`mulfree lmul ...` subcommands."""


def register(sub):
    p = sub.add_parser("lmul", help="L-Mul numerics: error analysis and checks")
    p.set_defaults(func=lambda a: p.print_help() or 2)
