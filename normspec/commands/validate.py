"""`normspec validate TARGET`: put your own implementation through every property that applies."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console

from normspec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, split_names
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
The norm is inferred from the base class or the name; --as names it otherwise.
Exit status: 0 accepted, 1 rejected, 2 usage error."""


def cmd_validate(args) -> int:
    from normspec.validate import UsageError, validate
    from normspec.validate.report import print_report, to_json, to_junit, write_reproducers

    to_stdout = args.json == "-"
    console = Console(stderr=to_stdout)
    report_dir = Path(args.report_dir) if args.report_dir else Path(tempfile.mkdtemp(prefix="normspec-validate-"))

    def progress(o):
        if not args.quiet and not o.verdict.reason.startswith("not applicable: does not apply"):
            console.print(f"[dim]{o.verdict.property}: {o.status} ({o.verdict.seconds:.1f}s)[/]", highlight=False)

    try:
        result = validate(args.target, as_norm=args.as_norm, kind=args.kind, profile=args.profile,
                          example_timeout=args.example_timeout, run_timeout=args.run_timeout,
                          properties=split_names(args.property) or None, dtypes=split_names(args.dtype) or None,
                          fail_fast=args.fail_fast, on_result=progress)
    except UsageError as exc:
        print(f"normspec validate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    reproducers = write_reproducers(result, report_dir)
    print_report(console, result, reproducers)
    if args.json:
        text = to_json(result, reproducers)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            Path(args.json).write_text(text)
    if args.junit_xml:
        Path(args.junit_xml).write_text(to_junit(result, reproducers))
    return EXIT_OK if result.accepted else EXIT_FAILED


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
    v.add_argument("--report-dir", help="where reproducer scripts go (default: a new temporary directory)")
    v.add_argument("--example-timeout", type=float, default=EXAMPLE_TIMEOUT,
                   help=f"seconds one call of the candidate may take (default {EXAMPLE_TIMEOUT:.0f})")
    v.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT,
                   help=f"seconds the whole validation may take (default {RUN_TIMEOUT:.0f})")
    v.add_argument("--fail-fast", action="store_true", help="stop at the first failing property")
    v.add_argument("--quiet", action="store_true", help="no per-property progress lines")
    v.set_defaults(func=cmd_validate)
