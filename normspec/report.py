"""Reports: the rich matrix, JSON, and standalone reproducer scripts for failures."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from normspec.library.case import Case
from normspec.library.strategies import Reach
from normspec.properties import Verdict

STYLE = {"passed": "green", "failed": "bold red", "xfail": "yellow", "xpass": "magenta", "skipped": "dim"}
SHORT = {"passed": "pass", "failed": "FAIL", "xfail": "xfail", "xpass": "XPASS", "skipped": "skip"}


def matrix_table(verdicts: list[Verdict]) -> Table:
    """Rows: property; columns: norm / backend; cells: the verdict."""
    columns = list(dict.fromkeys((v.norm, v.backend) for v in verdicts))
    rows = list(dict.fromkeys(v.property for v in verdicts))
    cell = {(v.property, v.norm, v.backend): v for v in verdicts}
    table = Table(title="normspec check", show_lines=False)
    table.add_column("property")
    for norm, backend in columns:
        table.add_column(f"{norm}\n{backend}", justify="center")
    for prop in rows:
        cells = []
        for norm, backend in columns:
            v = cell.get((prop, norm, backend))
            cells.append("" if v is None else f"[{STYLE[v.status]}]{SHORT[v.status]}[/]")
        table.add_row(prop, *cells)
    return table


def summary(verdicts: list[Verdict]) -> dict[str, int]:
    counts = {s: 0 for s in STYLE}
    for v in verdicts:
        counts[v.status] += 1
    return counts


def value_source(value: Any) -> str:
    if isinstance(value, Case):
        return value.to_source()
    if isinstance(value, np.ndarray):
        return f"np.array({value.ravel().tolist()!r}, dtype=np.float64).reshape({tuple(value.shape)!r})"
    return repr(value)


def reproducer_source(v: Verdict) -> str:
    draws = ",\n".join(f"    ({label!r}, {value_source(value)})" for label, value in v.draws)
    message = "\n".join("# " + line for line in v.message.splitlines())
    return f'''"""Reproducer: property {v.property} fails for norm {v.norm} on backend {v.backend}.

Written by `normspec check`. Run it with `python {{this file}}`: it replays the minimal
counterexample Hypothesis found and raises the same PropertyFailure while the bug is there.
"""
# Failure:
{message}
import numpy as np

from normspec.library.case import Case
from normspec.library.strategies import Reach
from normspec.impls.base import available_backends
from normspec.properties import replay
from normspec.registry import get_norm

draws = [
{draws},
]

backends, absent = available_backends([{v.backend!r}])
if {v.backend!r} not in backends:
    raise SystemExit(f"backend {v.backend} is not available here: {{absent}}")
replay({v.property!r}, get_norm({v.norm!r}), backends[{v.backend!r}], draws)
print("the property holds now: the failure no longer reproduces")
'''


def write_reproducer(v: Verdict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", f"{v.norm}__{v.backend}__{v.property}")
    path = directory / f"repro_{stem}.py"
    path.write_text(reproducer_source(v))
    return path


def counterexample_text(v: Verdict) -> str:
    parts = []
    for label, value in v.draws:
        if isinstance(value, Case):
            parts.append(f"{label}: {value.describe()}")
        elif isinstance(value, (int, float, str, bool, type(None))):
            parts.append(f"{label}={value!r}")
        elif isinstance(value, Reach):
            parts.append(f"{label}: {value.describe()}")
    return "; ".join(parts)


def to_json(verdicts: list[Verdict], seconds: float, profile: str, absent: dict[str, str]) -> str:
    return json.dumps({
        "profile": profile,
        "seconds": round(seconds, 3),
        "summary": summary(verdicts),
        "absent_backends": absent,
        "results": [
            {
                "property": v.property, "norm": v.norm, "backend": v.backend, "status": v.status,
                "message": v.message, "reason": v.reason, "link": v.link,
                "counterexample": counterexample_text(v) if v.draws else "",
                "reproducer": v.reproducer, "seconds": round(v.seconds, 3),
            }
            for v in verdicts
        ],
    }, indent=2)


def print_details(console: Console, verdicts: list[Verdict]) -> None:
    for v in verdicts:
        if v.status == "failed":
            console.print(f"\n[bold red]FAIL[/] {v.property} · {v.norm} · {v.backend}")
            console.print(f"  {v.message}", markup=False, highlight=False)
            if v.draws:
                console.print(f"  minimal counterexample: {counterexample_text(v)}", markup=False, highlight=False)
            if v.reproducer:
                console.print(f"  reproducer: python {v.reproducer}", markup=False, highlight=False)
        elif v.status in ("xfail", "xpass"):
            tag = "expected failure" if v.status == "xfail" else "XPASS (expected to fail, passed: upstream fixed?)"
            console.print(f"\n[yellow]{tag}[/] {v.property} · {v.norm} · {v.backend}: {v.reason} {v.link}",
                          highlight=False)
    skipped = [v for v in verdicts if v.status == "skipped" and not v.reason.startswith("does not apply")]
    for v in skipped:
        console.print(f"[dim]skipped {v.property} · {v.norm} · {v.backend}: {v.reason}[/]", highlight=False)
