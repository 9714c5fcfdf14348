"""`normspec check`: every property x norm x backend; a summary per norm x backend, the matrix on request."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from normspec import guard
from normspec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from normspec.cli import split_names as _split
from normspec.properties.core import PROFILES


def check_outputs(args) -> None:
    """Every output path is checked before any work (guard.PathError: exit 2)."""
    guard.check_report_outputs(args)


def _write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def cmd_check(args) -> int:
    from normspec.matrix import SelectionError, plan, run_plan
    from normspec.report import (
        forward_half_pass,
        matrix_table,
        not_applicable,
        not_implemented,
        print_details,
        summary,
        summary_table,
        to_json,
        to_junit,
        write_reproducer,
    )

    try:
        p = plan(_split(args.norm), _split(args.backend), _split(args.property))
        check_outputs(args)
    except (SelectionError, guard.PathError) as exc:
        print(f"normspec check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    guard.configure_hypothesis(None if args.hypothesis_db in (None, "none") else args.hypothesis_db,
                         database=args.hypothesis_db != "none")
    console = Console(stderr=args.json == "-")
    if not console.is_terminal:  # a log or a pipe: 100 columns, the width the summary is laid out for
        console = Console(stderr=args.json == "-", width=100)
    for name, why in p.absent_backends.items():
        console.print(f"[dim]backend {name} not available: {why}[/]", highlight=False)
    if not p.backends:
        print("normspec check: no backend is available", file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    verdicts: list = []
    warned: dict[str, int] = {}
    interrupted = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=args.quiet or not console.is_terminal) as progress:
        task = progress.add_task("checking", total=p.size)

        def advance(v):
            progress.update(task, advance=1, description=f"{v.norm} · {v.backend} · {v.property}")

        try:
            run_plan(p, args.profile, advance, into=verdicts, warned=warned)
        except KeyboardInterrupt as exc:
            interrupted = exc
    seconds = time.perf_counter() - start
    complete = interrupted is None
    report_dir = Path(args.report_dir) if args.report_dir else \
        guard.cache_dir() / "reports" / time.strftime(f"check-%Y%m%d-%H%M%S-{os.getpid()}")
    for v in verdicts:
        if v.status == "failed" and v.draws:
            v.reproducer = str(write_reproducer(v, report_dir))
    if args.matrix:
        console.print(matrix_table(verdicts))
    console.print(summary_table(verdicts, title="normspec check" + ("" if complete else " (interrupted)")))
    print_details(console, verdicts)
    if warned:
        console.print(f"[dim]{sum(warned.values())} warning(s) raised inside the checked code were captured, "
                      f"not shown ({len(warned)} distinct; listed under captured_warnings in --json)[/]",
                      highlight=False)
    for backend in p.backends:
        for line in backend.notes():
            console.print(f"[dim]{line}[/]", highlight=False)
    counts = summary(verdicts)
    na = sum(not_applicable(v) for v in verdicts)
    missing = sum(not_implemented(v) for v in verdicts)
    halves = sum(forward_half_pass(v) for v in verdicts)
    passed = f"{counts['passed']} passed" + (f" ({halves} on the forward half only)" if halves else "")
    parts = [passed, f"{counts['failed']} failed", f"{counts['xfail']} xfail"]
    parts += [f"{counts['xpass']} XPASS"] * bool(counts["xpass"])
    parts += [f"{counts['skipped'] - na - missing} skipped"] * bool(counts["skipped"] - na - missing)
    parts += [f"{na} not applicable", f"{missing} not implemented by the backend"]
    done = f"; {len(verdicts)} of {p.size} checks" if not complete else ""
    console.print(", ".join(parts) + f" in {seconds:.1f}s (profile {args.profile}{done})", highlight=False)
    if args.json:
        text = to_json(verdicts, seconds, args.profile, p.absent_backends, complete=complete, planned=p.size,
                       warnings=warned)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            _write(args.json, text)
    if args.junit_xml:
        _write(args.junit_xml, to_junit(verdicts, seconds, complete=complete))
    if interrupted is not None:
        kept = f"{len(verdicts)} of {p.size} results shown" + (
            " and written (marked incomplete)" if args.json or args.junit_xml else "")
        print(guard.interrupted_message("check", interrupted, kept), file=sys.stderr)
        return guard.exit_status(interrupted)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def register(sub) -> None:
    check = sub.add_parser("check", help="run every property x norm x backend; print a summary per norm x backend")
    check.add_argument("--norm", action="append", help="norm(s) to check (repeat or comma-separate); default all")
    check.add_argument("--backend", action="append", help="backend(s) to check; default every installed one "
                       "except the opt-in engines (torch:inductor, jax, onnxruntime), which run when named")
    check.add_argument("--property", action="append", help="property(ies) to check; default all")
    check.add_argument("--profile", choices=list(PROFILES), default="ci",
                       help="Hypothesis profile: dev (fast), ci (deterministic, default), thorough")
    check.add_argument("--matrix", action="store_true",
                       help="also print the full matrix (a row per property, a column per norm x backend)")
    check.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")
    check.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report to FILE")
    check.add_argument("--report-dir", help="where reproducer scripts of failures go (default: a new directory "
                       "under ~/.cache/normspec/reports, created only when something fails)")
    check.add_argument("--hypothesis-db", metavar="DIR",
                       help="Hypothesis' example database (stored failures are replayed first on the next run); "
                            "default ~/.cache/normspec/hypothesis, 'none' for no database")
    check.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless on a terminal)")
    check.set_defaults(func=cmd_check)
