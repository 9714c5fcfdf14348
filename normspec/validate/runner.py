"""`validate(target)`: put a user's implementation through every property that applies.

The candidate becomes a `CandidateBackend` (a proxy to a worker process) and runs through the
engine's `run_property` with the norm record's spec as the reference, exactly as the built-in
backends do. Around that, this module adds what a user's code needs: finding out what the target
is (kind, norm, accepted dtypes), time limits, turning crashes and hangs into verdicts, and a
check that a failure is not one PyTorch's own op shares under a recorded expected failure.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from hypothesis import HealthCheck, find, reject, settings
from hypothesis import strategies as st

from normspec.expected import expected_failure
from normspec.guard import default_worker_memory
from normspec.properties import PROPERTIES, Property, PropertyFailure, Verdict, replay, run_property
from normspec.registry import NormRecord, norms
from normspec.validate.adapters import ADAPTED_NORMS
from normspec.validate.candidate import (ALL_DTYPES, ALL_LAYOUTS, CandidateAbort, CandidateBackend,
                                         CapabilityMissing, Worker, round_to, scratch_dir)
from normspec.validate.steps import VALIDATE_PROPERTIES

DEFAULT_PROFILE = "ci"
EXAMPLE_TIMEOUT = 20.0  # seconds one call of the candidate may take
RUN_TIMEOUT = 300.0  # seconds the whole validation may take


class UsageError(ValueError):
    """The target cannot be validated as given (exit status 2): the message says what would be right."""


@dataclass
class Outcome:
    """One property's result for the candidate: the engine's Verdict plus what validate adds."""

    verdict: Verdict
    call: dict | None = None  # for crashes and hangs: the call in flight
    calls: list[dict] = field(default_factory=list)  # the candidate's calls in the minimal example
    group: str = ""

    @property
    def status(self) -> str:
        return self.verdict.status


@dataclass
class ValidationResult:
    target: str
    norm: str = ""
    kind: str = ""
    profile: str = DEFAULT_PROFILE
    name: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    dtypes: tuple[str, ...] = ()
    layouts: tuple[str, ...] = ()
    not_exercised: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    first_counterexample_s: float | None = None
    notes: list[str] = field(default_factory=list)
    complete: bool = False  # False until every chosen property ran (an interrupt leaves it False)
    output_bytes: int = 0  # what the candidate printed, and how much of it the capped log dropped
    output_dropped: int = 0
    scratch: str | None = None  # the worker's directory (with its log), when kept
    captured_warnings: int = 0  # Python warnings raised in this process while properties ran (not shown)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("failed", "not run")]

    @property
    def accepted(self) -> bool:
        return not self.failures and any(o.status in ("passed", "xfail") for o in self.outcomes)


# ------------------------------------------------------------------ the target

def check_target_syntax(target: str) -> None:
    if ":" not in target or not target.rsplit(":", 1)[1]:
        raise UsageError(f"TARGET {target!r} must name an attribute: 'package.module:attr' or "
                         f"'path/to/file.py:attr' (e.g. 'mypkg.norms:FusedLayerNorm')")
    where = target.rsplit(":", 1)[0]
    if (where.endswith(".py") or "/" in where) and not os.path.isfile(where):
        raise UsageError(f"TARGET {target!r}: no such file {where!r} (relative to {os.getcwd()})")


def resolve_norm(info: dict, as_norm: str | None) -> str:
    registered = norms()
    norm = as_norm or info.get("norm")
    if norm is None:
        raise UsageError(f"cannot tell which normalization {info['name']} implements (no torch.nn base class or "
                         f"telling name); pass --as NORM, one of: {', '.join(ADAPTED_NORMS)}")
    if norm not in ADAPTED_NORMS:
        raise UsageError(f"unknown norm {norm!r} for validate; drop-ins can be validated as: {', '.join(ADAPTED_NORMS)}")
    if norm not in registered:
        raise UsageError(f"norm {norm!r} has no record in normspec.registry yet, so there is no spec to validate "
                         f"against; registered norms: {', '.join(registered)}")
    if info["kind"] == "module" and norm == "weight_norm":
        raise UsageError("weight_norm has no torch.nn module drop-in; validate a function f(v, g, dim) -> w "
                         "like torch._weight_norm instead")
    return norm


# ------------------------------------------------------------------ strategies restricted to the drop-in

def restricted_record(record: NormRecord, kind: str, ranks) -> NormRecord:
    """The record with its case strategy pinned to what the drop-in form can take: BatchNorm2d-style
    classes see 4-D inputs only, torch drop-ins see PyTorch's conventions only."""
    fixed: dict[str, Any] = {}
    if kind in ("module", "functional"):
        fixed.update(conventions=False, convention="pytorch")
    original = record.cases
    spatial = sorted({r - 2 for r in ranks}) if ranks else None
    if spatial is not None and not record.takes("spatial_dims"):
        spatial = None

    def cases(**overrides):
        kw = {k: v for k, v in {**fixed, **overrides}.items() if record.takes(k)}
        if spatial is not None and "spatial_dims" not in kw:
            return st.sampled_from(spatial).flatmap(lambda s: original(**kw, spatial_dims=s))
        return original(**kw)

    cases.__wrapped__ = original  # the override contract (inspect.signature) is the original's
    return replace(record, cases=cases)


def first_case(record: NormRecord):
    """The simplest case the record's strategy produces (Hypothesis' minimal example)."""
    return find(record.cases(), lambda c: True,
                settings=settings(database=None, derandomize=True, max_examples=200,
                                  suppress_health_check=list(HealthCheck)))


# ------------------------------------------------------------------ probing

def probe(backend: CandidateBackend, record: NormRecord, case):
    """The dtypes the candidate accepts on the simplest call (it raises on the others, or its kind
    cannot take them), and the crashes/hangs that call caused, by dtype."""
    accepted, refused, aborts = [], {}, {}
    for dtype in backend.dtypes:
        inputs = {r: backend.native(a, dtype) for r, a in case.arrays.items()}
        try:
            backend.forward(record.name, inputs, case.params)
            accepted.append(dtype)
        except CandidateAbort as abort:
            if abort.kind == "run-limit":
                raise
            aborts[dtype] = abort
        except Exception as exc:
            if "CandidateError" in str(exc):  # it ran but broke the contract: the properties report it
                accepted.append(dtype)
            else:
                refused[dtype] = str(exc)
    return tuple(accepted), refused, aborts


def resolve_function_kind(worker: Worker, record: NormRecord, case, timeout: float) -> str:
    """'functional' when the function takes and returns torch tensors, else 'spec' (NumPy arrays)."""
    answers = {}
    for kind, dtype in (("functional", "float32"), ("spec", "float64")):
        msg = {"op": "call", "kind": kind, "norm": record.name, "params": dict(case.params),
               "inputs": {r: (round_to(a, dtype), dtype, "contiguous") for r, a in case.arrays.items()},
               "outputs": record.outputs}
        reply = worker.request(msg, timeout)
        if reply[0] == "ok":
            return kind
        answers[kind] = reply
    if answers["functional"][1] in ("TypeError", "AttributeError", "CandidateError") and answers["spec"][0] == "error" \
            and answers["spec"][1] not in ("TypeError", "AttributeError", "CandidateError"):
        return "spec"
    return "functional"


# ------------------------------------------------------------------ running

def _quantity(message: str) -> str:
    """The quantity a failure message is about: its leading name ('y', 'dx', 'running_var', ...)."""
    match = re.match(r"[A-Za-z_]+", message)
    return match.group(0) if match else message


def _torch_fails_alike(p, record: NormRecord, draws, message: str = ""):
    """The expected failure PyTorch's own op (torch:cpu) has on these very draws, or None. With
    `message` (the candidate's failure), only a failure of torch:cpu in the same quantity counts:
    a drop-in whose forward is wrong is not excused by PyTorch's own backward deviation."""
    try:
        from normspec.impls.torch_backend import TorchCPUBackend

        torch_backend = TorchCPUBackend()
        torch_backend.name = "torch:cpu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replay(p.name, record, torch_backend, list(draws))
    except PropertyFailure as exc:
        if message and _quantity(str(exc)) != _quantity(message):
            return None
        return expected_failure(p.name, record.name, "torch:cpu", str(exc), dict(draws).get("dtype"))
    except Exception:
        return None
    return None


def parity_checked(p: Property, record: NormRecord, excused: list) -> Property:
    """`p` with every failing example replayed on PyTorch's own op: where torch:cpu fails it too,
    under a recorded expected failure, the example is discarded (and noted) instead of failing, so
    that a drop-in is never rejected for a deviation it shares with PyTorch, and the search goes on
    for failures that are its own."""

    def func(ctx):
        try:
            p.func(ctx)
        except PropertyFailure as exc:
            xf = _torch_fails_alike(p, record, ctx.draws, str(exc))
            if xf is None:
                raise
            excused.append((dict(ctx.draws).get("dtype", "?"), xf))
            reject()

    return replace(p, func=func)


def run_one(p, record: NormRecord, view: NormRecord, backend: CandidateBackend, profile: str,
            torch_kind: bool) -> Outcome:
    """Run property `p` on the candidate, turning aborts into verdicts; excuse PyTorch-shared failures."""
    start = time.perf_counter()
    excused: list = []
    try:
        v = run_property(parity_checked(p, record, excused) if torch_kind else p, view, backend, profile)
    except CapabilityMissing as exc:
        v = Verdict(p.name, record.name, backend.name, "skipped", reason=f"not applicable: {exc}")
        return Outcome(v, group=p.group)
    except CandidateAbort as abort:
        status = "not run" if abort.kind == "run-limit" else "failed"
        v = Verdict(p.name, record.name, backend.name, status,
                    message=f"{abort.kind}: {abort.message}" if status == "failed" else abort.message)
        v.seconds = time.perf_counter() - start
        return Outcome(v, call=abort.call, group=p.group)
    if excused and v.status in ("passed", "skipped"):
        dtypes = sorted({d for d, _ in excused})
        xf = excused[0][1]
        v.status = "xfail"
        v.reason = (f"{len(excused)} example(s) in {', '.join(dtypes)} fail exactly as PyTorch's own op does on "
                    f"the same inputs (known: {xf.reason}); every other example passed")
        v.link = xf.link
    if p.advisory and v.status == "failed":  # a stronger claim than correctness needs: warn only
        v.status, v.reason = "warn", f"advisory property: {v.message}"
    v.seconds = time.perf_counter() - start
    return Outcome(v, group=p.group)


def record_calls(p, view: NormRecord, backend: CandidateBackend, draws) -> list[dict]:
    """Replay the minimal counterexample once more, recording the candidate's calls and results."""
    backend.recording = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replay(p.name, view, backend, draws)
    except (Exception, CandidateAbort, CapabilityMissing):
        pass
    finally:
        calls, backend.recording = backend.recording, None
    return calls


def validate(target: str, *, as_norm: str | None = None, kind: str | None = None, profile: str = DEFAULT_PROFILE,
             example_timeout: float = EXAMPLE_TIMEOUT, run_timeout: float = RUN_TIMEOUT,
             properties: list[str] | None = None, dtypes: list[str] | None = None,
             scratch: str | None = None, fail_fast: bool = False, memory_limit: int | str | None = "auto",
             keep_temp: bool = False, on_result: Callable[[Outcome], None] = lambda o: None) -> ValidationResult:
    """Validate TARGET; raises UsageError for a target that cannot be validated as given.

    The candidate runs in a worker process group with `memory_limit` bytes of writable memory
    ("auto": half the available memory, at most 4 GiB; None: no limit), in a scratch directory
    removed at the end unless `keep_temp` (or `scratch`
    is given). On KeyboardInterrupt (Ctrl-C, or SIGTERM under the CLI) the worker's group is
    killed and the exception carries the results so far as `partial_result` (`complete` False).
    """
    check_target_syntax(target)
    for name, value in (("example_timeout", example_timeout), ("run_timeout", run_timeout)):
        if not (value > 0 and value != float("inf")):  # nan fails the first test
            raise UsageError(f"{name} must be a finite number of seconds above 0, not {value!r}")
    start = time.monotonic()
    deadline = start + run_timeout
    result = ValidationResult(target=target, profile=profile)
    if memory_limit == "auto":
        memory_limit = default_worker_memory()
    own_scratch = scratch is None
    worker = Worker(target, scratch or scratch_dir(), memory_limit=memory_limit)
    graceful = True
    try:
        worker.start()
        try:
            reply = worker.request({"op": "describe"}, timeout=max(60.0, example_timeout))
        except CandidateAbort as abort:
            raise UsageError(f"importing {target} failed: {abort.message}") from None
        if reply[0] == "memory":
            raise UsageError(f"importing {target} exceeded the worker's memory limit ({reply[1]}: {reply[2][:200]}); "
                             f"raise it with --memory-limit")
        if reply[0] != "ok":
            raise UsageError(f"cannot import {target}: {reply[1]}: {reply[2]}")
        info = reply[1]
        if info["kind"] is None:
            raise UsageError(f"{target} is a {info['type']}, not a recognized kind: expected a torch.nn.Module "
                             f"subclass (a drop-in for a torch.nn normalization module), a drop-in for a "
                             f"torch.nn.functional function, or a function with normspec's NumPy spec signature")
        norm = resolve_norm(info, as_norm)
        record = norms()[norm]
        result.norm, result.name = norm, info["name"]
        chosen = list(PROPERTIES.values()) + list(VALIDATE_PROPERTIES.values())
        if properties:
            known = {p.name: p for p in chosen}
            unknown = [n for n in properties if n not in known]
            if unknown:
                raise UsageError(f"unknown property(ies) {', '.join(unknown)}; known: {', '.join(known)}")
            chosen = [known[n] for n in properties]
        if dtypes:
            bad = [d for d in dtypes if d not in ALL_DTYPES]
            if bad:
                raise UsageError(f"unknown dtype(s) {', '.join(bad)}; known: {', '.join(ALL_DTYPES)}")
        case = first_case(restricted_record(record, info["kind"], info["ranks"]))
        if info["kind"] == "function":
            info["kind"] = kind or resolve_function_kind(worker, record, case, max(60.0, example_timeout))
        elif kind and kind != info["kind"]:
            raise UsageError(f"{target} is a torch.nn.Module subclass, so --kind must be 'module', not {kind!r}")
        result.kind = info["kind"]
        view = restricted_record(record, result.kind, info["ranks"])
        backend = CandidateBackend(worker, norm, result.kind, record.outputs, ranks=info["ranks"],
                                   dtypes=tuple(dtypes or ALL_DTYPES), layouts=ALL_LAYOUTS,
                                   example_timeout=example_timeout, deadline=deadline)
        backend.database_key = f"candidate={target}:{result.kind}"
        try:
            accepted, refused, aborts = probe(backend, record, case)
        except CandidateAbort as abort:
            aborts, accepted, refused = {"?": abort}, (), {}
        for dtype, abort in aborts.items():
            v = Verdict(f"simplest_call[{dtype}]", norm, backend.name, "failed", message=f"{abort.kind}: {abort.message}")
            result.outcomes.append(Outcome(v, call=abort.call, group="contract"))
            result.first_counterexample_s = result.first_counterexample_s or time.monotonic() - start
        result.not_exercised = refused
        if not accepted:
            if refused:
                why = "; ".join(f"{d}: {m}" for d, m in refused.items())
                v = Verdict("simplest_call", norm, backend.name, "failed",
                            message=f"the candidate fails on the simplest call {case.describe()} in every dtype ({why})")
                result.outcomes.append(Outcome(v, group="contract"))
                result.first_counterexample_s = result.first_counterexample_s or time.monotonic() - start
            result.complete = True
            return result
        backend.dtypes = accepted
        result.dtypes, result.layouts = accepted, backend.layouts
        torch_kind = result.kind in ("module", "functional")
        for p in chosen:
            if not p.applies(record):
                v = Verdict(p.name, norm, backend.name, "skipped", reason=f"not applicable: does not apply to {norm}")
                outcome = Outcome(v, group=p.group)
            elif time.monotonic() >= deadline:
                v = Verdict(p.name, norm, backend.name, "not run",
                            message=f"the whole-run time limit of {run_timeout:.0f}s was reached first")
                outcome = Outcome(v, group=p.group)
            else:
                with warnings.catch_warnings(record=True) as caught:  # the properties' own arithmetic
                    warnings.simplefilter("default")
                    outcome = run_one(p, record, view, backend, profile, torch_kind)
                result.captured_warnings += len(caught)
                if outcome.status == "skipped" and not outcome.verdict.reason.startswith("not applicable"):
                    outcome.verdict.reason = f"not applicable: {outcome.verdict.reason}"
                if outcome.status == "failed" and outcome.verdict.draws:
                    outcome.calls = record_calls(p, view, backend, outcome.verdict.draws)
            if outcome.status == "failed" and result.first_counterexample_s is None:
                result.first_counterexample_s = time.monotonic() - start
            result.outcomes.append(outcome)
            on_result(outcome)
            if fail_fast and outcome.status == "failed":
                break
        result.complete = True
        return result
    except KeyboardInterrupt as exc:
        graceful = False
        exc.partial_result = result
        raise
    finally:
        worker.stop(graceful=graceful)
        result.seconds = time.monotonic() - start
        result.output_bytes, result.output_dropped = worker.output_bytes, worker.output_dropped
        if keep_temp or not own_scratch:
            result.scratch = worker.scratch
        else:
            shutil.rmtree(worker.scratch, ignore_errors=True)
