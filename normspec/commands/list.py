"""`normspec list`: the catalogue of norms x backends x properties."""
from __future__ import annotations

import sys

from rich.console import Console

from normspec.cli import EXIT_OK, EXIT_USAGE


def cmd_list(args) -> int:
    from normspec.catalogue import catalogue_markdown, catalogue_table, norm_detail_table
    from normspec.registry import get_norm

    if args.markdown:
        print(catalogue_markdown())
        return EXIT_OK
    console = Console() if sys.stdout.isatty() else Console(width=250)  # piped: never truncate names
    if args.norm:
        try:
            records = [get_norm(n) for n in args.norm.split(",")]
        except KeyError as exc:
            print(f"normspec list: {exc.args[0]}", file=sys.stderr)
            return EXIT_USAGE
        for record in records:
            console.print(norm_detail_table(record))
        return EXIT_OK
    console.print(catalogue_table())
    return EXIT_OK


def register(sub) -> None:
    lst = sub.add_parser("list", help="print the catalogue: norms x backends x properties")
    lst.add_argument("--norm", help="show every property for these norms (comma-separated): runs or skipped, and why")
    lst.add_argument("--markdown", action="store_true", help="the short table the README carries")
    lst.set_defaults(func=cmd_list)
