"""`normspec validate TARGET`: put your own implementation through every property that applies."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console

from normspec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, split_names
from normspec.guard import (
    PathError,
    cache_dir,
    check_report_outputs,
    configure_hypothesis,
    exit_status,
    interrupted_message,
    memory_size,
    seconds,
)
from normspec.properties.core import PROFILES

HELP = """\
TARGET is package.module:attr or path/to/file.py:attr, where attr is
  - a torch.nn.Module subclass that is a drop-in for a torch.nn normalization module
    (BatchNorm1d/2d/3d, LayerNorm, GroupNorm, InstanceNorm1d/2d/3d, RMSNorm, LocalResponseNorm;
    SyncBatchNorm: run on 2-4 local gloo ranks, see docs/validate-distributed.md),
  - a drop-in for the matching torch.nn.functional function (weight_norm: f(v, g, dim) -> w,
    like torch._weight_norm; dim=None is passed as -1, the whole tensor), or
  - a function with normspec's NumPy spec signature (e.g. normspec.spec.batch_norm; gradients
    come from a <name>_backward beside it).
The norm is inferred from the base class or the name (and a quick probe of the behaviour
must agree); --as names it otherwise.

A contract narrows what is validated, and every narrowing is printed with the verdict (and in
the JSON and JUnit reports): --ctor maps torch.nn's constructor arguments onto the candidate's,
--convention pins a convention of the spec, --axes/--modes/--forward-only/--affine/--no-eps-none
narrow the domain, --compute declares a lower compute precision. The same fields can be declared
beside the class, in Python (see docs/validate-contracts.md):
    from normspec.validate import Contract
    NORMSPEC_CONTRACT = Contract(ctor={"normalized_shape": "dim:int", "eps": "eps"}, axes="last")
Exit status: 0 accepted, 1 rejected, 2 usage error."""


def contract_from_args(args):
    """The contract the command line declares (None if it declares nothing); ContractError if malformed."""
    from normspec.validate.contract import from_options

    return from_options(ctor=args.ctor, conventions=args.convention, axes=args.axes, modes=args.modes,
                        forward_only=args.forward_only, affine=args.affine, no_eps_none=args.no_eps_none,
                        dtypes=split_names(args.dtype) or None, compute=args.compute, ranks=args.ranks)


def add_contract_options(add, prefix: str = "--") -> None:
    """The contract's options (shared by `normspec validate` and the pytest plugin, which prefixes them)."""
    from normspec.validate.contract import AXES, COMPUTES

    add(f"{prefix}ctor", metavar="MAP", help="torch.nn constructor argument -> the candidate's, e.g. "
        "normalized_shape=dim,eps=eps,elementwise_affine=affine ('dim:int' passes one size as an int); "
        "arguments left out are fixed at torch.nn's default; a number is a value the class fixes itself "
        "(num_groups=1, eps=1e-6), not passed")
    add(f"{prefix}convention", action="append", metavar="KEY=VALUE", help="pin a convention keyword of the spec "
        "(e.g. running_var_style=biased, momentum_style=decay, convention=caffe); repeatable")
    add(f"{prefix}axes", choices=list(AXES), help="last: normalizes over the last dimension only; channels: a "
        "LayerNorm or RMSNorm over dim 1 of (N, C, *S) (timm's LayerNorm2d and RmsNorm2d, ConvNeXt's channels_first)")
    add(f"{prefix}modes", metavar="MODE", help="training or eval: the only mode it supports")
    add(f"{prefix}ranks", metavar="R", help="the only input ranks a module takes, e.g. 4 or 3,4 (where its name's "
        "1d/2d/3d does not say them: transformers' ConvNextLayerNorm takes 4-D only)")
    add(f"{prefix}forward-only", action="store_true", help="no gradients: gradient properties are not run")
    add(f"{prefix}affine", choices=["on", "off"], help="affine parameters always on / always off")
    add(f"{prefix}no-eps-none", action="store_true", help="eps=None (a dtype-dependent eps) is not supported")
    add(f"{prefix}compute", choices=list(COMPUTES), help="float32: computes in float32 whatever the input (float64 "
        "judged at float32's roundoff); half: half intermediates for half inputs (a lower tier, reported as such)")


def default_report_dir() -> Path:
    """Where reproducers go when --report-dir is not given: a new directory under normspec's cache,
    created only when there is a failure to reproduce."""
    return cache_dir() / "reports" / time.strftime(f"validate-%Y%m%d-%H%M%S-{os.getpid()}")


def check_outputs(args) -> None:
    """Every output path and dtype is checked before any work (PathError: exit 2)."""
    from normspec.validate.candidate import ALL_DTYPES

    bad = [d for d in split_names(args.dtype) if d not in ALL_DTYPES]
    if bad:
        raise PathError(f"unknown dtype(s) {', '.join(bad)}; known: {', '.join(ALL_DTYPES)}")
    check_report_outputs(args)


def write_outputs(args, result, reproducers, to_stdout: bool) -> None:
    from normspec.validate.report import to_json, to_junit

    if args.json:
        text = to_json(result, reproducers)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text)
    if args.junit_xml:
        Path(args.junit_xml).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit_xml).write_text(to_junit(result, reproducers))


def cmd_validate(args) -> int:
    from normspec.validate import ContractError, UsageError, validate
    from normspec.validate.report import print_report, write_reproducers

    try:
        check_outputs(args)
    except PathError as exc:
        print(f"normspec validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_hypothesis(None if args.hypothesis_db in (None, "none") else args.hypothesis_db,
                         database=args.hypothesis_db != "none")
    to_stdout = args.json == "-"
    console = Console(stderr=to_stdout)
    report_dir = Path(args.report_dir) if args.report_dir else default_report_dir()

    def progress(o):
        if not args.quiet and not o.verdict.reason.startswith("not applicable: does not apply"):
            console.print(f"[dim]{o.verdict.property}: {o.status} ({o.verdict.seconds:.1f}s)[/]", highlight=False)

    if args.compile_shapes and not args.compile:
        print("normspec validate: --compile-shapes qualifies --compile", file=sys.stderr)
        return EXIT_USAGE
    if args.compile:
        return _validate_eager_and_compiled(args, console, report_dir, progress, to_stdout)
    try:
        contract = contract_from_args(args)
        result = validate(args.target, as_norm=args.as_norm, kind=args.kind, profile=args.profile,
                          example_timeout=args.example_timeout, run_timeout=args.run_timeout,
                          properties=split_names(args.property) or None, dtypes=split_names(args.dtype) or None,
                          fail_fast=args.fail_fast, memory_limit=args.memory_limit, keep_temp=args.keep_temp,
                          on_result=progress, contract=contract)
    except (UsageError, ContractError) as exc:
        print(f"normspec validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        result = getattr(exc, "partial_result", None)
        kept = "no property had finished"
        if result is not None and result.outcomes:
            reproducers = write_reproducers(result, report_dir)
            print_report(console, result, reproducers)
            write_outputs(args, result, reproducers, to_stdout)
            kept = f"{len(result.outcomes)} result(s) so far shown" + (" and written (marked incomplete)"
                                                                      if args.json or args.junit_xml else "")
        elif result is not None:
            write_outputs(args, result, {}, to_stdout)
        print(interrupted_message("validate", exc, kept), file=sys.stderr)
        return exit_status(exc)
    reproducers = write_reproducers(result, report_dir)
    print_report(console, result, reproducers)
    write_outputs(args, result, reproducers, to_stdout)
    return EXIT_OK if result.accepted else EXIT_FAILED


def _validate_eager_and_compiled(args, console, report_dir, progress, to_stdout) -> int:
    """`--compile`: the candidate validated eager, then under torch.compile; both reports, then where
    the verdicts differ. Accepted only if both runs are."""
    from normspec.validate import ContractError, UsageError, validate
    from normspec.validate.report import print_report, to_json, to_junit, write_reproducers
    from normspec.validate.runner import COMPILE_EXAMPLE_TIMEOUT, compile_differences

    shapes = args.compile_shapes or "dynamic"
    runs = [False, shapes] if args.compile else [False]
    results = []
    for compiled in runs:
        if compiled:
            console.print(f"\n[bold]under torch.compile[/] (Inductor, {shapes} shapes)", highlight=False)
        try:
            results.append(validate(
                args.target, as_norm=args.as_norm, kind=args.kind, profile=args.profile,
                example_timeout=(max(args.example_timeout, COMPILE_EXAMPLE_TIMEOUT) if compiled
                                 else args.example_timeout),
                run_timeout=args.run_timeout, properties=split_names(args.property) or None,
                dtypes=split_names(args.dtype) or None, fail_fast=args.fail_fast, compile=compiled,
                memory_limit=args.memory_limit, keep_temp=args.keep_temp,
                on_result=progress, contract=contract_from_args(args)))
        except (UsageError, ContractError) as exc:
            print(f"normspec validate: {exc}", file=sys.stderr)
            return EXIT_USAGE
    reports = []
    for result in results:
        reproducers = write_reproducers(result, report_dir / "compiled" if result.compiled else report_dir)
        if result.compiled:
            console.print("\n[bold]--- the same candidate under torch.compile ---[/]", highlight=False)
        print_report(console, result, reproducers)
        reports.append((result, reproducers))
    if args.compile:
        diffs = compile_differences(results[0], results[1])
        if diffs:
            console.print("\n[bold yellow]eager vs compiled differences[/] (torch.compile changes these verdicts):",
                          highlight=False)
            for name, eager, compiled in diffs:
                console.print(f"  {name}: eager {eager}, compiled {compiled}", highlight=False)
        else:
            console.print("\neager and compiled verdicts agree on every property", highlight=False)
    if args.json:
        import json

        docs = [json.loads(to_json(r, rep)) for r, rep in reports]
        if args.compile:
            docs[0]["compiled"] = docs[1]
            docs[0]["compile_differences"] = [dict(property=n, eager=e, compiled=c)
                                              for n, e, c in compile_differences(results[0], results[1])]
        text = json.dumps(docs[0], indent=2, default=str)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text)
    if args.junit_xml:
        Path(args.junit_xml).write_text(to_junit(*reports[-1]) if not args.compile else to_junit(*reports[0]))
    return EXIT_OK if all(r.accepted for r in results) else EXIT_FAILED


def register(sub) -> None:
    from normspec.validate.runner import DEFAULT_PROFILE, EXAMPLE_TIMEOUT, RUN_TIMEOUT

    v = sub.add_parser("validate", help="validate your own implementation (a torch.nn drop-in, a functional "
                       "drop-in or a spec-signature function) against the spec", description=HELP,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    v.add_argument("target", metavar="TARGET", help="package.module:attr or path/to/file.py:attr")
    v.add_argument("--as", dest="as_norm", metavar="NORM", help="the norm it implements, when it cannot be inferred")
    v.add_argument("--kind", choices=["module", "functional", "spec"], help="force the kind of a function target")
    v.add_argument("--profile", choices=list(PROFILES), default=DEFAULT_PROFILE,
                   help=f"Hypothesis profile (default {DEFAULT_PROFILE}: deterministic, well under a minute)")
    v.add_argument("--property", action="append", help="only these properties (repeat or comma-separate)")
    v.add_argument("--dtype", action="append", help="only these dtypes (default: every one the candidate accepts)")
    v.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")
    v.add_argument("--junit-xml", metavar="FILE", help="also write a JUnit XML report to FILE")
    v.add_argument("--report-dir", help="where reproducer scripts of failures go (default: a new directory under "
                   "~/.cache/normspec/reports, created only when something fails)")
    v.add_argument("--example-timeout", type=seconds, default=EXAMPLE_TIMEOUT,
                   help=f"seconds one call of the candidate may take (default {EXAMPLE_TIMEOUT:.0f})")
    v.add_argument("--run-timeout", type=seconds, default=RUN_TIMEOUT,
                   help=f"seconds the whole validation may take (default {RUN_TIMEOUT:.0f})")
    v.add_argument("--compile", action="store_true",
                   help="also validate the candidate under torch.compile (Inductor, dynamic shapes) and report "
                        "where eager and compiled verdicts differ; accepted only if both runs are")
    v.add_argument("--compile-shapes", choices=["dynamic", "static"],
                   help="with --compile: dynamic (default, dynamic=True: one kernel for many sizes) or static "
                        "(dynamic=False: a kernel per shape, what a model compiled with the default runs for its "
                        "first shapes; slower to validate, a compile per shape)")
    v.add_argument("--memory-limit", type=memory_size, default="auto", metavar="SIZE",
                   help="writable memory the candidate's worker may use, e.g. 2G or none (default: half the "
                        "available memory, at most 4G); exceeding it is reported as such")
    v.add_argument("--keep-temp", action="store_true",
                   help="keep the worker's scratch directory (its cwd and candidate-output.log)")
    v.add_argument("--hypothesis-db", metavar="DIR",
                   help="Hypothesis' example database (stored failures are replayed first on the next run); "
                        "default ~/.cache/normspec/hypothesis, 'none' for no database")
    v.add_argument("--fail-fast", action="store_true", help="stop at the first failing property")
    v.add_argument("--quiet", action="store_true", help="no per-property progress lines")
    add_contract_options(v.add_argument)
    v.set_defaults(func=cmd_validate)
