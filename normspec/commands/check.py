"""`normspec check`: every property x norm x backend, as a matrix."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from normspec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, split_names as _split
from normspec.properties.core import PROFILES


def cmd_check(args) -> int:
    from normspec.matrix import SelectionError, plan, run_plan
    from normspec.report import matrix_table, print_details, summary, to_json, write_reproducer

    try:
        p = plan(_split(args.norm), _split(args.backend), _split(args.property))
    except SelectionError as exc:
        print(f"normspec check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = Console(stderr=args.json == "-")
    for name, why in p.absent_backends.items():
        console.print(f"[dim]backend {name} skipped: {why}[/]", highlight=False)
    if not p.backends:
        print("normspec check: no backend is available", file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=args.quiet) as progress:
        task = progress.add_task("checking", total=p.size)

        def advance(v):
            progress.update(task, advance=1, description=f"{v.norm} · {v.backend} · {v.property}")

        verdicts = run_plan(p, args.profile, advance)
    seconds = time.perf_counter() - start
    for v in verdicts:
        if v.status == "failed" and v.draws:
            v.reproducer = str(write_reproducer(v, Path(args.report_dir)))
    console.print(matrix_table(verdicts))
    print_details(console, verdicts)
    for backend in p.backends:
        for line in backend.notes():
            console.print(f"[dim]{line}[/]", highlight=False)
    counts = summary(verdicts)
    console.print(" ".join(f"{n} {k}" for k, n in counts.items()) + f" in {seconds:.1f}s (profile {args.profile})",
                  highlight=False)
    if args.json:
        text = to_json(verdicts, seconds, args.profile, p.absent_backends)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text)
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def register(sub) -> None:
    check = sub.add_parser("check", help="run every property x norm x backend and print the matrix")
    check.add_argument("--norm", action="append", help="norm(s) to check (repeat or comma-separate); default all")
    check.add_argument("--backend", action="append", help="backend(s) to check; default every installed one")
    check.add_argument("--property", action="append", help="property(ies) to check; default all")
    check.add_argument("--profile", choices=list(PROFILES), default="ci",
                       help="Hypothesis profile: dev (fast), ci (deterministic, default), thorough")
    check.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")
    check.add_argument("--report-dir", default="normspec-report", help="where reproducer scripts go")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)
