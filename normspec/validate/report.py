"""Reports of a validation: the rich table, JSON, JUnit XML, and standalone reproducer scripts.

A reproducer replays the candidate's calls from the minimal counterexample with nothing but torch
and numpy: it embeds the inputs, the float64 spec's values computed when it was written and the
tolerance model's bound, and the source of `normspec.validate.adapters` (no normspec import).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from normspec.guard import human_bytes
from normspec.library import tolerance
from normspec.library.case import Case
from normspec.registry import get_norm
from normspec.report import counterexample_text
from normspec.validate import adapters
from normspec.validate.replay_source import COMPARE_TO_SPEC
from normspec.validate.runner import Outcome, ValidationResult, failing_case
from normspec.validate.worker import worker_threads

STYLE = {"passed": "green", "failed": "bold red", "xfail": "yellow", "xpass": "magenta", "skipped": "dim",
         "not run": "bold red", "warn": "yellow"}
LABEL = {"passed": "pass", "failed": "FAIL", "xfail": "xfail", "xpass": "XPASS", "skipped": "n/a",
         "not run": "NOT RUN", "warn": "warn"}


def _other_norm(o: Outcome, norm: str) -> bool:
    return o.status == "skipped" and o.verdict.reason.endswith(f"does not apply to {norm}")


def table(result: ValidationResult) -> Table:
    t = Table(title=f"normspec validate {result.target} ({result.kind} drop-in for {result.norm}, "
                    f"profile {result.profile})", title_justify="left")
    for col in ("property", "group", "result", "time", "detail"):
        t.add_column(col, overflow="fold")
    for o in result.outcomes:
        if _other_norm(o, result.norm):
            continue
        v = o.verdict
        detail = v.message if v.status in ("failed", "not run", "warn") else v.reason.split(" (known:")[0]
        detail = detail.split(" [")[0]  # the bracketed context is printed with the counterexample below
        t.add_row(v.property, o.group, f"[{STYLE[v.status]}]{LABEL[v.status]}[/]", f"{v.seconds:.1f}s",
                  (detail[:110] + "…") if len(detail) > 110 else detail)
    return t


def call_text(call: dict | None) -> str:
    if not call:
        return ""
    inputs = call.get("inputs", {})
    dtype = inputs.get("x", (None, "?", "?"))[1]
    layout = inputs.get("x", (None, "?", "?"))[2]
    shapes = ", ".join(f"{r}{tuple(np.shape(a[0]))}" for r, a in inputs.items())
    params = ", ".join(f"{k}={v!r}" for k, v in call.get("params", {}).items())
    what = "forward + backward" if call.get("dy") is not None else "forward"
    return f"{what} {call.get('norm', '')}({shapes}; {params}) {dtype} {layout}"


def _fmt(a) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in np.ravel(a)) + "]"


def values_text(case) -> str:
    """The values that matter in a counterexample: small arrays by value; for larger ones the
    conditioning (|mean|/std of the worst reduction set, its length) and max |x|."""
    if case is None:
        return ""
    x = np.asarray(case.x, dtype=np.float64)
    parts = []
    if x.size <= 12:
        parts.append(f"x={_fmt(x)}")
    else:
        finite = x[np.isfinite(x)]
        parts.append(f"x: {x.size} values, max|x|={np.max(np.abs(finite), initial=0):.3g}")
        try:
            c = get_norm(case.norm).conditioning(case) if get_norm(case.norm).conditioning else None
        except Exception:
            c = None
        if c is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.abs(np.asarray(c.mean)) / np.asarray(c.std)
            worst = float(np.nanmax(ratio)) if np.size(ratio) else 0.0
            parts.append(f"reduction length {c.count}, worst |mean|/std={worst:.3g}")
        else:
            parts.append(f"|mean|/std={abs(finite.mean()) / max(finite.std(), 1e-300):.3g}" if finite.size else "")
    for role in ("weight", "bias", "running_mean", "running_var"):
        a = case.get(role)
        if a is not None and a.size <= 6:
            parts.append(f"{role}={_fmt(a)}")
    return "; ".join(p for p in parts if p)


def counterexample(o: Outcome, v=None) -> str:
    v = v or o.verdict
    if v.draws:
        text = counterexample_text(v)
        values = values_text(failing_case(v))
        return f"{text}; {values}" if values else text
    return call_text(o.call)


def tidy(message: str) -> str:
    """Messages for people: an excess ratio past 1e6 is 'by far' (the bound is near zero there)."""
    def repl(m):
        ratio = float(m.group(1))
        return "worst by far (over 1e6x the bound)" if ratio > 1e6 else m.group(0)
    return re.sub(r"worst by ([0-9.eE+-]+)x", repl, message).replace("np.float64(", "(")


def dtype_verdicts(result: ValidationResult) -> dict[str, str]:
    """Per dtype: 'pass' or the properties that fail in it."""
    failing: dict[str, list[str]] = {d: [] for d in result.dtypes}
    for o in result.failures:
        if o.status != "failed":
            continue
        for d in o.failed_dtypes or list(result.dtypes):
            failing.setdefault(d, []).append(o.verdict.property)
    not_run = [o.verdict.property for o in result.failures if o.status == "not run"]
    tail = f" (not run: {', '.join(not_run)})" if not_run else ""
    return {d: (("FAIL " + ", ".join(props)) if props else "pass") + tail for d, props in failing.items()}


def header_lines(result: ValidationResult) -> list[str]:
    lines = [f"{result.name} validated as {result.norm} ({result.kind}), norm decided by "
             f"{result.inferred_by or 'its name'}"]
    if result.contract_lines:
        src = result.contract.source if result.contract is not None and result.contract.source else "declared"
        lines.append(f"NARROWED validation: contract ({src}):")
        lines += [f"  - {line}" for line in result.contract_lines]
    else:
        lines.append("contract: none (a full drop-in validation)")
    return lines


def print_report(console: Console, result: ValidationResult, reproducers: dict[str, str]) -> None:
    for line in header_lines(result):
        console.print(line, markup=False, highlight=False)
    console.print(table(result))
    hidden = sum(_other_norm(o, result.norm) for o in result.outcomes)
    if hidden:
        console.print(f"[dim]{hidden} properties of other norms not listed[/]", highlight=False)
    if result.not_exercised:
        for dtype, why in result.not_exercised.items():
            console.print(f"[dim]not exercised in {dtype}: the candidate refused it ({why[:200]})[/]", highlight=False)
    for o in result.outcomes:
        if o.status == "warn":
            v = o.verdict
            console.print(Text.assemble("\n", ("warn", "yellow"), f" {v.property} (advisory, not a rejection) in "
                                        f"{v.dtype or '?'}: {tidy(v.message)}"), highlight=False)
            if counterexample(o):
                console.print(f"  counterexample: {counterexample(o)}", markup=False, highlight=False)
            if v.property in reproducers:
                console.print(f"  reproducer: python {reproducers[v.property]}", markup=False, highlight=False)
    for o in result.failures:
        v = o.verdict
        where = f" in {', '.join(o.failed_dtypes)}" if o.failed_dtypes else ""
        console.print(f"\n[bold red]{LABEL[v.status]}[/] {v.property}{where}", highlight=False)
        for i, w in enumerate([v, *o.more]):
            lead = f"  [{w.dtype}] " if o.more else "  "
            console.print(f"{lead}{tidy(w.message)}", markup=False, highlight=False)
            if counterexample(o, w):
                console.print(f"    minimal counterexample: {counterexample(o, w)}", markup=False, highlight=False)
        for hint in o.hints:
            console.print(f"  hint: {hint}", markup=False, highlight=False)
        if v.property in reproducers:
            console.print(f"  reproducer: python {reproducers[v.property]}", markup=False, highlight=False)
    if result.output_dropped:
        console.print(f"[dim]the candidate printed {human_bytes(result.output_bytes)}; its log kept the first and "
                      f"last parts and dropped {human_bytes(result.output_dropped)}[/]", highlight=False)
    if result.scratch:
        console.print(f"[dim]kept the worker's directory (its output in candidate-output.log): {result.scratch}[/]",
                      highlight=False)
    if result.dtypes:
        console.print("")
        for d, text in dtype_verdicts(result).items():
            console.print(f"{d}: {text}", markup=False, highlight=False)
    verdict = "ACCEPTED" if result.accepted else "REJECTED"
    if result.accepted and result.tier == "lower tier":
        verdict = "ACCEPTED AT A LOWER TIER (half-precision intermediates declared)"
    elif result.accepted and result.narrowed:
        verdict = "ACCEPTED UNDER A NARROWED CONTRACT"
    style = "bold green" if result.accepted else "bold red"
    if not result.complete:
        verdict, style = "INCOMPLETE (interrupted)", "bold yellow"
    counts = {}
    for o in result.outcomes:
        if not _other_norm(o, result.norm):
            counts[LABEL[o.status]] = counts.get(LABEL[o.status], 0) + 1
    console.print(f"\n[{style}]{verdict}[/] {result.name} as {result.norm}: "
                  + ", ".join(f"{n} {k}" for k, n in counts.items())
                  + f" in {result.seconds:.1f}s; dtypes {', '.join(result.dtypes) or '-'}", highlight=False)
    if result.narrowed:
        console.print(f"(within the contract above: {'; '.join(result.contract_lines)})", markup=False,
                      highlight=False)


def to_json(result: ValidationResult, reproducers: dict[str, str]) -> str:
    return json.dumps({
        "target": result.target, "norm": result.norm, "kind": result.kind, "profile": result.profile,
        "accepted": result.accepted and result.complete, "complete": result.complete,
        "seconds": round(result.seconds, 3),
        "candidate_output_bytes": result.output_bytes, "candidate_output_dropped_bytes": result.output_dropped,
        "captured_warnings": result.captured_warnings,
        "first_counterexample_seconds": None if result.first_counterexample_s is None
        else round(result.first_counterexample_s, 3),
        "inferred_by": result.inferred_by, "tier": result.tier,
        "contract": None if result.contract is None else {
            "source": result.contract.source, "declared": result.contract.to_wire(),
            "narrowing": result.contract_lines},
        "dtypes": list(result.dtypes), "layouts": list(result.layouts), "not_exercised": result.not_exercised,
        "dtype_verdicts": dtype_verdicts(result),
        "results": [
            {"property": o.verdict.property, "group": o.group, "status": o.status, "message": o.verdict.message,
             "reason": o.verdict.reason, "link": o.verdict.link, "counterexample": counterexample(o),
             "dtype": o.verdict.dtype, "failed_dtypes": o.failed_dtypes,
             "more_failures": [{"dtype": w.dtype, "message": w.message, "counterexample": counterexample(o, w)}
                               for w in o.more],
             "hints": o.hints,
             "reproducer": reproducers.get(o.verdict.property), "seconds": round(o.verdict.seconds, 3)}
            for o in result.outcomes
        ],
    }, indent=2)


def to_junit(result: ValidationResult, reproducers: dict[str, str]) -> str:
    shown = [o for o in result.outcomes]
    name = f"normspec.validate.{result.norm}" + ("" if result.tier == "full" else f"[{result.tier}]")
    suite = ET.Element("testsuite", name=name,
                       tests=str(len(shown)), failures=str(len(result.failures)),
                       skipped=str(sum(o.status in ("skipped", "xfail") for o in shown)),
                       time=f"{result.seconds:.3f}")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="tier", value=result.tier)
    ET.SubElement(props, "property", name="inferred_by", value=result.inferred_by)
    for i, line in enumerate(result.contract_lines):
        ET.SubElement(props, "property", name=f"contract.{i}", value=line)
    for o in shown:
        case = ET.SubElement(suite, "testcase", classname=f"{result.target}", name=o.verdict.property,
                             time=f"{o.verdict.seconds:.3f}")
        if o.status in ("failed", "not run"):
            f = ET.SubElement(case, "failure", message=o.verdict.message[:500])
            f.text = "\n".join(filter(None, [o.verdict.message, "minimal counterexample: " + counterexample(o),
                                             *(f"[{w.dtype}] {w.message}" for w in o.more),
                                             *(f"hint: {h}" for h in o.hints),
                                             f"reproducer: {reproducers.get(o.verdict.property, '')}"]))
        elif o.status in ("skipped", "xfail"):
            ET.SubElement(case, "skipped", message=o.verdict.reason[:500])
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode")


# ------------------------------------------------------------------ reproducers

def _expected(norm: str, call: dict) -> dict:
    """The float64 spec's outputs/gradients for one recorded call, and the model's bounds."""
    record = get_norm(norm)
    inputs = call["inputs"]
    case = Case(norm, {r: a[0] for r, a in inputs.items()}, call["params"])
    dtype = inputs["x"][1]
    dy = None if call.get("dy") is None else np.asarray(call["dy"][0])
    try:
        ref = record.reference(case)
        ref_grads = record.reference_grad(case, dy) if dy is not None else {}
        bounds = record.bounds(case, dtype, ref, dy, ref_grads)
    except Exception as exc:
        return {"spec_raises": f"{type(exc).__name__}: {exc}"}
    expect = {}
    for name, value in ref.items():
        expect[name] = (value, np.broadcast_to(bounds[name], np.shape(value)))
    for role, value in ref_grads.items():
        if role in call.get("wrt", ()):
            expect["d" + role] = (value, np.broadcast_to(bounds[role], np.shape(value)))
    return {"expect": expect}


def _arr(a) -> str:
    a = np.asarray(a, dtype=np.float64)
    return f"np.array({a.ravel().tolist()!r}).reshape({tuple(a.shape)!r})"


def _call_source(norm: str, call: dict) -> str:
    parts = ["    {"]
    parts.append("        'inputs': {" + ", ".join(f"{r!r}: ({_arr(v)}, {d!r}, {lay!r})"
                                             for r, (v, d, lay) in call["inputs"].items()) + "},")
    parts.append(f"        'params': {dict(call['params'])!r},")
    if call.get("dy") is not None:
        v, d, lay = call["dy"]
        parts.append(f"        'dy': ({_arr(v)}, {d!r}, {lay!r}), 'wrt': {tuple(call.get('wrt', ()))!r},")
    exp = _expected(norm, call)
    if "spec_raises" in exp:
        parts.append(f"        'spec_raises': {exp['spec_raises']!r},")
    else:
        parts.append("        'expect': {" + ", ".join(f"{k!r}: ({_arr(v)}, {_arr(b)})"
                                                 for k, (v, b) in exp["expect"].items()) + "},")
    if call.get("recorded"):
        parts.append("        'recorded': {" + ", ".join(f"{k!r}: {_arr(v)}" for k, v in call["recorded"].items())
                     + "},")
    parts.append("    },")
    return "\n".join(parts)


RUNNER = COMPARE_TO_SPEC + '''
def replay_call(candidate, call):
    """Run one call; return a list of what is wrong with it (empty: it matches the spec)."""
    problems = []
    try:
        got = A.execute(candidate, KIND, NORM, call["inputs"], call["params"], dy=call.get("dy"),
                        wrt=call.get("wrt", ()), outputs=OUTPUTS, contract=CONTRACT)
    except Exception as exc:
        if "spec_raises" in call:
            return []
        return [f"raised {type(exc).__name__}: {exc}"]
    if "spec_raises" in call:
        return [f"returned a result, but the spec raises ({call['spec_raises']})"]
    for role in got["mutated"]:
        problems.append(f"modified its input {role} in place")
    values = {**got["outputs"], **{"d" + r: g for r, g in got["grads"].items()}}
    problems += compare_to_spec(values, call["expect"])
    again = A.execute(candidate, KIND, NORM, call["inputs"], call["params"], dy=call.get("dy"),
                      wrt=call.get("wrt", ()), outputs=OUTPUTS, contract=CONTRACT)
    for name, v in {**again["outputs"], **{"d" + r: g for r, g in again["grads"].items()}}.items():
        if name in values and not np.array_equal(v, values[name], equal_nan=True):
            problems.append(f"{name} differs between two identical calls (non-deterministic)")
    if not problems and call.get("recorded"):
        same = all(np.array_equal(values.get(k), v, equal_nan=True) for k, v in call["recorded"].items())
        if same:
            problems.append("returns the same values as when the property failed (the property relates several "
                            "calls; see the failure above)")
    return problems


if __name__ == "__main__":
    candidate = A.load_target(TARGET, CWD)
    if COMPILED:  # the failure was found under `normspec validate --compile`: replay it compiled
        candidate = A.compiled(candidate, COMPILED)
    reproduced = False
    for i, call in enumerate(CALLS):
        problems = replay_call(candidate, call)
        for p in problems:
            print(f"call {i + 1}: {p}")
        reproduced = reproduced or bool(problems)
    if reproduced:
        print(f"REPRODUCED: {PROPERTY} fails for {TARGET}")
        sys.exit(1)
    print("every call now agrees with the spec: the failure no longer reproduces")
'''


def reproducer_source(result: ValidationResult, o: Outcome) -> str:
    v = o.verdict
    calls = o.calls
    if not calls and o.call:
        calls = [{"msg": o.call}]
    entries = []
    for c in calls:
        msg = dict(c["msg"])
        if msg.get("op") != "call":
            continue
        if "result" in c:
            r = c["result"]
            msg["recorded"] = {**r["outputs"], **{"d" + k: g for k, g in r["grads"].items()}}
        entries.append(_call_source(result.norm, msg))
    src = inspect.getsource(adapters)
    assert "'''" not in src
    message = "\n".join("# " + line for line in v.message.splitlines())
    runner, note = RUNNER, ""
    if result.norm in adapters.DISTRIBUTED_NORMS:  # replayed on local gloo ranks
        from normspec.validate.distributed import REPRODUCER_NOTE, REPRODUCER_RUNNER

        runner, note = REPRODUCER_RUNNER, REPRODUCER_NOTE.lstrip("\n")
    return f'''"""Reproducer: `normspec validate {result.target}` found that property {v.property} fails.

Standalone (torch and numpy only). It rebuilds the candidate from its TARGET, replays the calls of
the minimal counterexample, and compares each with the float64 spec's values and the tolerance
model's bound computed when this file was written. Exit status 1 while the bug is there.
{note}Counterexample: {counterexample(o)}
"""
# Failure:
{message}
import sys
import types

import numpy as np

inf, nan = float("inf"), float("nan")  # as the recorded arrays below write them
# The intra-op threads the validate worker ran the candidate with: a reduction's rounding can
# depend on how it is split across threads.
import torch  # noqa: E402

torch.set_num_threads({worker_threads()})
TARGET = {result.target!r}
CWD = {os.getcwd()!r}
KIND = {result.kind!r}
NORM = {result.norm!r}
OUTPUTS = {tuple(get_norm(result.norm).outputs)!r}
PROPERTY = {v.property!r}
CONTRACT = {result.contract.to_wire() if result.contract is not None else None!r}
COMPILED = {result.compiled!r}  # validated under torch.compile (--compile)

# The call adapters of normspec.validate (normspec.validate.adapters), verbatim.
ADAPTERS_SOURCE = r\'\'\'{src}\'\'\'
A = types.ModuleType("normspec_validate_adapters")
exec(compile(ADAPTERS_SOURCE, "normspec_validate_adapters", "exec"), A.__dict__)

CALLS = [
{chr(10).join(entries)}
]
{runner}'''


def write_reproducers(result: ValidationResult, directory: Path) -> dict[str, str]:
    """One reproducer per failure with a counterexample; {property: path}. Never beside the user's files."""
    from normspec.validate.runner import _compute_mapping

    with tolerance.declared_compute(_compute_mapping(result.contract)):
        return _write_reproducers(result, directory)


def _write_reproducers(result: ValidationResult, directory: Path) -> dict[str, str]:
    written = {}
    for o in [*result.failures, *(o for o in result.outcomes if o.status == "warn")]:
        if not (o.calls or o.call):
            continue
        directory.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_]+", "_", f"{result.name}__{o.verdict.property}")
        path = directory / f"repro_{stem}.py"
        path.write_text(reproducer_source(result, o))
        written[o.verdict.property] = str(path)
        o.verdict.reproducer = str(path)
    return written
