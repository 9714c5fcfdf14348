"""Side-by-side speed of backends against the memory-bandwidth roofline (`normspec bench`, asv).

Normalization layers are memory-bound: the honest yardstick is how many bytes a call must move
at minimum (its *byte model*) divided by its time, compared with what the machine's copy achieves
on an array of the same size (`np.copyto` into a preallocated buffer: one read and one write per
element), sampled alternately with the measured call so that a shared host's drift moves both.
Times are medians over repeated runs with the IQR as spread; device backends are synchronized
before and after each timed call.

The asv suite (`benchmarks/`) uses the same preparation (`prepare`) and byte models.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from normspec.impls.base import Backend
from normspec.library.case import Case
from normspec.registry import NormRecord

PASSES = ("forward", "forward+backward")
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}  # the dtypes a bench can ask for
DTYPES = tuple(ITEMSIZE)

# Representative activations, float32 sizes in the names: CNN (N, C, H, W), transformer (tokens, hidden).
SHAPE_PRESETS: dict[str, tuple[int, ...]] = {
    "cnn-1MB": (4, 64, 32, 32),
    "cnn-8MB": (8, 64, 64, 64),
    "cnn-64MB": (64, 64, 64, 64),
    "tokens-1MB": (256, 1024),
    "tokens-8MB": (2048, 1024),
    "tokens-64MB": (16384, 1024),
}
DEFAULT_SHAPES = ("tokens-1MB", "tokens-8MB", "tokens-64MB", "cnn-1MB", "cnn-8MB", "cnn-64MB")
DEFAULT_NORMS = ("layer_norm", "rms_norm", "batch_norm")


class Unsupported(NotImplementedError):
    """This (norm, backend, shape, dtype, pass) cannot be measured; the message says why."""


def parse_param(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from the command line: true/false/none, an int, a float, else the string itself."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--param {text!r}: expected KEY=VALUE, e.g. training=false")
    word = value.strip()
    named = {"true": True, "false": False, "none": None}
    if word.lower() in named:
        return key.strip(), named[word.lower()]
    for kind in (int, float):
        try:
            return key.strip(), kind(word)
        except ValueError:
            pass
    return key.strip(), word


def check_params(records: Iterable[NormRecord], shapes: Iterable[tuple[int, ...]], params: Mapping[str, Any]) -> None:
    """Every overridden parameter must be one of each selected norm's benchmark-case parameters."""
    if not params:
        return
    for record in records:
        cases = (record.bench_case(tuple(s), np.random.default_rng(0)) for s in shapes) if record.bench_case else ()
        case = next((c for c in cases if c is not None), None)  # the parameters do not depend on the shape
        names = sorted(case.params) if case is not None else []
        unknown = [k for k in params if k not in names]
        if unknown:
            raise ValueError(f"--param {', '.join(unknown)}: not a parameter of {record.name}'s benchmark case "
                             f"(its parameters: {', '.join(names) or 'none'})")


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """A preset name (`tokens-64MB`) or dimensions joined by `x` (`16384x1024`) -> (label, shape)."""
    if text in SHAPE_PRESETS:
        return text, SHAPE_PRESETS[text]
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ValueError(f"shape {text!r} is neither a preset ({', '.join(SHAPE_PRESETS)}) "
                         f"nor dimensions like 16384x1024 or 64x64x64x64 (at least 2, each >= 1)")
    return text, shape


def memory_needed(shape: tuple[int, ...], dtype: str, passes: Iterable[str] = PASSES) -> int:
    """Host bytes one measurement of `shape` may hold at once, an upper estimate per element: the
    float64 case (8) and, for a backward pass, the float64 upstream gradient (8); x, y, dy, dx and
    the two copy-roofline buffers in the dtype (6 x itemsize); four intermediates in the kernels'
    accumulation dtype (4 x max(itemsize, 4)). Shapes past the available memory are refused."""
    n = math.prod(shape)
    item = ITEMSIZE[dtype]
    backward = 8 if "forward+backward" in passes else 0
    return n * (8 + backward + 6 * item + 4 * max(item, 4))


# ---------------------------------------------------------------------------- byte models
#
# What a call must read and write at minimum, in bytes, for arrays stored in the bench dtype.
# Default (every norm that does not override it): each input array read once, each output
# written once. A forward call reads x and the parameters/state and writes y and the updated
# state: LayerNorm/RMSNorm/BatchNorm move 2 |x| + O(C). The forward+backward pass is measured as
# `Backend.gradients` (autograd backends run forward and backward in it, closed-form backends
# recompute the statistics): it must read x, dy and the parameters and write dx and the parameter
# gradients: 3 |x| + O(C). BatchNorm's statistics need a second read of x once x exceeds the
# caches; the model deliberately does not count it (it is the minimum, the roofline).

def default_byte_model(case: Case, outputs: dict[str, int], itemsize: int, pass_: str,
                       differentiable: tuple[str, ...] = ("x", "weight", "bias")) -> int:
    """Bytes read and written at minimum; `outputs` maps output names to element counts."""
    inputs = sum(a.size for a in case.arrays.values())
    if pass_ == "forward":
        return itemsize * (inputs + sum(outputs.values()))
    dy = outputs.get("y", case.x.size)
    grads = sum(case.arrays[r].size for r in differentiable if r in case.arrays)
    return itemsize * (inputs + dy + grads)


# A record may need another model (e.g. a norm whose output is not activation-sized): register
# it here by norm name with the signature of `default_byte_model`.
BYTE_MODELS: dict[str, Callable[..., int]] = {
    "layer_norm": default_byte_model,   # read x, gamma, beta; write y  (2|x| + 2M)
    "rms_norm": default_byte_model,     # read x, gamma; write y        (2|x| + M)
    "batch_norm": default_byte_model,   # read x, gamma, beta, rm, rv; write y, rm, rv (2|x| + 6C)
}


def bytes_moved(record: NormRecord, case: Case, outputs: dict[str, int], dtype: str, pass_: str) -> int:
    model = BYTE_MODELS.get(record.name, default_byte_model)
    return int(model(case, outputs, ITEMSIZE[dtype], pass_, record.differentiable))


# ---------------------------------------------------------------------------- preparation

@dataclass
class Prepared:
    """A ready-to-time call: `call()` runs it once (not synchronized); `bytes` its byte model."""

    call: Callable[[], Any]
    bytes: int
    input_bytes: int
    backend: Backend


def bench_case(record: NormRecord, shape: tuple[int, ...], seed: int = 0,
               params: Mapping[str, Any] | None = None) -> Case:
    """The record's benchmark case for `shape`, with `params` (checked by `check_params`) replacing its own."""
    if record.bench_case is None:
        raise Unsupported(f"{record.name} has no bench_case in its record")
    case = record.bench_case(tuple(shape), np.random.default_rng(seed))
    if case is not None and params:
        case = Case(case.norm, case.arrays, {**case.params, **params})
    if case is None:
        raise Unsupported(f"{record.name} has no benchmark case for shape {tuple(shape)}")
    return case


def prepare(record: NormRecord, backend: Backend, shape: tuple[int, ...], dtype: str, pass_: str,
            seed: int = 0, warmup: bool = True, params: Mapping[str, Any] | None = None) -> Prepared:
    """Native inputs for one measurement; with `warmup` the call is run once first."""
    if pass_ not in PASSES:
        raise ValueError(f"unknown pass {pass_!r}; passes: {', '.join(PASSES)}")
    case = bench_case(record, shape, seed, params)
    why = backend.unsupported(record.name, case.params, dtype, "contiguous")
    if why:
        raise Unsupported(why)
    if pass_ == "forward+backward" and not backend.differentiates:
        raise Unsupported(f"{backend.name} is forward-only")
    natives = {r: backend.native(a, dtype) for r, a in case.arrays.items()}
    params = case.params
    outputs = backend.forward(record.name, natives, params)
    counts = {k: int(np.prod(getattr(v, "shape", ()))) for k, v in outputs.items()}
    if pass_ == "forward":
        def call():
            return backend.forward(record.name, natives, params)
    else:
        y_shape = tuple(outputs["y"].shape)
        dy = backend.native(np.random.default_rng(seed + 1).standard_normal(y_shape), dtype)
        wrt = tuple(r for r in record.differentiable if case.get(r) is not None)

        def call():
            return backend.gradients(record.name, natives, params, dy, wrt)
    del outputs
    if warmup:
        call()
        backend.synchronize()
    itemsize = ITEMSIZE[dtype]
    return Prepared(call, bytes_moved(record, case, counts, dtype, pass_), case.x.size * itemsize, backend)


# ---------------------------------------------------------------------------- timing

def _calibrated(call: Callable[[], Any], synchronize: Callable[[], None], min_sample_s: float) -> int:
    """Calls per sample so that a sample lasts at least min_sample_s (one call when it already does)."""
    synchronize()
    start = time.perf_counter()
    call()
    synchronize()
    first = time.perf_counter() - start
    return max(1, math.ceil(min_sample_s / max(first, 1e-7))) if first < min_sample_s else 1


def _sample(call: Callable[[], Any], synchronize: Callable[[], None], number: int) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(number):
        call()
    synchronize()
    return (time.perf_counter() - start) / number


def time_call(call: Callable[[], Any], synchronize: Callable[[], None] = lambda: None, *, repeats: int = 5,
              min_sample_s: float = 0.02) -> list[float]:
    """Seconds per call, one value per sample; fast calls are looped so a sample lasts min_sample_s."""
    number = _calibrated(call, synchronize, min_sample_s)
    return [_sample(call, synchronize, number) for _ in range(repeats)]


def time_paired(call: Callable[[], Any], reference: Callable[[], Any],
                synchronize: Callable[[], None] = lambda: None, *, repeats: int = 5,
                min_sample_s: float = 0.02) -> tuple[list[float], list[float]]:
    """(call's samples, reference's samples), taken alternately: reference, call, reference, call, ...

    On a shared host the bandwidth drifts by tens of percent within a minute; samples of the
    yardstick taken between the samples of the call see the same drift, so their ratio is stable
    where a yardstick measured once per run is not.
    """
    number = _calibrated(call, synchronize, min_sample_s)
    ref_number = _calibrated(reference, lambda: None, min_sample_s)
    samples, ref_samples = [], []
    for _ in range(repeats):
        ref_samples.append(_sample(reference, lambda: None, ref_number))
        samples.append(_sample(call, synchronize, number))
    return samples, ref_samples


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) CPU jiffies of the whole host from /proc/stat, or None where there is none.

    Steal is the time a hypervisor ran another guest on this guest's virtual CPUs (the 8th field of
    the `cpu` line, proc(5)).
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]
    return values[7], sum(values)


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Percent of the host's CPU time stolen between two `cpu_times()` readings (NaN when unknown)."""
    if before is None or after is None or after[1] - before[1] < STEAL_MIN_JIFFIES:
        return math.nan
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


# A measurement during which the hypervisor took more than this share of the CPUs is flagged: a
# multi-threaded kernel loses more to it than the single-threaded copy it is compared with.
# Windows shorter than STEAL_MIN_JIFFIES of CPU time (10 ms each) are too coarse to judge.
STEAL_WARN_PCT = 5.0
STEAL_MIN_JIFFIES = 10


def median_iqr(samples: Iterable[float]) -> tuple[float, float]:
    q25, q50, q75 = np.percentile(np.asarray(list(samples)), [25, 50, 75])
    return float(q50), float(q75 - q25)


def copy_call(nbytes: int) -> Callable[[], None]:
    """np.copyto between two preallocated arrays of `nbytes` (one read + one write per byte), warmed up."""
    src = np.ones(max(nbytes, 1), dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return lambda: np.copyto(dst, src)


def copy_gbps(nbytes: int, seconds: float) -> float:
    return 2 * max(nbytes, 1) / seconds / 1e9


def time_against_copy(p: Prepared, copy: Callable[[], None], *, repeats: int = 5,
                      min_sample_s: float = 0.02) -> tuple[list[float], float]:
    """(the prepared call's samples, np.copyto's GB/s from the samples paired with them)."""
    samples, copy_samples = time_paired(p.call, copy, p.backend.synchronize, repeats=repeats,
                                        min_sample_s=min_sample_s)
    return samples, copy_gbps(p.input_bytes, median_iqr(copy_samples)[0])


# ---------------------------------------------------------------------------- the run

@dataclass
class Result:
    norm: str
    pass_: str
    backend: str
    dtype: str
    shape: str
    dims: str
    input_bytes: int
    bytes: int
    median_s: float = math.nan
    iqr_s: float = math.nan
    repeats: int = 0
    gbps: float = math.nan
    copy_gbps: float = math.nan
    pct_copy: float = math.nan
    ratio_to_fastest: float = math.nan
    steal_pct: float = math.nan
    skipped: str = ""
    params: str = ""  # the --param overrides of the benchmark case, "" for the record's own case

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


@dataclass
class Plan:
    records: list[NormRecord]
    backends: list[Backend]
    shapes: list[tuple[str, tuple[int, ...]]]
    dtypes: list[str]
    passes: list[str]
    repeats: int = 5
    min_sample_s: float = 0.02
    absent: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # replace the benchmark cases' own (--param)

    @property
    def size(self) -> int:
        return len(self.records) * len(self.backends) * len(self.shapes) * len(self.dtypes) * len(self.passes)


def run(plan: Plan, on_step: Callable[[str], None] = lambda label: None, *,
        into: list[Result] | None = None) -> list[Result]:
    """Measure every combination of the plan; unsupported ones come back with `skipped` set.
    Results are appended to `into` group by group (an interrupted run keeps them)."""
    results: list[Result] = [] if into is None else into
    copies: dict[int, Callable[[], None]] = {}
    for record in plan.records:
        for label, shape in plan.shapes:
            for dtype in plan.dtypes:
                for pass_ in plan.passes:
                    group = []
                    for backend in plan.backends:
                        on_step(f"{record.name} · {pass_} · {label} · {dtype} · {backend.name}")
                        r = Result(record.name, pass_, backend.name, dtype, label, "x".join(map(str, shape)), 0, 0,
                                   params=format_params(plan.params))
                        try:
                            p = prepare(record, backend, shape, dtype, pass_, params=plan.params)
                        except Unsupported as exc:
                            r.skipped = str(exc)
                        except Exception as exc:  # a backend crashing on a shape is reported, not fatal
                            r.skipped = f"failed: {type(exc).__name__}: {exc}"
                        else:
                            if p.input_bytes not in copies:
                                copies.clear()  # one pair of copy buffers alive at a time
                                copies[p.input_bytes] = copy_call(p.input_bytes)
                            before = cpu_times()
                            samples, r.copy_gbps = time_against_copy(p, copies[p.input_bytes], repeats=plan.repeats,
                                                                     min_sample_s=plan.min_sample_s)
                            r.steal_pct = steal_pct(before, cpu_times())
                            del p.call
                            r.median_s, r.iqr_s = median_iqr(samples)
                            r.repeats = len(samples)
                            r.bytes, r.input_bytes = p.bytes, p.input_bytes
                            r.gbps = p.bytes / r.median_s / 1e9
                            r.pct_copy = 100.0 * r.gbps / r.copy_gbps
                        group.append(r)
                    timed = [g.median_s for g in group if not g.skipped]
                    for g in group:
                        if not g.skipped:
                            g.ratio_to_fastest = g.median_s / min(timed)
                    results.extend(group)
    return results


# ---------------------------------------------------------------------------- outputs

def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


CSV_FIELDS = ("norm", "pass", "backend", "dtype", "shape", "dims", "input_bytes", "bytes", "median_s", "iqr_s",
              "repeats", "gbps", "copy_gbps", "pct_copy", "ratio_to_fastest", "steal_pct", "skipped",
              "params")


def write_csv(results: list[Result], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow(r.row())
    return path


def results_table(results: list[Result], title: str = "normspec bench"):
    from rich.table import Table

    table = Table(title=title)
    for name, justify in [("norm", "left"), ("pass", "left"), ("dtype", "left"), ("shape", "left"),
                          ("backend", "left"), ("median ms", "right"), ("IQR ms", "right"), ("GB/s", "right"),
                          ("% copy", "right"), ("x fastest", "right"), ("steal", "right")]:
        table.add_column(name, justify=justify)
    for r in results:
        if r.skipped:
            table.add_row(r.norm, r.pass_, r.dtype, r.shape, r.backend, "[dim]skipped[/]", "", "", "", "", "")
            continue
        steal = "" if math.isnan(r.steal_pct) else f"{r.steal_pct:.0f}%"
        if r.steal_pct > STEAL_WARN_PCT:
            steal = f"[yellow]{steal}[/]"
        table.add_row(r.norm, r.pass_, r.dtype, r.shape, r.backend, f"{r.median_s * 1e3:.3f}", f"{r.iqr_s * 1e3:.3f}",
                      f"{r.gbps:.2f}", f"{r.pct_copy:.0f}%", f"{r.ratio_to_fastest:.2f}", steal)
    return table


def contention_warning(results: list[Result]) -> str | None:
    """A line naming the measurements during which the host stole more than STEAL_WARN_PCT of the CPUs."""
    hit = [r for r in results if not r.skipped and r.steal_pct > STEAL_WARN_PCT]
    if not hit:
        return None
    worst = max(r.steal_pct for r in hit)
    return (f"warning: the hypervisor took more than {STEAL_WARN_PCT:.0f}% of the CPUs (up to {worst:.0f}%) during "
            f"{len(hit)} of {sum(not r.skipped for r in results)} measurements (steal_pct in the CSV); their % copy "
            f"understates multi-threaded backends against the one-thread copy: rerun on a quieter host")


def plot(results: list[Result], path: Path) -> Path:
    """GB/s against input size, one line per backend (and dtype), one panel per norm and pass, with
    the copy bandwidth of the same run as the roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if not r.skipped]
    panels = sorted({(r.norm, r.pass_) for r in done})
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False)
    for ax, (norm, pass_) in zip(axes.flat, panels):
        here = [r for r in done if r.norm == norm and r.pass_ == pass_]
        for backend, dtype in sorted({(r.backend, r.dtype) for r in here}):
            line = sorted((r.input_bytes, r.gbps) for r in here if r.backend == backend and r.dtype == dtype)
            ax.plot([b / 2**20 for b, _ in line], [g for _, g in line], marker="o", label=f"{backend} {dtype}")
        copy = sorted({(r.input_bytes, r.copy_gbps) for r in here})
        ax.plot([b / 2**20 for b, _ in copy], [g for _, g in copy], "k--", marker="_", markersize=16,
                label="np.copyto (roofline)")
        ax.set_xscale("log")
        ax.set_xlabel("input size (MiB)")
        ax.set_ylabel("effective GB/s (byte model / time)")
        ax.set_title(f"{norm} · {pass_}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
