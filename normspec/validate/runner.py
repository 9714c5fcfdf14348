"""`validate(target)`: put a user's implementation through every property that applies.

The candidate becomes a `CandidateBackend` (a proxy to a worker process) and runs through the
engine's `run_property` with the norm record's spec as the reference, exactly as the built-in
backends do. Around that, this module adds what a user's code needs: finding out what the target
is (kind, norm, accepted dtypes), time limits, turning crashes and hangs into verdicts, and a
check that a failure is not one PyTorch's own op shares under a recorded expected failure.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
from hypothesis import HealthCheck, find, settings
from hypothesis import strategies as st

from normspec.expected import expected_failure
from normspec.guard import default_worker_memory
from normspec.library import tolerance
from normspec.properties import PROPERTIES, Property, PropertyFailure, Verdict, replay, run_property
from normspec.registry import NormRecord, norms
from normspec.validate.adapters import ADAPTED_NORMS, DISTRIBUTED_NORMS, compile_shapes, suffix_ranks
from normspec.validate.candidate import (
    ALL_DTYPES,
    ALL_LAYOUTS,
    CandidateAbort,
    CandidateBackend,
    CapabilityMissing,
    Worker,
    round_to,
    scratch_dir,
)
from normspec.validate.contract import (
    SYNONYMS,
    TORCH_CTOR,
    Contract,
    ContractError,
    check_for_norm,
    implied_by_ctor,
    unmapped_required,
)
from normspec.validate.distributed import DISTRIBUTED_PROPERTIES, DistributedCandidateBackend, distributed_drop_in_calls
from normspec.validate.steps import VALIDATE_PROPERTIES
from normspec.validate.worker import worker_threads

DEFAULT_PROFILE = "ci"
EXAMPLE_TIMEOUT = 20.0  # seconds one call of the candidate may take
RUN_TIMEOUT = 300.0  # seconds the whole validation may take
COMPILE_EXAMPLE_TIMEOUT = 180.0  # under --compile a call may include a (re)compilation


class UsageError(ValueError):
    """The target cannot be validated as given (exit status 2): the message says what would be right."""


@dataclass
class Outcome:
    """One property's result for the candidate: the engine's Verdict plus what validate adds."""

    verdict: Verdict
    call: dict | None = None  # for crashes and hangs: the call in flight
    calls: list[dict] = field(default_factory=list)  # the candidate's calls in the minimal example
    group: str = ""
    more: list[Verdict] = field(default_factory=list)  # further distinct failures (other dtypes)
    hints: list[str] = field(default_factory=list)  # what the failure pattern points at

    @property
    def failed_dtypes(self) -> list[str]:
        return [d for d in [self.verdict.dtype, *(v.dtype for v in self.more)] if d]

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
    compiled: bool | str = False  # validated under torch.compile: "dynamic" or "static" shapes
    contract: Contract | None = None
    contract_lines: list[str] = field(default_factory=list)  # every narrowing, for the header
    inferred_by: str = ""  # how the norm was decided: base class, name or --as

    @property
    def narrowed(self) -> bool:
        return bool(self.contract_lines)

    @property
    def tier(self) -> str:
        """'full' or 'narrowed' (a declared contract) or 'lower tier' (half intermediates declared)."""
        if self.contract is not None and self.contract.compute == "half":
            return "lower tier"
        return "narrowed" if self.narrowed else "full"


    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("failed", "not run")]

    @property
    def accepted(self) -> bool:
        # something must have run and held; an advisory warn ran and held (it is not a rejection), so a
        # validation of one property that only warns is accepted as it is when a second property passes
        return not self.failures and any(o.status in ("passed", "xfail", "warn") for o in self.outcomes)


# ------------------------------------------------------------------ the target

def _with_affine(record: NormRecord, case) -> dict:
    """The case's arrays with weight and bias added (ones, zeros), so that the affine probe builds the module an
    affine call builds: probing the simplest case (no affine tensors, elementwise_affine=False through a mapped
    flag) found no bias and dropped it from every case, so a wrong bias was accepted (red-team finding)."""
    arrays = {r: np.asarray(a) for r, a in case.arrays.items()}
    if record.name in ("layer_norm", "rms_norm") and case.params.get("axes") is None:
        shape = tuple(case.params.get("normalized_shape") or case.x.shape[-1:])
    else:
        shape = case.x.shape[1:2]
    for role, fill in (("weight", np.ones), ("bias", np.zeros)):
        if role in record.differentiable and role not in arrays:
            arrays[role] = fill(shape)
    return arrays


def compile_differences(eager: ValidationResult, compiled: ValidationResult) -> list[tuple[str, str, str]]:
    """(property, eager status, compiled status) where the two runs disagree: what torch.compile changes."""
    before = {o.verdict.property: o.status for o in eager.outcomes}
    return [(o.verdict.property, before.get(o.verdict.property, "-"), o.status) for o in compiled.outcomes
            if before.get(o.verdict.property, "-") != o.status]


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
        raise UsageError(f"unknown norm {norm!r} for validate; "
                         f"drop-ins can be validated as: {', '.join(ADAPTED_NORMS)}")
    if norm not in registered:
        raise UsageError(f"norm {norm!r} has no record in normspec.registry yet, so there is no spec to validate "
                         f"against; registered norms: {', '.join(registered)}")
    if info["kind"] == "module" and norm == "weight_norm":
        raise UsageError("weight_norm has no torch.nn module drop-in; validate a function f(v, g, dim) -> w "
                         "like torch._weight_norm instead")
    if norm in DISTRIBUTED_NORMS and info["kind"] != "module":
        raise UsageError(f"{norm} is validated as a torch.nn.Module with torch.nn.SyncBatchNorm's constructor, run "
                         f"on every rank of a process group; {info['name']} is a {info['type']}")
    return norm


# ------------------------------------------------------------------ strategies restricted to the drop-in

AFFINE_KEYWORD = {"batch_norm": "affine", "instance_norm": "affine", "group_norm": "affine",
                  "layer_norm": "elementwise_affine", "rms_norm": "elementwise_affine"}


def _last_dim_only(case):
    """The case with its normalized dims merged into one (normalize over the last dimension only)."""
    shape = tuple(case.params.get("normalized_shape", ()))
    if len(shape) <= 1:
        return case
    x = case.x
    lead = x.shape[:x.ndim - len(shape)]
    size = int(np.prod(shape))
    arrays = {"x": x.reshape(lead + (size,))}
    for role in ("weight", "bias"):
        if case.get(role) is not None:
            arrays[role] = case.get(role).reshape(size)
    return case.with_arrays(**arrays).with_params(normalized_shape=(size,))


def domain_overrides(record: NormRecord, contract: Contract | None, implied: dict | None = None) -> dict[str, Any]:
    """The case keywords a contract fixes: modes, affine, what a constructor mapping leaves out."""
    fixed: dict[str, Any] = {}
    if contract is None:
        return fixed
    if contract.modes == ("eval",):
        fixed.update(training=False, track_running_stats=True)
    elif contract.modes == ("training",):
        fixed.update(training=True)
    for key, value in (implied or {}).items():
        if key in ("elementwise_affine", "affine"):
            fixed[AFFINE_KEYWORD.get(record.name, key)] = value
        else:
            fixed[key] = value
    if contract.axes == "channels":
        fixed["channels_first"] = True
    if contract.affine is not None and record.name in AFFINE_KEYWORD:
        fixed[AFFINE_KEYWORD[record.name]] = contract.affine
        if record.name == "layer_norm" and contract.affine is False:
            fixed.pop("bias", None)
    return fixed


def restricted_record(record: NormRecord, kind: str, ranks, contract: Contract | None = None,
                      implied: dict | None = None) -> NormRecord:
    """The record with its case strategy pinned to what the drop-in form can take: BatchNorm2d-style
    classes see 4-D inputs only, torch drop-ins see PyTorch's conventions only, unless the contract
    pins another; the contract's domain (modes, affine, axes, eps=None) narrows the draws further.
    A property that asks for a case outside the declared domain is not applicable (CapabilityMissing)."""
    fixed: dict[str, Any] = {}
    if kind in ("module", "functional"):
        fixed.update(conventions=False, convention="pytorch")
    domain = domain_overrides(record, contract, implied)
    pins = dict(contract.conventions) if contract else {}
    original = record.cases
    drop_in_calls = distributed_drop_in_calls if record.name in DISTRIBUTED_NORMS and kind == "module" else (
        lambda strategy: strategy)

    def accepts(key: str, value) -> bool:
        return record.takes(key)

    spatial = sorted({r - 2 for r in ranks}) if ranks else None
    if spatial is not None and not record.takes("spatial_dims"):
        spatial = None
    # what the class fixes (a value in the constructor mapping) and the strategy does not take as a keyword
    # (eps, momentum, LRN's size/alpha/beta/k) is set on each drawn case, as a pinned convention is
    pins.update({k: v for k, v in (contract.fixed_by_class() if contract else {}).items()
                 if k not in AFFINE_KEYWORD.values() and not accepts(k, v)})
    case_pins = {k: v for k, v in pins.items() if accepts(k, v)}
    param_pins = {k: v for k, v in pins.items() if k not in case_pins}
    if param_pins:
        fixed["conventions"] = False  # the strategy draws no convention; the pinned ones are set below

    def cases(**overrides):
        for key, value in {**domain, **case_pins}.items():
            if key in overrides and overrides[key] != value and overrides[key] is not None:
                raise CapabilityMissing(f"it needs {key}={overrides[key]!r}, outside the declared contract "
                                        f"({key}={value!r})")
        if contract is not None and (not contract.eps_none or "eps" in contract.fixed_by_class()) \
                and overrides.get("eps_none"):
            raise CapabilityMissing("it needs eps=None, which the contract declares unsupported")
        kw = {k: v for k, v in {**fixed, **overrides, **domain, **case_pins}.items() if accepts(k, v)}
        if spatial is not None and "spatial_dims" not in kw:
            strategy = st.sampled_from(spatial).flatmap(lambda s: original(**kw, spatial_dims=s))
        else:
            strategy = original(**kw)
        if param_pins:
            strategy = strategy.map(lambda c: c.with_params(**param_pins))
        if contract is not None and contract.axes == "last":
            strategy = strategy.map(_last_dim_only)
        return drop_in_calls(strategy)

    cases.__wrapped__ = original  # the override contract (inspect.signature) is the original's
    return replace(record, cases=cases)


def convention_keywords(record: NormRecord) -> dict[str, tuple]:
    """The norm's convention keywords and the values its strategy draws for them: the string-valued
    parameters of its cases, with those values (the spec checks any other value when it is pinned), and
    the numeric parameters that appear only when the strategy draws conventions, such as rms_norm's
    ``weight_offset`` (1 is Gemma's ``1 + w``), with () for "any number"."""
    def params_seen(**overrides) -> dict[str, list]:
        seen: dict[str, list] = {}

        def collect(case) -> bool:
            for k, v in case.params.items():
                seen.setdefault(k, []).append(v)
            return False

        try:
            find(record.cases(**overrides), collect,
                 settings=settings(database=None, derandomize=True, max_examples=150,
                                   suppress_health_check=list(HealthCheck)))
        except Exception:
            pass
        return seen

    def numeric(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    drawn = params_seen()
    plain = params_seen(conventions=False) if record.takes("conventions") else None
    keywords: dict[str, tuple] = {}
    for k, values in sorted(drawn.items()):
        if all(isinstance(v, str) for v in values):
            keywords[k] = tuple(sorted(set(values)))
        elif plain is not None and k not in plain and all(numeric(v) for v in values):
            keywords[k] = ()
    return keywords


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


# ------------------------------------------------------------------ constructor and behaviour

TORCH_SIGNATURE = {
    "batch_norm": "torch.nn.BatchNorm2d(num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
    "instance_norm": "torch.nn.InstanceNorm2d(num_features, eps=1e-05, momentum=0.1, affine=False, "
                     "track_running_stats=False)",
    "layer_norm": "torch.nn.LayerNorm(normalized_shape, eps=1e-05, elementwise_affine=True, bias=True)",
    "group_norm": "torch.nn.GroupNorm(num_groups, num_channels, eps=1e-05, affine=True)",
    "rms_norm": "torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)",
    "local_response_norm": "torch.nn.LocalResponseNorm(size, alpha=0.0001, beta=0.75, k=1.0)",
}


def channels_first_ranks(info: dict, contract: Contract | None, norm: str) -> None:
    """A channels-first LayerNorm/RMSNorm (`--axes channels`) takes the input ranks its name says (timm's
    LayerNorm2d, RmsNorm2d: 4-D); without the declaration, such a name is a usage error that says so: judged as
    torch.nn.LayerNorm (over the trailing dims), a correct LayerNorm2d was REJECTED on its simplest call (outside
    red team)."""
    ranks = suffix_ranks(info["name"])
    if contract is not None and contract.axes == "channels":
        info["ranks"] = info["ranks"] or ranks
    elif ranks and (contract is None or contract.axes is None):
        said = " or ".join(f"{r}-D" for r in ranks)
        raise UsageError(f"{info['name']} is taken for {norm}, and its name says {said} inputs: a norm over the "
                         f"channels of (N, C, *S) (timm's LayerNorm2d and RmsNorm2d, ConvNeXt's channels_first) is "
                         f"declared with --axes channels (constructed with the channel count as normalized_shape); "
                         f"one over the last dim like torch.nn's, with --axes last (and --ranks R for the input "
                         f"ranks it takes)")


def suggested_mapping(norm: str, params: list[str]) -> dict[str, str]:
    """torch.nn argument -> the candidate's parameter of a known synonym name (a first guess)."""
    out = {}
    for arg in TORCH_CTOR.get(norm, ()):
        for name in SYNONYMS.get(arg, (arg,)):
            if name in params and name not in out.values():
                out[arg] = name
                break
    return out


def ctor_problem(norm: str, info: dict | None, contract: Contract | None) -> str | None:
    """What is wrong with calling the class's constructor as the harness will (None: nothing)."""
    ctor = contract.ctor if contract else None
    if info is None or ctor == "callable" or callable(ctor) or norm not in TORCH_CTOR:
        return None
    params = {n: (kw_ok, required) for n, kw_ok, required in info["params"]}
    passed = [v.partition(":")[0] for v in ctor.values() if isinstance(v, str)] if ctor else list(TORCH_CTOR[norm])
    if not ctor and norm == "layer_norm" and "bias" not in params:
        passed.remove("bias")  # passed only for a weight without a bias; a missing one is pinned (see implied)
    unknown = [n for n in passed if n not in params and not info["var_kw"]]
    by_position = [n for n in passed if n in params and not params[n][0]]
    missing = [n for n, (kw_ok, required) in params.items() if required and n not in passed]
    problems = []
    if unknown:
        problems.append(f"it takes no argument named {', '.join(unknown)}")
    if by_position:
        problems.append(f"{', '.join(by_position)} cannot be passed by name")
    if missing:
        problems.append(f"its required argument(s) {', '.join(missing)} would not be given")
    return "; ".join(problems) or None


def _other_options(contract: Contract | None) -> str:
    """The contract's declarations other than the constructor, as command-line options (for a suggested command
    that keeps what the user already declared: red team)."""
    if contract is None:
        return ""
    out = [f" --convention {k}={v}" for k, v in contract.conventions.items()]
    out += [f" --axes {contract.axes}"] if contract.axes else []
    out += [f" --modes {','.join(contract.modes)}"] if contract.modes else []
    out += [" --forward-only"] if contract.forward_only else []
    out += [f" --affine {'on' if contract.affine else 'off'}"] if contract.affine is not None else []
    out += [" --no-eps-none"] if not contract.eps_none else []
    out += [f" --compute {contract.compute}"] if contract.compute else []
    out += [f" --ranks {','.join(map(str, contract.ranks))}"] if contract.ranks else []
    return "".join(out)


def ctor_usage_error(target: str, norm: str, info: dict, problem: str, contract: Contract | None) -> UsageError:
    names = [n for n, _, _ in info["params"]]
    guess: dict[str, Any] = suggested_mapping(norm, names)
    duplicate = re.search(r"got multiple values for (?:keyword )?argument '(\w+)'", problem)
    if info.get("var_kw"):  # the other torch.nn arguments pass through **kwargs, but the one the class sets itself
        for arg in TORCH_CTOR.get(norm, ()):
            if arg not in guess and arg not in guess.values():
                guess[arg] = "VALUE" if duplicate and duplicate.group(1) == arg else arg
    declared = contract.ctor if contract is not None and isinstance(contract.ctor, dict) else {}
    for k, v in declared.items():  # what the user declared and the candidate takes stays as declared (':int' too)
        if not isinstance(v, str) or v.partition(":")[0] in names or info.get("var_kw"):
            guess[k] = v
    cli = ",".join(f"{k}={v}" for k, v in guess.items()) or "normalized_shape=NAME,eps=NAME"
    py = ", ".join(f"{k!r}: {v!r}" for k, v in guess.items())
    rest = _other_options(contract)
    torch_args = ", ".join(TORCH_CTOR[norm])
    where = "the declared mapping" if contract and contract.ctor else "torch.nn's arguments, by name"
    return UsageError(
        f"{info['text'].split('(')[0]}'s constructor cannot be called with {where}: {problem}.\n"
        f"  normspec passes:  {TORCH_SIGNATURE[norm]}\n"
        f"  the candidate:    {info['text']}\n"
        f"Declare how torch.nn's arguments map onto its own (arguments left out are not passed, so the "
        f"validation fixes them at torch.nn's default and says so), on the command line:\n"
        f"  normspec validate {target} --ctor {cli}{rest}\n"
        f"or in a file beside the class (NORMSPEC_CONTRACT, or @contract(...) on a wrapper class):\n"
        f"  from normspec.validate import Contract\n"
        f"  NORMSPEC_CONTRACT = Contract(ctor={{{py}}})\n"
        f"An argument the class fixes itself is declared with its value, not passed (timm's GroupNorm1 fixes "
        f"num_groups at 1: --ctor num_channels=num_channels,num_groups=1); only that value is validated.\n"
        f"or, where the arguments need converting, an adapter taking torch.nn's arguments by keyword:\n"
        f"  NORMSPEC_CONTRACT = Contract(ctor=lambda {torch_args}, **rest: {info['text'].split('(')[0]}(...))")


# Norms a quick probe can tell apart: does the output have the mean subtracted?
CENTERING = {"layer_norm": True, "batch_norm": True, "group_norm": True, "instance_norm": True, "rms_norm": False}


def behaviour_mismatch(backend: CandidateBackend, record: NormRecord, case) -> str | None:
    """A quick probe: inputs far from zero (mean 3, std 0.5), unit weight and zero bias. A centring
    norm's output has mean ~0 over its reduction sets; RMSNorm's has mean ~1. Says which norm the
    behaviour looks like when it contradicts `record` (None if it agrees or cannot tell)."""
    if record.name not in CENTERING:
        return None
    rng = np.random.default_rng(0)
    x = 3.0 + 0.5 * rng.standard_normal(case.x.shape)
    arrays = {"x": x, "bias": None}  # no bias: RMSNorm-style classes have none, and a zero bias changes nothing
    if case.get("weight") is not None:
        arrays["weight"] = np.ones_like(case.get("weight"))
    probe_case = case.with_arrays(**arrays)
    if record.name in ("batch_norm", "instance_norm"):
        probe_case = probe_case.with_params(training=True)
    dtype = "float64" if "float64" in backend.dtypes else backend.dtypes[0]
    try:
        y = backend.to_numpy(backend.forward(record.name, {r: backend.native(a, dtype) for r, a in
                                                           probe_case.arrays.items()}, probe_case.params)["y"])
        ref = record.reference(probe_case)["y"]
    except (Exception, CandidateAbort):
        return None
    if not np.all(np.isfinite(y)) or np.max(np.abs(y - ref)) < 0.1:
        return None
    near_zero = float(np.abs(np.mean(ref)))
    got = float(np.mean(y))
    if CENTERING[record.name] and abs(got) > 0.5 and near_zero < 0.1:
        return (f"the mean is not subtracted: on inputs of mean 3 and std 0.5 (unit weight, zero bias) its output "
                f"has mean {got:.3g}, where {record.name} gives {np.mean(ref):.2g}; it looks like rms_norm")
    if not CENTERING[record.name] and abs(got) < 0.1 and abs(float(np.mean(ref))) > 0.5:
        return (f"the mean is subtracted: on inputs of mean 3 and std 0.5 (unit weight) its output has mean "
                f"{got:.2g}, where rms_norm gives {np.mean(ref):.3g}; it looks like layer_norm "
                f"(or another centring norm)")
    return None


# ------------------------------------------------------------------ running

def _quantity(message: str) -> str:
    """The quantity a failure message is about: its leading name ('y', 'dx', 'running_var', ...)."""
    match = re.match(r"[A-Za-z_]+", message)
    return match.group(0) if match else message


# A candidate's failure is excused as PyTorch's own only if it is no more than this many times as
# far outside the bound as torch:cpu is on the same draws: a kernel that shares PyTorch's rounding
# misses by about as much; one with its own bug (a float16 count that is inf past 65504) misses by
# orders of magnitude more and is not hidden behind PyTorch's smaller deviation.
ALIKE_FACTOR = 4.0
# Where PyTorch's own op misses by more than this many times the bound (or returns NaN/inf), its
# result is no yardstick: how far past it the candidate lands depends on the bound's size near
# zero, not on the kernel (the same PyTorch bug missed by 7.7e13x on one length, 2.7e15x on the next).
NO_YARDSTICK = 1e6


def _excess(message: str) -> float | None:
    """How many times the bound a failure message's worst element misses by ('worst by 3.2x')."""
    if "where a finite value is due" in message:  # a NaN or an infinity for a finite value: beyond any ratio
        return math.inf
    match = re.search(r"worst by ([0-9.eE+-]+|inf|nan)x", message)
    return float(match.group(1)) if match else None


@contextmanager
def torch_threads(n: int):
    """PyTorch's intra-op threads set to `n` within the block: PyTorch's op is replayed the way the
    candidate's worker ran (a sequential sum's rounding depends on how it is split across threads)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _torch_in(compute: dict | None):
    """torch:cpu, or, under a declared compute precision (float64 -> float32), torch:cpu computing float64 calls
    in float32 (inputs rounded to float32 tensors, results read back): PyTorch's own op as a layer that computes
    in float32 runs it, on the same draws."""
    from normspec.impls.torch_backend import TorchCPUBackend

    lower = (compute or {}).get("float64")

    class InDeclaredCompute(TorchCPUBackend):
        def native(self, array, dtype, layout="contiguous"):
            return super().native(array, lower if dtype == "float64" else dtype, layout)

    backend = InDeclaredCompute() if lower and lower != "float64" else TorchCPUBackend()
    backend.name = "torch:cpu"
    return backend, lower if lower and lower != "float64" else None


def _torch_fails_alike(p, record: NormRecord, draws, message: str = "", compute: dict | None = None):
    """The expected failure PyTorch's own op (torch:cpu) has on these very draws, or None. With
    `message` (the candidate's failure), only a failure of torch:cpu in the same quantity, by
    about as much (ALIKE_FACTOR), counts: a drop-in whose forward is wrong is not excused by
    PyTorch's own backward deviation, nor a gross error by PyTorch's slight one. Under a declared
    compute precision, PyTorch's op computes float64 calls in that precision too (`_torch_in`), and
    its failure is looked up among that dtype's expected failures."""
    try:
        torch_backend, lower = _torch_in(compute)
        with warnings.catch_warnings(), torch_threads(worker_threads()):
            warnings.simplefilter("ignore")
            replay(p.name, record, torch_backend, list(draws))
    except PropertyFailure as exc:
        if message and _quantity(str(exc)) != _quantity(message):
            return None
        theirs, ours = _excess(str(exc)), _excess(message)
        if message and theirs is not None and ours is not None and theirs < NO_YARDSTICK \
                and not ours <= ALIKE_FACTOR * theirs:
            return None
        dtype = dict(draws).get("dtype")
        if lower and dtype == "float64":  # the float64 call ran in float32: the float32 deviation is PyTorch's
            return expected_failure(p.name, record.name, "torch:cpu", str(exc).replace(" float64 ", f" {lower} "),
                                    lower)
        return expected_failure(p.name, record.name, "torch:cpu", str(exc), dtype)
    except Exception:
        return None
    return None


class NormspecInternalError(BaseException):
    """An error inside normspec itself (a property, the spec, the adapters' plumbing): reported as
    normspec's, never as the candidate's (a BaseException, so Hypothesis does not shrink it)."""


def guarded(p: Property) -> Property:
    """`p` with any exception that is neither a property failure nor the candidate's own raise
    turned into NormspecInternalError."""
    from normspec.validate.candidate import CandidateRaised

    def func(ctx):
        try:
            p.func(ctx)
        except (PropertyFailure, CandidateRaised):
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] == "hypothesis":
                raise
            raise NormspecInternalError(f"{type(exc).__name__}: {exc}") from exc

    return replace(p, func=func)


def parity_checked(p: Property, record: NormRecord, excused: list, compute: dict | None = None) -> Property:
    """`p` with every failing example replayed on PyTorch's own op: where torch:cpu fails it too,
    under a recorded expected failure, the example counts as passed (and is noted) instead of
    failing, so that a drop-in is never rejected for a deviation it shares with PyTorch, and the
    search goes on for failures that are its own. It counts as an example (it is not discarded):
    where PyTorch fails most draws (float16 InstanceNorm at reach sizes), discarding made Hypothesis
    draw up to ten times the profile's examples, each run twice."""

    def func(ctx):
        try:
            p.func(ctx)
        except PropertyFailure as exc:
            xf = _torch_fails_alike(p, record, ctx.draws, str(exc), compute)
            if xf is None:
                raise
            excused.append((dict(ctx.draws).get("dtype", "?"), xf))

    return replace(p, func=func)


def _compute_mapping(contract: Contract | None) -> dict[str, str]:
    if contract is None or contract.compute is None:
        return {}
    if contract.compute == "float32":
        return {"float64": "float32"}
    return {"float16": "float16", "bfloat16": "bfloat16"}


def failing_case(v: Verdict):
    from normspec.library.case import Case

    return next((value for _, value in v.draws if isinstance(value, Case)), None)


def _passes(p, view, backend, profile, exclude=(), compute=None) -> bool:
    try:
        with tolerance.declared_compute(compute or dict(tolerance._DECLARED)):
            v = run_property(guarded(p), view, backend, profile, exclude_dtypes=tuple(exclude))
    except (CapabilityMissing, CandidateAbort, NormspecInternalError):
        return False
    return v.status == "passed"


def _worst_offset(record: NormRecord, case) -> float:
    """max |mean|/std over the reduction sets of `case` (0 where the norm has no such conditioning, or its sets
    have one value: x - mean is then exactly 0 whatever x, and |x|/sqrt(eps) is no cancellation)."""
    if case is None or record.conditioning is None:
        return 0.0
    try:
        c = record.conditioning(case)
        if c.count <= 1:
            return 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(np.asarray(c.mean)) / np.asarray(c.std)
        return float(np.nanmax(r)) if np.size(r) else 0.0
    except Exception:
        return 0.0


def diagnose(p, outcome: Outcome, record: NormRecord, view: NormRecord, backend: CandidateBackend, profile: str,
             contract: Contract | None, make_view: Callable[[Contract], NormRecord],
             checked: Property | None = None) -> None:
    """Every distinct failure of `p` by dtype (not only the first), and hints from narrowed re-runs:
    the contract under which the failures vanish names their likely cause. `checked` is `p` as the
    first run ran it (with PyTorch-shared failures excused), so the per-dtype re-runs judge alike."""
    v = outcome.verdict
    if v.dtype is None:
        return
    excluded = [v.dtype]
    while len(excluded) < len(backend.dtypes):
        try:
            again = run_property(checked or guarded(p), view, backend, profile, exclude_dtypes=tuple(excluded))
        except (CapabilityMissing, CandidateAbort, NormspecInternalError):
            break
        if again.status != "failed" or again.dtype is None or again.dtype in excluded:
            break
        outcome.more.append(again)
        excluded.append(again.dtype)
    failed = set(excluded)
    passing = [d for d in backend.dtypes if d not in failed]
    case = failing_case(v)
    if case is not None and case.params.get("eps", 0) is None and "raised" in v.message \
            and (contract is None or contract.eps_none):
        outcome.hints.append("raises with eps=None (a dtype-dependent eps, as torch.nn.RMSNorm takes it): declare "
                             "--no-eps-none if the candidate does not support it")
    if "raised" in v.message or "crashed" in v.message or "hung" in v.message:
        return  # an exception is not a matter of precision, mode or axes: no narrowed re-runs
    declared = _compute_mapping(contract)
    if passing and failed <= {"float16", "bfloat16"} and not failed & set(declared):
        if _passes(p, view, backend, profile, exclude=passing, compute={d: d for d in failed}):
            outcome.hints.append(f"fails only in {', '.join(sorted(failed))}, and passes when judged at "
                                 f"half-precision roundoff: it keeps half-precision intermediates (accumulate in "
                                 f"float32; or declare --compute half, a lower tier reported as such)")
        else:
            outcome.hints.append(f"fails only in {', '.join(sorted(failed))} (half types), even judged at their "
                                 f"own roundoff: not only a matter of half-precision intermediates")
    offset = _worst_offset(record, case)
    if offset >= 30:
        outcome.hints.append(f"the counterexample is ill-conditioned (|mean|/std = {offset:.3g}): a formula that "
                             f"cancels there, such as the one-pass variance E[x^2] - E[x]^2, loses about "
                             f"{2 * np.log10(offset):.0f} digits")
    ratio = re.search(r"worst by ([0-9.eE+-]+)x", v.message)
    # float32 arithmetic misses a float64 bound by up to ~1e7 (u32/u64 = 5e8, less where the bound has other terms:
    # a float32-rounded beta on a one-value set missed by 2.9e3x, and the hint did not fire at 1e4; red team)
    far = ratio is None or float(ratio.group(1)) >= 100
    if failed == {"float64"} and "float32" in passing and "float64" not in declared and far:
        if _passes(p, view, backend, profile, exclude=passing, compute={"float64": "float32"}):
            outcome.hints.append("fails only in float64, and passes when float64 is judged at float32's roundoff: "
                                 "it computes in float32 (declare --compute float32 if that is intended)")
    if case is None:
        return
    if "training" in case.params and (contract is None or not contract.modes):
        mode = "training" if case.params["training"] else "eval"
        other = "eval" if mode == "training" else "training"
        base = contract or Contract()
        if _passes(p, make_view(replace(base, modes=(other,))), backend, profile) and \
                not _passes(p, make_view(replace(base, modes=(mode,))), backend, profile):
            outcome.hints.append(f"fails only in {mode} mode (passes with every {other}-mode case)")
    shape = case.params.get("normalized_shape")
    if shape is not None and len(shape) > 1 and (contract is None or contract.axes != "last") \
            and record.name in ("layer_norm", "rms_norm"):
        if _passes(p, make_view(replace(contract or Contract(), axes="last")), backend, profile):
            outcome.hints.append("fails only when normalized_shape has several dims: it normalizes over the last "
                                 "dimension only (declare --axes last if that is intended)")


def run_one(p, record: NormRecord, view: NormRecord, backend: CandidateBackend, profile: str,
            torch_kind: bool, contract: Contract | None = None,
            make_view: Callable[[Contract], NormRecord] | None = None) -> Outcome:
    """Run property `p` on the candidate, turning aborts into verdicts; excuse PyTorch-shared failures;
    judge at the declared compute precision; diagnose failures (see `diagnose`)."""
    start = time.perf_counter()
    excused: list = []
    backend.current_property, backend.forward_halves_only = p.name, False
    try:
        with tolerance.declared_compute(_compute_mapping(contract)):
            checked = parity_checked(guarded(p), record, excused, _compute_mapping(contract)) if torch_kind \
                else guarded(p)
            v = run_property(checked, view, backend, profile)
            outcome = Outcome(v, group=p.group)
            if v.status == "failed" and not p.advisory and make_view is not None:
                diagnose(p, outcome, record, view, backend, profile, contract, make_view, checked)
    except CapabilityMissing as exc:
        v = Verdict(p.name, record.name, backend.name, "skipped", reason=f"not applicable: {exc}")
        return Outcome(v, group=p.group)
    except NormspecInternalError as exc:
        v = Verdict(p.name, record.name, backend.name, "not run",
                    message=f"normspec's own error, not the candidate's (please report it): {exc}")
        v.seconds = time.perf_counter() - start
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
    if backend.forward_halves_only and v.status == "passed":
        v.reason = "forward half only (the candidate gives no gradients)"
    if p.advisory and v.status == "failed":  # a stronger claim than correctness needs: warn only
        v.status, v.reason = "warn", f"advisory property: {v.message}"
    v.seconds = time.perf_counter() - start
    return outcome


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
             keep_temp: bool = False, compile: bool | str = False, contract: Contract | None = None,
             on_result: Callable[[Outcome], None] = lambda o: None) -> ValidationResult:
    """Validate TARGET under the declared `contract` (merged over one declared beside the target);
    raises UsageError for a target or a contract that cannot be validated as given.

    The candidate runs in a worker process group with `memory_limit` bytes of writable memory
    ("auto": half the available memory, at most 4 GiB; None: no limit), in a scratch directory
    removed at the end unless `keep_temp` (or `scratch`
    is given). With `compile` (True or "dynamic", or "static"), the candidate runs under torch.compile
    with those shapes (`adapters.compiled`).
    On KeyboardInterrupt (Ctrl-C, or SIGTERM under the CLI) the worker's group is
    killed and the exception carries the results so far as `partial_result` (`complete` False).
    """
    check_target_syntax(target)
    for name, value in (("example_timeout", example_timeout), ("run_timeout", run_timeout)):
        if not (value > 0 and value != float("inf")):  # nan fails the first test
            raise UsageError(f"{name} must be a finite number of seconds above 0, not {value!r}")
    start = time.monotonic()
    deadline = start + run_timeout
    compile = compile_shapes(compile) or False
    result = ValidationResult(target=target, profile=profile, compiled=compile)
    if memory_limit == "auto":
        memory_limit = default_worker_memory()
    own_scratch = scratch is None
    worker = Worker(target, scratch or scratch_dir(), memory_limit=memory_limit, compile=compile)
    graceful = True
    backend = None
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
        declared = None
        if info.get("contract"):
            if "error" in info["contract"]:
                raise UsageError(f"the contract declared beside {info['name']}: {info['contract']['error']}")
            try:
                declared = Contract.from_wire(info["contract"]["wire"], source=info["contract"]["source"])
            except ContractError as exc:
                raise UsageError(f"the contract declared beside {info['name']}: {exc}") from None
        contract = (declared or Contract()).merged(contract) if (declared or contract) else None
        if contract is not None and contract.axes is None and isinstance(contract.ctor, dict) \
                and any(isinstance(v, str) and v.endswith(":int") for v in contract.ctor.values()):
            # ':int' passes one size, so the class normalizes one dim: without this, every call with a
            # normalized_shape of several dims failed as "cannot express this call" (red team)
            contract = replace(contract, axes="last", source=f"{contract.source} (axes=last implied by ':int')")
        norm = resolve_norm(info, as_norm)
        result.inferred_by = "--as" if as_norm else info.get("how", "")
        record = norms()[norm]
        result.norm, result.name = norm, info["name"]
        chosen = [*PROPERTIES.values(), *VALIDATE_PROPERTIES.values(), *DISTRIBUTED_PROPERTIES.values()]
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
        if dtypes and not (contract and contract.dtypes):  # a dtype filter narrows the validation too
            contract = (contract or Contract()).merged(Contract(dtypes=tuple(dtypes), source="dtype option"))
        kind_now = info["kind"] if info["kind"] != "function" else (kind or "functional")
        implied: dict[str, Any] = {}
        if contract is not None:
            try:
                check_for_norm(contract, norm, kind_now if info["kind"] != "function" else "function",
                               convention_keywords(record))
            except ContractError as exc:
                raise UsageError(f"contract: {exc}") from None
            need = unmapped_required(contract, norm)
            if need:
                raise UsageError(f"contract: the constructor mapping leaves out {', '.join(need)}, which change the "
                                 f"result and have no default normspec could assume; map them too "
                                 f"(torch.nn's arguments: {', '.join(TORCH_CTOR[norm])})")
            implied = implied_by_ctor(contract, norm)
        if info["kind"] == "module" and contract is not None and contract.ranks:
            info["ranks"] = contract.ranks  # declared: over what the class name or base says
        elif norm in ("layer_norm", "rms_norm") and info["kind"] == "module":
            channels_first_ranks(info, contract, norm)
        if info["kind"] == "module":
            problem = ctor_problem(norm, info.get("ctor"), contract)
            if problem:
                raise ctor_usage_error(target, norm, info["ctor"], problem, contract)
            params = [n for n, _, _ in (info.get("ctor") or {}).get("params", [])]
            if norm == "layer_norm" and not (contract and contract.ctor) and info.get("ctor") \
                    and "bias" not in params and not info["ctor"]["var_kw"]:
                implied["bias"] = True
        if implied and contract is None:
            contract = Contract(source="constructor signature")
        result.contract = contract
        result.contract_lines = contract.lines(implied) if contract is not None else []

        def make_view(c: Contract | None) -> NormRecord:
            return restricted_record(record, result.kind or kind_now, info["ranks"], c, implied)

        case = first_case(make_view(contract))
        if info["kind"] == "module" and contract is not None and contract.ctor is not None and implied:
            # the mapping passes no affine flag: what the module holds decides (a T5/OLMo-style norm has no bias)
            try:
                reply = worker.request({"op": "affine", "norm": norm, "shape": list(case.x.shape),
                                        "arrays": _with_affine(record, case),
                                        "params": dict(case.params), "contract": contract.to_wire()},
                                       timeout=max(60.0, example_timeout))
            except CandidateAbort:
                reply = ("error",)
            if reply[0] == "ok":
                has = reply[1]
                flag = next((k for k in ("elementwise_affine", "affine") if k in implied), None)
                if flag and implied[flag] and not has["weight"]:
                    implied[flag] = False
                    implied.pop("bias", None)
                if implied.get("bias") and not has["bias"]:
                    implied["bias"] = False
                result.contract_lines = contract.lines(implied)
                case = first_case(make_view(contract))
        if info["kind"] == "function":
            info["kind"] = kind or resolve_function_kind(worker, record, case, max(60.0, example_timeout))
        elif kind and kind != info["kind"]:
            raise UsageError(f"{target} is a torch.nn.Module subclass, so --kind must be 'module', not {kind!r}")
        result.kind = info["kind"]
        if compile and result.kind == "spec":
            raise UsageError(f"{target} is a NumPy spec-signature function: only torch drop-ins can run under "
                             f"torch.compile (drop --compile)")
        view = make_view(contract)
        wanted = tuple(d for d in (dtypes or ALL_DTYPES) if contract is None or not contract.dtypes
                       or d in contract.dtypes)
        if not wanted:
            raise UsageError(f"--dtype {', '.join(dtypes or [])} and the contract's dtypes "
                             f"{', '.join(contract.dtypes)} have none in common")
        options = dict(ranks=info["ranks"], dtypes=wanted, layouts=ALL_LAYOUTS,
                       example_timeout=example_timeout, deadline=deadline,
                       contract=contract.to_wire() if contract else None,
                       forward_only=bool(contract and contract.forward_only),
                       name="candidate[compiled]" if compile else "candidate")
        if norm in DISTRIBUTED_NORMS:  # the candidate runs on gloo ranks (normspec.validate.distributed)
            if compile:
                raise UsageError(f"--compile is not supported for {norm} yet: its ranks run the module eagerly")
            if contract is not None and contract.ctor is not None:
                raise UsageError(f"a constructor mapping (--ctor) is not supported for {norm} yet: its ranks "
                                 f"construct the module with torch.nn.SyncBatchNorm's arguments")
            worker.stop()
            backend = DistributedCandidateBackend(target, worker.cwd, worker.scratch, norm, record.outputs, **options)
        else:
            backend = CandidateBackend(worker, norm, result.kind, record.outputs, **options)
        backend.database_key = f"candidate={target}:{result.kind}"
        try:
            accepted, refused, aborts = probe(backend, record, case)
        except CandidateAbort as abort:
            aborts, accepted, refused = {"?": abort}, (), {}
        for dtype, abort in aborts.items():
            v = Verdict(f"simplest_call[{dtype}]", norm, backend.name, "failed",
                        message=f"{abort.kind}: {abort.message}")
            result.outcomes.append(Outcome(v, call=abort.call, group="contract"))
            result.first_counterexample_s = result.first_counterexample_s or time.monotonic() - start
        result.not_exercised = refused
        refusals = [re.sub(r" \(at adapters\.py:\d+\)$", "", m.partition("raised ConstructorError: ")[2])
                    for m in refused.values()]
        if not accepted and refusals and all(refusals) and info.get("ctor"):  # **kwargs hid it from ctor_problem
            raise ctor_usage_error(target, norm, info["ctor"], f"{refusals[0]}", contract)
        if not accepted:
            if refused:
                why = "; ".join(f"{d}: {m}" for d, m in refused.items())
                v = Verdict("simplest_call", norm, backend.name, "failed",
                            message=f"the candidate fails on the simplest call {case.describe()} "
                                    f"in every dtype ({why})")
                result.outcomes.append(Outcome(v, group="contract"))
                result.first_counterexample_s = result.first_counterexample_s or time.monotonic() - start
            result.complete = True
            return result
        backend.dtypes = accepted
        if not as_norm and info.get("how", "").startswith("the name"):  # a torch.nn base class is a declaration
            with tolerance.declared_compute(_compute_mapping(contract)):
                mismatch = behaviour_mismatch(backend, record, case)
            if mismatch:
                raise UsageError(f"{info['name']} was taken for {norm} from {result.inferred_by}, but its behaviour "
                                 f"disagrees: {mismatch}. Pass --as NORM to say which norm it implements.")
        result.dtypes, result.layouts = accepted, backend.layouts
        torch_kind = result.kind in ("module", "functional") and not (contract and contract.conventions)
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
                    outcome = run_one(p, record, view, backend, profile, torch_kind, contract,
                                      None if fail_fast else make_view)
                result.captured_warnings += len(caught)
                if outcome.status == "skipped" and not outcome.verdict.reason.startswith("not applicable"):
                    outcome.verdict.reason = f"not applicable: {outcome.verdict.reason}"
                if outcome.status in ("failed", "warn") and outcome.verdict.draws:
                    with tolerance.declared_compute(_compute_mapping(contract)):
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
        if isinstance(backend, DistributedCandidateBackend):
            backend.close()
        result.seconds = time.monotonic() - start
        result.output_bytes, result.output_dropped = worker.output_bytes, worker.output_dropped
        if keep_temp or not own_scratch:
            result.scratch = worker.scratch
        else:
            shutil.rmtree(worker.scratch, ignore_errors=True)
