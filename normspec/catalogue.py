"""The catalogue view: which properties apply to which norm on which backend, and why not."""
from __future__ import annotations

from rich.table import Table

from normspec.impls.base import available_backends
from normspec.properties import PROPERTIES
from normspec.registry import norms


def catalogue_rows():
    """(norm, paper, {backend: "n/m properties" or reason}) for every registered norm."""
    backends, absent = available_backends()
    for record in norms().values():
        cells = {}
        applicable = [p for p in PROPERTIES.values() if p.applies(record)]
        for name, backend in backends.items():
            if backend.implements(record.name):
                cells[name] = f"{len(applicable)}/{len(PROPERTIES)} properties"
            else:
                cells[name] = "not implemented"
        for name, why in absent.items():
            cells[name] = f"absent: {why}"
        yield record, applicable, cells


def catalogue_table() -> Table:
    rows = list(catalogue_rows())
    backends = list(dict.fromkeys(b for _, _, cells in rows for b in cells))
    table = Table(title="normspec catalogue")
    table.add_column("norm")
    table.add_column("paper")
    table.add_column("traits")
    for b in backends:
        table.add_column(b)
    for record, applicable, cells in rows:
        table.add_row(record.name, record.paper, ", ".join(sorted(record.traits)), *(cells.get(b, "") for b in backends))
    return table
