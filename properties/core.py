"""The property engine: named properties, the context they run in, and their verdicts.

A property is a function of a `Context`. It draws what it needs (a case, a dtype, a layout)
through the context, runs the backend through it, compares against the spec or against an
invariant, and raises `PropertyFailure` with a message in one template. The engine drives it
with Hypothesis, records every draw of the execution that Hypothesis reports as minimal, and
turns that into a counterexample and a standalone reproducer.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FailedHealthCheck, Unsatisfiable

from normspec.impls.base import Backend
from normspec.library import tolerance
from normspec.library.case import Case
from normspec.registry import NormRecord


class PropertyFailure(AssertionError):
    """A property does not hold for a backend; the message says what, where and by how much."""


# `ctx.run(..., grads=OPTIONAL)`: gradients where the backend has them; a forward-only engine is
# still held to the property's forward half (see Context.run).
OPTIONAL = "optional"


def forward_half_note(backend: str) -> str:
    """What a verdict judged on a property's forward half alone says (a forward-only engine)."""
    return f"forward half only: {backend} is forward-only, its gradients are not checked"


class BackendLacks(BaseException):
    """The property needs something the backend does not offer (gradients of a forward-only engine).

    A BaseException, so that Hypothesis neither shrinks nor retries it: the property is skipped."""


# ---------------------------------------------------------------- profiles

PROFILES: dict[str, dict[str, Any]] = {
    # fast feedback while writing a kernel
    "dev": dict(max_examples=8),
    # deterministic, for CI: the same examples on every run
    "ci": dict(max_examples=20, derandomize=True),
    # before a release
    "thorough": dict(max_examples=150),
}


# Examples per sweep point (see `SweepPoint`): the first is Hypothesis's simplest draw at the
# point (band minima, seed 0), the others random.
SWEEP_EXAMPLES = {"dev": 1, "ci": 1, "thorough": 3}


# Where Hypothesis stores failing examples (replayed first on the next run). None, the default for
# library use and the harness's tests, stores nothing; the command line sets a directory under
# normspec's cache (`normspec.guard.configure_hypothesis`), never the working directory.
EXAMPLE_DATABASE: list = [None]


def set_example_database(database) -> None:
    EXAMPLE_DATABASE[0] = database


def hypothesis_settings(profile: str) -> settings:
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    return settings(
        deadline=None,
        # a derandomized profile (ci) runs the same examples every time: no database (Hypothesis forbids one)
        database=None if PROFILES[profile].get("derandomize") else EXAMPLE_DATABASE[0],
        print_blob=False,
        # the harness reports each failure itself (message, minimal counterexample, reproducer); Hypothesis's own
        # "Falsifying example" and "@seed(...)" lines, one per failing property in the dev profile, were noise
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        **PROFILES[profile],
    )


@contextmanager
def import_independent_draws():
    """Within the block, Hypothesis draws no constants mined from the caller's source files.

    Hypothesis (>= 6.131) mixes into its float and integer draws constants it collects from every
    "local" module in `sys.modules` (any file outside site-packages and the standard library: an
    editable normspec install, the user's own package). Which modules are loaded then changes the
    examples, so the derandomized `ci` profile drew differently from `normspec validate` on the
    command line and from `normspec.validate.validate` in Python (the CLI had imported more of
    normspec). The pool is pinned to empty here (what a site-packages install sees), so a profile's
    draws depend only on the property, the record and the backend. Hypothesis' global constants
    (its own list of edge values) still apply. Uses a Hypothesis internal; if that moves, the
    block is a no-op (draws then follow the imports again, as before).
    """
    try:
        from hypothesis.internal.conjecture import providers
        original, cache = providers._get_local_constants, providers.CONSTANTS_CACHE
        empty = type(providers._local_constants)()
    except (ImportError, AttributeError, TypeError):
        yield
        return
    cache.cache.clear()  # cached (global, local) choices were built from the import-dependent pool
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.cache.clear()


# ---------------------------------------------------------------- registry of properties

@dataclass(frozen=True)
class SweepPoint:
    """A region of the input space that every run visits, after the random examples: `pins` maps
    a draw's label to the strategy drawn in its place (e.g. the dtype, and a reach geometry of
    2^16 +- 1 values per set). Random draws reach a rare region (a long row in float16) in few
    runs; a sweep point reaches it in every run, the way PyTorch's OpInfo samples always include
    their large and edge cases. The other draws of the example stay Hypothesis's."""

    name: str
    pins: dict[str, st.SearchStrategy]
    dtype: str | None = None  # the dtype the point pins (skipped where the backend lacks it)
    # overrides every case drawn at the point passes to the record's cases(), where the record
    # takes them (e.g. spatial_dims=2, so that a channels_last point draws 4-D inputs)
    case_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Property:
    name: str
    func: Callable[["Context"], None]
    applies: Callable[[NormRecord], bool]
    doc: str
    group: str
    # An advisory property states a stronger claim than correctness needs (e.g. bitwise results
    # that only some algorithms achieve): `normspec check` holds backends to it, `normspec
    # validate` reports a failure as a warning instead of rejecting the candidate.
    advisory: bool = False
    # The sweep points every run of the property visits after its random examples (see SweepPoint).
    sweep: Callable[[Backend, NormRecord], list[SweepPoint]] | None = None

    def skip_reason(self, record: NormRecord, backend: Backend) -> str | None:
        if not backend.implements(record.name):
            return f"{backend.name} does not implement {record.name}"
        if not self.applies(record):
            return f"does not apply to {record.name}: {why_not(self.applies, record)}"
        return None


PROPERTIES: dict[str, Property] = {}

# The groups a property belongs to (the README's "What is checked" sections), name -> meaning.
GROUPS = {
    "agreement": "outputs, running statistics and gradients agree with the spec",
    "statistics": "the output moments and gradient sums the mathematics promises",
    "invariance": "scale and shift invariance, permutation equivariance, batch independence",
    "inference": "eval mode, folding, running-statistics conventions",
    "robustness": "ill-conditioned inputs, constant reduction sets, dtypes and layouts",
    "hygiene": "inputs never modified, deterministic, invalid calls raise",
    "identities": "identities between normalizations",
    "batch_family": "properties of BatchNorm's relatives (renorm, Lp, whitening, recurrent)",
    "synchronization": "SyncBatchNorm: the result does not depend on how the batch is cut",
    "reach": "the sizes and magnitudes where kernels change behaviour: block tails, long rows, dtype edges",
    "reparametrization": "layers reparametrized around refreshed statistics: a refresh keeps the function "
                         "and gives the statistic it promises",
}


def prop(group: str, *, applies: Callable[[NormRecord], bool] = lambda r: True, advisory: bool = False,
         sweep: Callable[[Backend, NormRecord], list[SweepPoint]] | None = None):
    """Register a property under its function name; its docstring is what it claims and why;
    `sweep` names the points every run visits besides its random examples."""

    if group not in GROUPS:
        raise ValueError(f"unknown property group {group!r}; groups: {', '.join(GROUPS)}")

    def deco(func):
        if func.__name__ in PROPERTIES:
            raise ValueError(f"property {func.__name__!r} defined twice")
        if not (func.__doc__ or "").strip():
            raise ValueError(f"property {func.__name__!r} needs a docstring saying what it claims")
        PROPERTIES[func.__name__] = Property(func.__name__, func, applies, func.__doc__.strip(), group,
                                           advisory, sweep)
        return func

    return deco


def traits(*names: str) -> Callable[[NormRecord], bool]:
    """Applies to the norms that have every one of the trait(s) `names`."""
    def applies(record):
        return record.has(*names)
    applies.traits = names
    return applies


def named(*norms: str) -> Callable[[NormRecord], bool]:
    """Applies to the named norms only (an identity or rule of theirs)."""
    def applies(record):
        return record.name in norms
    applies.names = norms
    return applies


def why_not(applies: Callable[[NormRecord], bool], record: NormRecord) -> str:
    """Why a property whose predicate is `applies` does not apply to `record`, in words: the traits
    it lacks (with their meanings), the norms the property is about, or the predicate's stated
    requirement (an attribute `requirement` on it)."""
    from normspec.registry import TRAITS

    if hasattr(applies, "traits"):
        missing = [t for t in applies.traits if not record.has(t)]
        return "needs the trait(s) " + "; ".join(f"{t} ({TRAITS.get(t, '?')})" for t in missing) + \
            f", which {record.name} does not have"
    if hasattr(applies, "names"):
        return f"a rule of {', '.join(applies.names)} only"
    requirement = getattr(applies, "requirement", None)
    if requirement:
        return f"needs {requirement}"
    return "its applicability predicate is false (it states no reason)"


# ---------------------------------------------------------------- running a backend

def representable(a: np.ndarray, dtype: str) -> bool:
    """Finite, at most a quarter of the dtype's largest value, and squares (and sums of a few
    thousand squares) that stay finite in the compute dtype."""
    if not np.all(np.isfinite(a)):
        return False
    big = float(np.abs(a).max(initial=0.0))
    compute = tolerance.compute_dtype(dtype)
    # a declared half-intermediate tier (see tolerance.declared_compute) sums at most a few hundred squares
    headroom = 2**4 if compute in ("float16", "bfloat16") else 2**10
    return big <= tolerance.MAX_FINITE[dtype] / 4 and big <= np.sqrt(tolerance.MAX_FINITE[compute]) / headroom


@dataclass
class Run:
    """One backend evaluation of a case, everything read back as float64."""

    case: Case  # the case with its arrays rounded to `dtype` (what the backend actually saw)
    dtype: str
    layout: str
    outputs: dict[str, np.ndarray]
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    dy: np.ndarray | None = None


class Context:
    """What a property sees: the norm's record, the backend, and a recorded way to draw."""

    def __init__(self, record: NormRecord, backend: Backend, draw: Callable[[st.SearchStrategy, str], Any],
                 exclude_dtypes: tuple[str, ...] = (), replaying: bool = False,
                 point: SweepPoint | None = None):
        self.replaying = replaying
        self.pins = point.pins if point is not None else {}
        self.case_overrides = {k: v for k, v in (point.case_overrides if point is not None else {}).items()
                               if record.takes(k)}
        self.record = record
        self.backend = backend
        self._draw = draw
        self.exclude_dtypes = exclude_dtypes
        self.draws: list[tuple[str, Any]] = []
        # set when a run asked for optional gradients that the backend (forward-only) cannot give
        self.forward_half = False

    # -- drawing
    def assume(self, condition: bool, why: str = "") -> None:
        """Discard this example unless `condition` (hypothesis.assume); when replaying a recorded
        example there is nothing to discard, so say which assumption no longer holds."""
        if condition:
            return
        if self.replaying:
            raise ReplayExhausted(f"the recorded example is not valid here: {why or 'an assumption failed'}")
        if _IN_PROGRESS and why:  # counted, so that a property with no example left can say why
            discards = _IN_PROGRESS[-1].setdefault("discards", {})
            discards[why] = discards.get(why, 0) + 1
        assume(False)

    def draw(self, strategy: st.SearchStrategy, label: str) -> Any:
        """Draw from `strategy` (from the sweep point's strategy where it pins `label`), recorded."""
        value = self._draw(self.pins.get(label, strategy), label)
        self.draws.append((label, value))
        return value

    def case(self, label: str = "case", **overrides) -> Case:
        return self.draw(self.record.draw_cases(**{**self.case_overrides, **overrides}), label)

    def dtype(self, *allowed: str) -> str:
        choices = [d for d in self.backend.dtypes
                   if (not allowed or d in allowed) and d not in self.exclude_dtypes]
        self.assume(bool(choices), f"{self.backend.name} supports none of the dtypes {allowed}")
        return self.draw(st.sampled_from(choices), "dtype")

    def layout(self) -> str:
        return self.draw(st.sampled_from(list(self.backend.layouts)), "layout")

    def seed(self, label: str = "seed") -> int:
        return self.draw(st.integers(0, 2**32 - 1), label)

    # -- rounding and running
    def supported(self, case: Case, dtype: str, layout: str = "contiguous") -> None:
        """Discard this example (hypothesis.assume) if the backend cannot run it."""
        reason = self.backend.unsupported(case.norm, case.params, dtype, layout)
        self.assume(reason is None, reason or "")

    def rounded(self, case: Case, dtype: str) -> Case:
        """The case with every array rounded to `dtype` exactly as the backend rounds it.

        A case whose values do not fit the dtype (they would round to infinity, or square to
        overflow in the compute dtype) is not an example for that dtype: it is discarded.
        """
        self.assume(all(representable(a, dtype) for a in case.arrays.values()), f"values do not fit {dtype}")
        b = self.backend
        return case.with_arrays(**{r: b.to_numpy(b.native(a, dtype)) for r, a in case.arrays.items()})

    def natives(self, case: Case, dtype: str, layout: str, param_layout: str = "contiguous") -> dict[str, Any]:
        """The case's arrays as the backend's arrays: x in `layout`, weight and bias in
        `param_layout`, running statistics contiguous."""
        b = self.backend
        def lay(r):
            return layout if r == "x" else param_layout if r in ("weight", "bias") else "contiguous"
        return {r: b.native(a, dtype, lay(r)) for r, a in case.arrays.items()}

    def run(self, case: Case, dtype: str, layout: str = "contiguous", *, grads: bool | str = False,
            dy: np.ndarray | None = None, dy_layout: str | None = None, param_layout: str = "contiguous") -> Run:
        """Run the backend forward (and backward when `grads`) on `case` rounded to `dtype`; dy
        in `dy_layout` (default: x's layout), weight and bias in `param_layout`.

        `grads=True`: the gradients are part of the claim; a forward-only backend cannot be judged
        (`BackendLacks`: the property is skipped, saying so). `grads=OPTIONAL`: the property's
        forward half (outputs, running statistics) stands on its own; a forward-only backend's run
        comes back without gradients (`run.grads` empty, `run.dy` None) and the verdict is marked
        "forward half only". On a backend that differentiates both mean the same."""
        if grads not in (False, True, OPTIONAL):
            raise ValueError(f"grads must be False, True or {OPTIONAL!r}, not {grads!r}")
        self.supported(case, dtype, layout)
        case = self.rounded(case, dtype)
        b = self.backend
        where = f"[{b.name} {case.norm} {dtype} {layout}]"
        try:
            outputs = b.forward(case.norm, self.natives(case, dtype, layout, param_layout), case.params)
            result = Run(case, dtype, layout, {k: b.to_numpy(v) for k, v in outputs.items()})
        except Exception as exc:
            raise PropertyFailure(f"forward raised {type(exc).__name__}: {exc} {where}") from exc
        if grads:
            if not getattr(b, "differentiates", True):
                if grads == OPTIONAL:
                    self.forward_half = True
                    if _IN_PROGRESS:  # the verdict being judged says so
                        _IN_PROGRESS[-1]["forward_half"] = True
                    return result
                raise BackendLacks(f"{b.name} is forward-only: it has no gradients")
            if dy is None:
                dy = np.random.default_rng(self.seed("dy_seed")).standard_normal(result.outputs["y"].shape)
            dy = b.to_numpy(b.native(dy, dtype))
            wrt = tuple(r for r in self.record.differentiable if case.get(r) is not None)
            try:
                g = b.gradients(case.norm, self.natives(case, dtype, layout, param_layout), case.params,
                                b.native(dy, dtype, dy_layout or layout), wrt)
            except Exception as exc:
                raise PropertyFailure(f"backward raised {type(exc).__name__}: {exc} {where}") from exc
            result.grads = {k: b.to_numpy(v) for k, v in g.items()}
            result.dy = dy
        return result

    # -- the spec and the model
    def reference(self, run: Run) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        ref = self.record.reference(run.case)
        ref_grads = self.record.reference_grad(run.case, run.dy) if run.dy is not None else {}
        return ref, ref_grads

    def bounds(self, run: Run, ref: dict, ref_grads: dict) -> tolerance.Bounds:
        """Elementwise error bounds for `run` from the tolerance model (see `tolerance`)."""
        return self.record.bounds(run.case, run.dtype, ref, run.dy, ref_grads)


# ---------------------------------------------------------------- assertions

def assert_close(actual: np.ndarray, expected: np.ndarray, bound: np.ndarray | float, what: str,
                 where: str) -> None:
    """Fail unless |actual - expected| <= bound elementwise (NaN only where expected is NaN).

    Message template: `what[index]=actual, but should be expected ± bound [where]`.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise PropertyFailure(f"{what} has shape {actual.shape}, but should have shape {expected.shape} [{where}]")
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    nan_ok = (np.isnan(expected) & np.isnan(actual)) | (actual == expected)  # equal infinities too
    with np.errstate(invalid="ignore"):
        err = np.abs(actual - expected)
        bad = ~nan_ok & ~(err <= bound)
    if bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(bad, err / np.maximum(bound, 1e-300), 0.0)
        flat = int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)))
        idx = np.unravel_index(flat, expected.shape) if expected.ndim else ()
        i = tuple(int(j) for j in idx)
        if bound[i] == 0:  # an exact claim: no ratio to report, only that it differs
            extent = f"{int(bad.sum())} of {expected.size} elements differ, where the claim is exact"
        elif not np.isfinite(actual[i]) and np.isfinite(expected[i]):  # no ratio says anything about a NaN/inf
            got = "NaN" if np.isnan(actual[i]) else "an infinity"
            extent = f"{int(bad.sum())} of {expected.size} elements out of bounds, {got} where a finite value is due"
        else:
            ratio = float(excess[i])
            shown = f"{ratio:.3g}" if f"{ratio:.3g}" != "1" else f"{ratio:.6g}"  # never 'by 1x'
            extent = f"{int(bad.sum())} of {expected.size} elements out of bounds, worst by {shown}x"
        raise PropertyFailure(
            f"{what}{list(i) if i else ''}={actual[i]!r}, but should be {expected[i]!r} ± {bound[i]:.3g} "
            f"({extent}) [{where}]"
        )


def assert_equal(actual: np.ndarray, expected: np.ndarray, what: str, where: str) -> None:
    """Fail unless bitwise-equal values (an exact invariant: no tolerance at all)."""
    assert_close(actual, expected, 0.0, what, where)


# ---------------------------------------------------------------- verdicts

@dataclass
class Verdict:
    property: str
    norm: str
    backend: str
    status: str  # passed | failed | xfail | xpass | skipped | error
    message: str = ""
    reason: str = ""
    link: str = ""
    draws: list[tuple[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reproducer: str | None = None
    # judged on the property's forward half alone: the backend is forward-only and the property's
    # gradient half was not run (a pass then says so in `reason`; see forward_half_note)
    forward_half: bool = False

    @property
    def dtype(self) -> str | None:
        """The dtype of the minimal counterexample, if the property drew one."""
        return next((value for label, value in self.draws if label == "dtype"), None)

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "xfail", "xpass", "skipped")


def run_property(p: Property, record: NormRecord, backend: Backend, profile: str = "ci",
                 exclude_dtypes: tuple[str, ...] = ()) -> Verdict:
    """Drive property `p` on (record, backend) with Hypothesis; return its verdict.

    `exclude_dtypes` removes dtypes from every draw (used to confirm that a deviation known to
    be confined to some dtypes does not also occur in the others).
    """
    start = time.perf_counter()
    verdict = Verdict(p.name, record.name, backend.name, "passed")
    reason = p.skip_reason(record, backend)
    if reason:
        verdict.status, verdict.reason = "skipped", reason
        return verdict
    last: dict[str, Context] = {}
    notes: dict[str, Any] = {}
    _IN_PROGRESS.append(notes)
    try:
        _judge(p, record, backend, profile, exclude_dtypes, last, verdict)
    finally:
        _IN_PROGRESS.pop()
    if verdict.status == "skipped" and verdict.reason.startswith("no example") and notes.get("discards"):
        top = sorted(notes["discards"].items(), key=lambda kv: -kv[1])[:2]
        verdict.reason += "; the draws were discarded because: " + "; ".join(f"{why} ({n}x)" for why, n in top)
    if notes.get("forward_half") and verdict.status in ("passed", "failed"):
        verdict.forward_half = True
        if verdict.status == "passed":
            verdict.reason = forward_half_note(backend.name)
    verdict.seconds = time.perf_counter() - start
    return verdict


# What the run_property calls in progress (innermost last) learn while their property runs: a Context
# records there that a run came back without its optional gradients. (Not passed through `_drive`'s
# `check`: Hypothesis derandomizes the ci profile from that function's source, so it stays as it is.)
_IN_PROGRESS: list[dict[str, Any]] = []


def _judge(p: Property, record: NormRecord, backend: Backend, profile: str, exclude_dtypes: tuple[str, ...],
           last: dict[str, Context], verdict: Verdict) -> None:
    """Drive `p` (random examples, then its sweep points) and set `verdict`'s status from the outcome."""
    try:
        _drive(p, record, backend, profile, exclude_dtypes, last)
        for point in _sweep_points(p, record, backend, exclude_dtypes):
            try:
                _drive(p, record, backend, profile, exclude_dtypes, last, point)
            except Unsatisfiable:
                continue  # every example at this point was discarded (e.g. values that do not fit its dtype)
            except PropertyFailure as exc:
                raise PropertyFailure(f"{exc} (found at the sweep point {point.name})") from None
    except BackendLacks as exc:
        verdict.status, verdict.reason = "skipped", str(exc)
    except (Unsatisfiable, FailedHealthCheck) as exc:
        verdict.status = "skipped"
        verdict.reason = f"no example the backend supports ({type(exc).__name__})"
    except PropertyFailure as exc:
        verdict.status, verdict.message = "failed", str(exc)
        verdict.draws = last["ctx"].draws if "ctx" in last else []
    except Exception as exc:  # a crash inside the property itself or the backend's conversion
        verdict.status, verdict.message = "failed", f"{type(exc).__name__}: {exc}"
        verdict.draws = last["ctx"].draws if "ctx" in last else []


def _sweep_points(p: Property, record: NormRecord, backend: Backend,
                  exclude_dtypes: tuple[str, ...]) -> list[SweepPoint]:
    """The property's sweep points that this backend can run (their dtype supported, not excluded)."""
    if p.sweep is None:
        return []
    return [point for point in p.sweep(backend, record)
            if point.dtype is None or (point.dtype in backend.dtypes and point.dtype not in exclude_dtypes)]


def _drive(p: Property, record: NormRecord, backend: Backend, profile: str, exclude_dtypes: tuple[str, ...],
           last: dict[str, Context], point: SweepPoint | None = None) -> None:
    """One Hypothesis run of `p`: its random examples, or (with `point`) a few examples at the sweep
    point; raises what the property raises on the minimal failing example."""
    chosen = hypothesis_settings(profile)
    if point is not None:
        chosen = settings(chosen, max_examples=SWEEP_EXAMPLES.get(profile, 1))

    @chosen
    @given(data=st.data())
    def check(data):
        ctx = Context(record, backend, lambda s, label: data.draw(s, label=label), exclude_dtypes, point=point)
        last["ctx"] = ctx
        p.func(ctx)

    # One database entry per property x norm x backend (x sweep point): all share `check`'s source,
    # which is what Hypothesis would key on; the key leaves the derandomized seed, which comes from
    # the source, alone.
    owner = getattr(backend, "database_key", backend.name)
    where = f":{point.name}" if point is not None else ""
    check._hypothesis_internal_database_key = \
        f"normspec:{p.name}:{record.name}:{owner}:{exclude_dtypes}{where}".encode()
    with import_independent_draws():
        check()


class ReplayExhausted(RuntimeError):
    pass


def replay(property_name: str, record: NormRecord, backend: Backend, draws: list[tuple[str, Any]]) -> None:
    """Re-run one property execution with recorded draws (what reproducer scripts call).

    Raises the property's PropertyFailure if it still fails; returns None if it now holds.
    """
    queue = list(draws)

    def draw(strategy, label):
        if not queue:
            raise ReplayExhausted(f"the property drew more values than were recorded (next: {label})")
        recorded_label, value = queue.pop(0)
        if recorded_label != label:
            raise ReplayExhausted(f"replay expected a draw labelled {recorded_label!r}, "
                                  f"the property asked for {label!r}")
        return value

    PROPERTIES[property_name].func(Context(record, backend, draw, replaying=True))
