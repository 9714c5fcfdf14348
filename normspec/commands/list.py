"""`normspec list`: the catalogue of norms x backends x properties."""
from __future__ import annotations

from rich.console import Console

from normspec.cli import EXIT_OK


def cmd_list(args) -> int:
    from normspec.catalogue import catalogue_table

    Console().print(catalogue_table())
    return EXIT_OK


def register(sub) -> None:
    lst = sub.add_parser("list", help="print the catalogue: norms x backends x properties")
    lst.set_defaults(func=cmd_list)
