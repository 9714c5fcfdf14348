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
# A pass judged on a property's forward half alone (a forward-only engine; Verdict.forward_half).
FORWARD_HALF_SHORT = "pass*"
FORWARD_HALF_LEGEND = "pass* / fwd half: passed on the forward half only (a forward-only engine: gradients not checked)"


def forward_half_pass(v: Verdict) -> bool:
    """A pass of the property's forward half alone: never to be read as a full pass."""
    return v.status == "passed" and v.forward_half


def cell_status(v: Verdict) -> str:
    """The status a matrix cell shows: a forward-half pass is not a plain 'passed'."""
    return "passed (forward half only)" if forward_half_pass(v) else v.status


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
            if v is None:
                cells.append("")
                continue
            short = FORWARD_HALF_SHORT if forward_half_pass(v) else SHORT[v.status]
            cells.append(f"[{STYLE[v.status]}]{short}[/]")
        table.add_row(prop, *cells)
    if any(forward_half_pass(v) for v in verdicts):
        table.caption = FORWARD_HALF_LEGEND
    return table


def not_implemented(v: Verdict) -> bool:
    """A skip because the backend has no kernel for the norm at all (folded into one line per backend)."""
    return v.status == "skipped" and v.reason == f"{v.backend} does not implement {v.norm}"


def not_applicable(v: Verdict) -> bool:
    return v.status == "skipped" and v.reason.startswith("does not apply")


SUMMARY_COLUMNS = (("passed", "passed", "green"), ("fwd_half", "fwd half", "cyan"), ("xfail", "xfail", "yellow"),
                   ("xpass", "XPASS", "magenta"), ("failed", "FAILED", "bold red"), ("skipped", "skipped", "dim"),
                   ("n/a", "n/a", "dim"))


def summary_rows(verdicts: list[Verdict]) -> list[tuple[str, str, dict[str, int]]]:
    """(norm, backend, counts) per pair the backend implements; n/a: properties that do not apply;
    fwd_half: passes of the forward half alone (counted there, not under passed)."""
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for v in verdicts:
        if not_implemented(v):
            continue
        counts = rows.setdefault((v.norm, v.backend), {k: 0 for k, _, _ in SUMMARY_COLUMNS})
        counts["n/a" if not_applicable(v) else "fwd_half" if forward_half_pass(v) else v.status] += 1
    return [(n, b, c) for (n, b), c in rows.items()]


def summary_table(verdicts: list[Verdict], title: str = "normspec check") -> Table:
    """One row per norm x backend with counts: fits 100 columns for the whole catalogue."""
    rows = summary_rows(verdicts)
    shown = [(k, label, style) for k, label, style in SUMMARY_COLUMNS
             if k in ("passed", "failed", "xfail", "n/a") or any(c[k] for _, _, c in rows)]
    table = Table(title=title, title_justify="left")
    table.add_column("norm", no_wrap=True)
    table.add_column("backend", no_wrap=True)
    for _, label, _ in shown:
        table.add_column(label, justify="right", no_wrap=True)
    for norm, backend, counts in rows:
        cells = [f"[{style}]{counts[k]}[/]" if counts[k] and k not in ("n/a", "skipped", "passed")
                 else (str(counts[k]) if counts[k] else "[dim]·[/]") for k, _, style in shown]
        table.add_row(norm, backend, *cells)
    if any(c["fwd_half"] for _, _, c in rows):
        table.caption = FORWARD_HALF_LEGEND
        table.caption_justify = "left"
    return table


def folded_not_implemented(verdicts: list[Verdict]) -> dict[str, list[str]]:
    """{backend: [norms it does not implement]} among the checked pairs."""
    out: dict[str, list[str]] = {}
    for v in verdicts:
        if not_implemented(v) and v.norm not in out.setdefault(v.backend, []):
            out[v.backend].append(v.norm)
    return out


def matrix_json(verdicts: list[Verdict]) -> dict[str, dict[str, str]]:
    """{property: {"norm/backend": status}}: the full property matrix."""
    m: dict[str, dict[str, str]] = {}
    for v in verdicts:
        m.setdefault(v.property, {})[f"{v.norm}/{v.backend}"] = cell_status(v)
    return m


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


def to_json(verdicts: list[Verdict], seconds: float, profile: str, absent: dict[str, str], *,
            complete: bool = True, planned: int | None = None, warnings: dict[str, int] | None = None) -> str:
    return json.dumps({
        "profile": profile,
        "complete": complete,
        "planned": len(verdicts) if planned is None else planned,
        "seconds": round(seconds, 3),
        "summary": summary(verdicts),
        # passes judged on the forward half alone (a forward-only engine): included in summary.passed
        "forward_half_only": sum(forward_half_pass(v) for v in verdicts),
        "absent_backends": absent,
        "not_implemented": folded_not_implemented(verdicts),
        "captured_warnings": warnings or {},
        "matrix": matrix_json(verdicts),
        "results": [
            {
                "property": v.property, "norm": v.norm, "backend": v.backend, "status": v.status,
                "message": v.message, "reason": v.reason, "link": v.link, "forward_half": v.forward_half,
                "counterexample": counterexample_text(v) if v.draws else "",
                "reproducer": v.reproducer, "seconds": round(v.seconds, 3),
            }
            for v in verdicts
        ],
    }, indent=2)


def print_details(console: Console, verdicts: list[Verdict]) -> None:
    """Failures (each with its counterexample and reproducer), then expected failures grouped by
    their reason (each reason and link once), then other skips grouped by reason."""
    for v in verdicts:
        if v.status == "failed":
            console.print(f"\n[bold red]FAIL[/] {v.property} · {v.norm} · {v.backend}", highlight=False)
            console.print(f"  {v.message}", markup=False, highlight=False)
            if v.draws:
                console.print(f"  minimal counterexample: {counterexample_text(v)}", markup=False, highlight=False)
            if v.reproducer:
                console.print(f"  reproducer: python {v.reproducer}", markup=False, highlight=False)
    for status, tag in (("xfail", "expected failure"), ("xpass", "XPASS (expected to fail, passed: upstream fixed?)")):
        groups: dict[tuple[str, str], list[Verdict]] = {}
        for v in verdicts:
            if v.status == status:
                groups.setdefault((v.reason, v.link), []).append(v)
        for (reason, link), vs in groups.items():
            where = ", ".join(f"{v.property} · {v.norm} · {v.backend}" for v in vs)
            console.print(f"\n[yellow]{tag}[/] ({len(vs)}): {where}", highlight=False)
            console.print(f"  {reason}", markup=False, highlight=False)
            if link:
                console.print(f"  {link}", markup=False, highlight=False)
    halves = [v for v in verdicts if forward_half_pass(v)]
    if halves:
        by_backend: dict[str, list[Verdict]] = {}
        for v in halves:
            by_backend.setdefault(v.backend, []).append(v)
        for backend, vs in by_backend.items():
            where = ", ".join(f"{v.property} · {v.norm}" for v in vs[:6])
            more = f" and {len(vs) - 6} more" if len(vs) > 6 else ""
            console.print(f"[cyan]passed on the forward half only[/] ({len(vs)}, {backend} is forward-only, "
                          f"its gradients are not checked): {where}{more}", highlight=False)
    skips: dict[str, list[Verdict]] = {}
    for v in verdicts:
        if v.status == "skipped" and not not_applicable(v) and not not_implemented(v):
            skips.setdefault(v.reason, []).append(v)
    for reason, vs in skips.items():
        where = ", ".join(f"{v.property} · {v.norm} · {v.backend}" for v in vs[:6])
        more = f" and {len(vs) - 6} more" if len(vs) > 6 else ""
        console.print(f"[dim]skipped ({reason}): {where}{more}[/]", highlight=False)
    for backend, missing in folded_not_implemented(verdicts).items():
        console.print(f"[dim]{backend} does not implement {len(missing)} norm(s), not checked: "
                      f"{', '.join(missing)}[/]", highlight=False)


def to_junit(verdicts: list[Verdict], seconds: float, *, complete: bool = True) -> str:
    """JUnit XML: one testsuite per norm x backend, one testcase per property (skips and expected
    failures as <skipped>, failures with their counterexample and reproducer)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="normspec check", time=f"{seconds:.3f}")
    if not complete:
        root.set("incomplete", "true")
    suites: dict[tuple[str, str], Any] = {}
    for v in verdicts:
        key = (v.norm, v.backend)
        if key not in suites:
            suites[key] = ET.SubElement(root, "testsuite", name=f"normspec.check.{v.norm}.{v.backend}")
        case = ET.SubElement(suites[key], "testcase", classname=f"{v.norm}.{v.backend}", name=v.property,
                             time=f"{v.seconds:.3f}")
        if v.status == "failed":
            f = ET.SubElement(case, "failure", message=v.message[:500])
            f.text = "\n".join(filter(None, [v.message, v.draws and "minimal counterexample: " + counterexample_text(v),
                                             v.reproducer and f"reproducer: python {v.reproducer}"]))
        elif v.status in ("skipped", "xfail"):
            ET.SubElement(case, "skipped", message=(v.reason + (f" {v.link}" if v.link else ""))[:500])
        elif forward_half_pass(v):
            ET.SubElement(case, "system-out").text = v.reason
    for (norm, backend), suite in suites.items():
        mine = [v for v in verdicts if (v.norm, v.backend) == (norm, backend)]
        suite.set("tests", str(len(mine)))
        suite.set("failures", str(sum(v.status == "failed" for v in mine)))
        suite.set("skipped", str(sum(v.status in ("skipped", "xfail") for v in mine)))
        suite.set("time", f"{sum(v.seconds for v in mine):.3f}")
    return ET.tostring(root, encoding="unicode")
