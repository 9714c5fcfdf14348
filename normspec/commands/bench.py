"""`normspec bench`: norms x shapes x dtypes x backends side by side, against the copy roofline."""
from __future__ import annotations

import importlib.util
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from normspec.cli import EXIT_OK, EXIT_USAGE
from normspec.cli import split_names as _split
from normspec.guard import (
    PathError,
    available_memory,
    check_writable_dir,
    exit_status,
    human_bytes,
    interrupted_message,
)


def cmd_bench(args) -> int:
    from normspec import bench
    from normspec.impls.base import available_backends
    from normspec.registry import norms

    records = norms()
    target = None
    if args.target:
        from normspec.bench_target import TargetBackend, TargetError
        from normspec.validate.contract import ContractError, from_options

        try:
            given = from_options(ctor=args.ctor, conventions=args.convention)
            if args.compile_shapes and not args.compile:
                raise TargetError("--compile-shapes qualifies --compile")
            target = TargetBackend(args.target, as_norm=args.as_norm, kind=args.kind,
                                   compile=args.compile and (args.compile_shapes or "dynamic"), contract=given)
        except (TargetError, ContractError) as exc:
            print(f"normspec bench: {exc}", file=sys.stderr)
            return EXIT_USAGE
    elif args.as_norm or args.kind or args.compile or args.compile_shapes or args.ctor or args.convention:
        print("normspec bench: --as, --kind, --compile, --compile-shapes, --ctor and --convention qualify --target",
              file=sys.stderr)
        return EXIT_USAGE
    default_norms = [target.norm] if target else [n for n in bench.DEFAULT_NORMS if n in records]
    wanted = _split(args.norm) or default_norms
    unknown = [n for n in wanted if n not in records]
    passes = _split(args.pass_) or ["forward", "forward+backward"]
    bad_pass = [p for p in passes if p not in bench.PASSES]
    try:
        shapes = [bench.parse_shape(s) for s in (_split(args.shape) or bench.DEFAULT_SHAPES)]
        backends, absent = available_backends(_split(args.backend) or None)
    except (ValueError, KeyError) as exc:
        print(f"normspec bench: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    if unknown or bad_pass:
        what = (f"unknown norm(s): {', '.join(unknown)}; known: {', '.join(records)}" if unknown
                else f"unknown pass(es): {', '.join(bad_pass)}; passes: {', '.join(bench.PASSES)}")
        print(f"normspec bench: {what}", file=sys.stderr)
        return EXIT_USAGE
    if target is not None and target.norm not in wanted:  # the target's row would only say "skipped"
        print(f"normspec bench: --target {args.target} implements {target.norm}, and --norm {','.join(wanted)} "
              f"leaves it out (drop --norm, or pass --as NORM if {target.norm} is not what it implements)",
              file=sys.stderr)
        return EXIT_USAGE
    dtypes = _split(args.dtype) or ["float32"]
    bad_dtypes = [d for d in dtypes if d not in bench.DTYPES]
    if bad_dtypes:
        print(f"normspec bench: unknown dtype(s) {', '.join(bad_dtypes)}; dtypes: {', '.join(bench.DTYPES)}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        params = dict(bench.parse_param(t) for t in _split(args.param))
        bench.check_params([records[n] for n in wanted], [shape for _, shape in shapes], params)
    except ValueError as exc:
        print(f"normspec bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.repeats < 1:
        print("normspec bench: --repeats must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    available = available_memory()
    if available is not None:
        for label, shape in shapes:
            for dtype in dtypes:
                need = bench.memory_needed(shape, dtype, passes)
                if need > available:
                    print(f"normspec bench: shape {label} in {dtype} needs about {human_bytes(need)} of memory "
                          f"({math.prod(shape):,} elements; see normspec.bench.memory_needed), but "
                          f"{human_bytes(available)} is available; choose a smaller shape", file=sys.stderr)
                    return EXIT_USAGE
    try:
        check_writable_dir(args.out, "--out")
    except PathError as exc:
        print(f"normspec bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    plot = importlib.util.find_spec("matplotlib") is not None
    console = Console()
    if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
        console = Console(width=160)
    for name, why in absent.items():
        console.print(f"[dim]backend {name} not available: {why}[/]", highlight=False)
    if not plot:  # said at the start, not discovered at the end
        console.print("[yellow]matplotlib is not installed: bench.csv will be written, bench.png will not "
                      "(pip install 'normspec[bench]', or pip install matplotlib)[/]", highlight=False)
    if target is not None:
        backends[target.name] = target  # timed in the same run, table, CSV and plot as the rest
    if not backends:
        print("normspec bench: no backend is available", file=sys.stderr)
        return EXIT_USAGE
    plan = bench.Plan([records[n] for n in wanted], list(backends.values()), shapes, dtypes, passes,
                      repeats=args.repeats, absent=absent, params=params)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=args.quiet or not console.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=plan.size)
        first = [True]

        def step(label):
            if not first[0]:
                progress.update(task, advance=1)
            first[0] = False
            progress.update(task, description=label)

        results: list = []
        interrupted = None
        try:
            bench.run(plan, step, into=results)
            progress.update(task, advance=1)
        except KeyboardInterrupt as exc:
            interrupted = exc
    seconds = time.perf_counter() - start
    title = f"normspec bench ({bench.format_params(params)})" if params else "normspec bench"
    console.print(bench.results_table(results, title))
    warning = bench.contention_warning(results)
    if warning:
        console.print(f"[yellow]{warning}[/]", highlight=False)
    skips: dict[str, list[str]] = {}
    for r in results:
        if r.skipped:
            skips.setdefault(r.skipped, []).append(f"{r.norm} {r.pass_} {r.shape} {r.dtype} {r.backend}")
    for why, where in skips.items():
        console.print(f"[dim]skipped ({why}): {'; '.join(where[:4])}{' ...' if len(where) > 4 else ''}[/]",
                      highlight=False)
    out = Path(args.out)
    csv_path = bench.write_csv(results, out / "bench.csv")
    wrote = f"wrote {csv_path}"
    if plot:
        wrote += f" and {bench.plot(results, out / 'bench.png')}"
    console.print(f"{len(results)} measurements in {seconds:.1f}s; {wrote}", highlight=False)
    if interrupted is not None:
        print(interrupted_message("bench", interrupted, f"{len(results)} of {plan.size} measurements kept in "
                                  f"{csv_path}"), file=sys.stderr)
        return exit_status(interrupted)
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("bench", help="time backends side by side against the machine's copy bandwidth")
    p.add_argument("--norm", action="append",
                   help="norm(s) to time (repeat or comma-separate); default layer_norm, rms_norm, batch_norm")
    p.add_argument("--backend", action="append", help="backend(s); default every installed one except the opt-in "
                   "engines (torch:inductor, jax, onnxruntime), which run when named")
    p.add_argument("--shape", action="append",
                   help="preset (cnn-1MB, cnn-8MB, cnn-64MB, tokens-1MB, tokens-8MB, tokens-64MB) or dims like "
                        "16384x1024; default all six presets")
    p.add_argument("--dtype", action="append", help="dtype(s): float64, float32, float16, bfloat16; default float32")
    p.add_argument("--pass", dest="pass_", action="append",
                   help="forward and/or forward+backward (the backend's gradient call); default both")
    p.add_argument("--target", metavar="TARGET",
                   help="also time your implementation (validate's TARGET: package.module:attr or "
                        "path/to/file.py:attr, a torch.nn or torch.nn.functional drop-in) beside the backends")
    p.add_argument("--as", dest="as_norm", metavar="NORM", help="the norm TARGET implements, when not inferred")
    p.add_argument("--kind", choices=["module", "functional"], help="force the kind of a function TARGET")
    p.add_argument("--compile", action="store_true", help="time TARGET under torch.compile (dynamic shapes)")
    p.add_argument("--compile-shapes", choices=["dynamic", "static"],
                   help="with --compile: dynamic (default, dynamic=True) or static (dynamic=False, a kernel per shape)")
    p.add_argument("--ctor", metavar="MAP", help="as in validate: torch.nn constructor argument -> TARGET's, e.g. "
                   "normalized_shape=dim,eps=eps (a NORMSPEC_CONTRACT beside TARGET is honoured too)")
    p.add_argument("--convention", action="append", metavar="KEY=VALUE",
                   help="as in validate: a convention TARGET pins (repeatable)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="replace a parameter of the benchmark case (repeat or comma-separate), e.g. training=false "
                        "to time BatchNorm's inference call; the CSV's params column records it")
    p.add_argument("--repeats", type=int, default=5, help="timed samples per measurement (median and IQR)")
    p.add_argument("--out", default="normspec-report/bench", help="directory for bench.csv and bench.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
