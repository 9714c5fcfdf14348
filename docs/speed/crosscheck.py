"""An independent timer for the engines table (docs/speed/engines.md, issue 15).

    python docs/speed/crosscheck.py [--mb 64] [--repeats 7] [--engines numpy,jax] [--out FILE]

For each row of the table (layer_norm and rms_norm on (256*mb, 1024), batch_norm's training call on
(mb, 64, 64, 64); float32; forward and forward+backward) and each engine, this script calls the
engine through its own public API, written here without normspec code in the timed path:

- numpy: the plain two-pass formula (mean, then the mean square of x - mean) and its closed-form
  backward (Ioffe & Szegedy 2015, Algorithm 1 and section 3; Ba et al. 2016; Zhang & Sennrich 2019);
- torch:cpu: torch.nn.functional.layer_norm / rms_norm / batch_norm, autograd for the backward;
- torch:inductor: torch.compile of the same functional, once with dynamic=True (what normspec's
  backend uses) and once with dynamic=False (what the default dynamic=None compiles for the first
  shape it sees; a second shape would make it recompile with dynamic shapes);
- jax: flax.linen LayerNorm / RMSNorm under jax.jit, outputs `block_until_ready()`; the backward as
  jit(vjp) (one XLA program, as a training step compiles it) and as vjp(jit) (normspec's way);
- onnxruntime: a one-node model (LayerNormalization, RMSNormalization) built with onnx.helper with
  static shapes, InferenceSession on the CPU provider, numpy in and out (forward only);
- numpy:fast has no public API outside normspec: it is called through normspec's backend, so its
  ratio only checks the timer.

Before any timing, each independent call is checked against normspec's backend for the same
engine on a small input (`check`). Then, in one process, normspec bench's prepared call
(`normspec.bench.prepare`), the independent call(s) and np.copyto of the input's bytes (the
yardstick) are sampled alternately, with one warm-up call each, and the medians, IQRs, the ratio
bench / independent and each one's % of copy (the bench's byte model over the copy's GB/s) are
printed and written to --out.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ENGINES = ("numpy", "numpy:fast", "torch:cpu", "torch:inductor", "jax", "onnxruntime")
NORMS = ("layer_norm", "rms_norm", "batch_norm")
PASSES = ("forward", "forward+backward")
SMALL = {"layer_norm": (12, 96), "rms_norm": (12, 96), "batch_norm": (4, 3, 6, 5)}  # for `check`
# Agreement "at float32 roundoff": |a - b| <= TOL * max(1, max|b|) elementwise, TOL = 64 unit roundoffs.
TOL = 64 * 2.0 ** -24
OUT = Path(__file__).parent / "engines" / "crosscheck.txt"

Call = Callable[[], dict]


def shape_for(norm: str, mb: int) -> tuple[int, ...]:
    """The table's shapes scaled to `mb` MiB of float32: tokens (256 mb, 1024), cnn (mb, 64, 64, 64)."""
    return (256 * mb, 1024) if norm != "batch_norm" else (mb, 64, 64, 64)


class NotAvailable(Exception):
    """This engine has no such call (the message says why): an n/a cell, not an error."""


# ---------------------------------------------------------------------------- the row's data

@dataclass
class Row:
    """normspec's bench case for one norm and shape, in float32 (the arrays both timers get)."""

    norm: str
    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    dy: np.ndarray
    wrt: tuple[str, ...]
    case: Any = field(repr=False)


def make_row(norm: str, shape: tuple[int, ...], seed: int = 0) -> Row:
    """The record's `bench_case` (as `normspec.bench.prepare` builds it), and its dy (seed + 1)."""
    from normspec.bench import bench_case
    from normspec.registry import norms

    record = norms()[norm]
    case = bench_case(record, shape, seed)
    arrays = {r: np.ascontiguousarray(a, dtype=np.float32) for r, a in case.arrays.items() if a is not None}
    dy = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
    wrt = tuple(r for r in record.differentiable if r in arrays)
    return Row(norm, arrays, dict(case.params), dy, wrt, case)


def byte_model(row: Row, pass_: str) -> int:
    """Bytes a call must move at minimum: forward reads the inputs and writes y (and the new running
    statistics); forward+backward reads the inputs and dy and writes the gradients."""
    inputs = sum(a.nbytes for a in row.arrays.values())
    if pass_ == "forward":
        state = sum(row.arrays[r].nbytes for r in ("running_mean", "running_var") if r in row.arrays)
        return inputs + row.arrays["x"].nbytes + state
    return inputs + row.dy.nbytes + sum(row.arrays[r].nbytes for r in row.wrt)


# ---------------------------------------------------------------------------- numpy

def _np_geometry(norm: str, x: np.ndarray):
    """(axes reduced for the statistics, the parameters' broadcast shape, the axes their gradients sum)."""
    if norm == "batch_norm":
        axes = (0,) + tuple(range(2, x.ndim))
        return axes, (1, x.shape[1]) + (1,) * (x.ndim - 2), axes
    return (x.ndim - 1,), (x.shape[-1],), tuple(range(x.ndim - 1))


def numpy_calls(row: Row, pass_: str) -> dict[str, Call]:
    """The plain two-pass formula: mean, then mean((x - mean)^2); y = (x - mean)/sqrt(var + eps) w + b."""
    a, norm, eps = row.arrays, row.norm, row.params["eps"]
    x, dy = a["x"], row.dy
    axes, pshape, paxes = _np_geometry(norm, x)
    w = a["weight"].reshape(pshape)
    b = a["bias"].reshape(pshape) if "bias" in a else None

    def normalized():
        mean = x.mean(axis=axes, keepdims=True) if norm != "rms_norm" else None
        d = x - mean if mean is not None else x
        var = np.mean(d * d, axis=axes, keepdims=True)  # the mean square for RMSNorm
        r = 1 / np.sqrt(var + eps)
        return d * r, r, mean, var

    def forward():
        xhat, _, mean, var = normalized()
        out = {"y": xhat * w + b if b is not None else xhat * w}
        if norm == "batch_norm":  # PyTorch's update: new-value momentum, unbiased variance
            m, n = row.params["momentum"], x.size // x.shape[1]
            out["running_mean"] = (1 - m) * a["running_mean"] + m * mean.reshape(-1)
            out["running_var"] = (1 - m) * a["running_var"] + m * var.reshape(-1) * (n / (n - 1))
        return out

    def gradients():
        xhat, r, mean, _ = normalized()
        g = dy * w
        gx = (g * xhat).mean(axis=axes, keepdims=True)
        dx = r * (g - g.mean(axis=axes, keepdims=True) - xhat * gx) if mean is not None else r * (g - xhat * gx)
        grads = {"x": dx, "weight": (dy * xhat).sum(axis=paxes).reshape(-1)}
        if b is not None:
            grads["bias"] = dy.sum(axis=paxes).reshape(-1)
        return grads

    return {"two-pass formula": forward if pass_ == "forward" else gradients}


def numpy_fast_calls(row: Row, pass_: str, backend) -> dict[str, Call]:
    """numpy:fast exists only inside normspec: its backend's kernels, called directly (no prepare)."""
    natives = {r: backend.native(v, "float32") for r, v in row.arrays.items()}
    dy = backend.native(row.dy, "float32")
    if pass_ == "forward":
        return {"normspec backend": lambda: backend.forward(row.norm, natives, row.params)}
    return {"normspec backend": lambda: backend.gradients(row.norm, natives, row.params, dy, row.wrt)}


# ---------------------------------------------------------------------------- torch

def _torch_functional(norm: str, params: dict, tag: str):
    """torch.nn.functional's op as f(**tensors); a fresh code object per `tag`, because Dynamo
    caches compiled graphs on the code object and two compile settings must not share them."""
    import torch.nn.functional as F

    eps = params["eps"]
    if norm == "layer_norm":
        def f(x, weight, bias):
            return F.layer_norm(x, weight.shape, weight, bias, eps)
    elif norm == "rms_norm":
        def f(x, weight):
            return F.rms_norm(x, weight.shape, weight, eps)
    else:
        momentum = params["momentum"]

        def f(x, weight, bias, running_mean, running_var):  # updates the running buffers in place
            return F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=momentum,
                                eps=eps)
    f.__code__ = f.__code__.replace(co_name=f"{norm}_{tag}".replace("=", "_").replace(":", "_"))
    return f


_COMPILED: dict[tuple, Callable] = {}


def _torch_variants(norm: str, params: dict, engine: str) -> dict[str, Callable]:
    import torch

    if engine == "torch:cpu":
        return {"F." + norm: _torch_functional(norm, params, "eager")}
    variants = {}
    for dynamic in (True, False):
        key = (norm, tuple(sorted(params.items())), dynamic)
        if key not in _COMPILED:
            f = _torch_functional(norm, params, f"dynamic_{dynamic}")
            _COMPILED[key] = torch.compile(f, dynamic=dynamic, fullgraph=True)
        variants[f"compile(dynamic={dynamic})"] = _COMPILED[key]
    return variants


def torch_calls(row: Row, pass_: str, engine: str) -> dict[str, Call]:
    """Eager or compiled functional; forward+backward: torch.autograd.grad with the fixed dy."""
    import torch

    calls = {}
    for label, f in _torch_variants(row.norm, row.params, engine).items():
        t = {r: torch.from_numpy(v.copy()) for r, v in row.arrays.items()}
        state = {r: t[r] for r in ("running_mean", "running_var") if r in t}
        if pass_ == "forward":
            def call(f=f, t=t, state=state):
                return {"y": f(**t), **state}
        else:
            leaves = [t[r].requires_grad_(True) for r in row.wrt]
            dy = torch.from_numpy(row.dy.copy())

            def call(f=f, t=t, leaves=leaves, dy=dy):
                return dict(zip(row.wrt, torch.autograd.grad(f(**t), leaves, dy)))
        calls[label] = call
    return calls


# ---------------------------------------------------------------------------- jax

def jax_calls(row: Row, pass_: str) -> dict[str, Call]:
    """flax.linen LayerNorm / RMSNorm (their defaults) under jax.jit; the backward through jax.vjp."""
    import flax.linen as nn
    import jax

    eps = row.params["eps"]
    if row.norm == "layer_norm":
        module = nn.LayerNorm(epsilon=eps)

        def apply(x, weight, bias):
            return module.apply({"params": {"scale": weight, "bias": bias}}, x)
    elif row.norm == "rms_norm":
        module = nn.RMSNorm(epsilon=eps)

        def apply(x, weight):
            return module.apply({"params": {"scale": weight}}, x)
    else:
        raise NotAvailable("flax BatchNorm updates the running variance with the biased batch variance, "
                           "not PyTorch's unbiased one (the bench's case)")
    args = [jax.device_put(row.arrays[r]) for r in row.wrt]  # x, weight(, bias): all differentiated
    if pass_ == "forward":
        forward = jax.jit(apply)
        return {"jit": lambda: {"y": forward(*args).block_until_ready()}}
    dy = jax.device_put(row.dy)
    step = jax.jit(lambda dy, *a: jax.vjp(apply, *a)[1](dy))
    forward = jax.jit(apply)

    def jit_of_vjp():
        return dict(zip(row.wrt, jax.block_until_ready(step(dy, *args))))

    def vjp_of_jit():
        return dict(zip(row.wrt, jax.block_until_ready(jax.vjp(forward, *args)[1](dy))))
    return {"jit(vjp)": jit_of_vjp, "vjp(jit)": vjp_of_jit}


# ---------------------------------------------------------------------------- onnxruntime

def onnxruntime_calls(row: Row, pass_: str) -> dict[str, Call]:
    """A one-node ONNX model with the row's static shapes, run by ONNX Runtime's CPU provider."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if pass_ != "forward":
        raise NotAvailable("ONNX Runtime's inference sessions have no backward")
    if row.norm == "batch_norm":
        raise NotAvailable("ONNX BatchNormalization (training_mode=1) updates the running variance with the "
                           "biased batch variance, not PyTorch's unbiased one (the bench's case)")
    op, opset, names = {"layer_norm": ("LayerNormalization", 17, ("X", "Scale", "B")),
                        "rms_norm": ("RMSNormalization", 23, ("X", "scale"))}[row.norm]
    feeds = dict(zip(names, (row.arrays[r] for r in row.wrt)))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in feeds.items()]
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(row.arrays["x"].shape))
    node = helper.make_node(op, list(names), ["Y"], axis=-1, epsilon=float(row.params["eps"]))
    model = helper.make_model(helper.make_graph([node], row.norm, inputs, [output]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)  # what this onnxruntime reads
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {"InferenceSession.run": lambda: {"y": session.run(["Y"], feeds)[0]}}


# ---------------------------------------------------------------------------- dispatch and agreement

def independent_calls(engine: str, row: Row, pass_: str, backend=None) -> dict[str, Call]:
    """{variant: call} for one engine; each call returns its outputs, computation finished."""
    if engine == "numpy":
        return numpy_calls(row, pass_)
    if engine == "numpy:fast":
        return numpy_fast_calls(row, pass_, backend)
    if engine in ("torch:cpu", "torch:inductor"):
        return torch_calls(row, pass_, engine)
    if engine == "jax":
        return jax_calls(row, pass_)
    if engine == "onnxruntime":
        return onnxruntime_calls(row, pass_)
    raise ValueError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")


def as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch
        value = value.detach().numpy()
    return np.asarray(value, dtype=np.float64)


def compare(ours: dict, theirs: dict) -> tuple[float, list[str]]:
    """(largest difference, what differs) between two output dicts (ours from an independent call,
    theirs from normspec's backend, already numpy), relative to max(1, each output's largest
    magnitude); a difference beyond TOL, or an output missing, is a disagreement."""
    worst, problems = 0.0, []
    for name, b in theirs.items():
        if name not in ours:
            problems.append(f"{name}: missing from the independent call")
            continue
        a = as_numpy(ours[name]).reshape(b.shape)
        scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
        err = float(np.max(np.abs(a - b), initial=0.0)) / scale
        worst = max(worst, err) if err == err else err
        if not err <= TOL:
            problems.append(f"{name}: differs by {err:.2e} of max(1, max|{name}|) (> {TOL:.1e})")
    return worst, problems


def normspec_outputs(backend, row: Row, pass_: str) -> dict[str, np.ndarray]:
    """normspec's backend on the same float32 arrays, as float64 numpy (what `prepare` times)."""
    natives = {r: backend.native(v, "float32") for r, v in row.arrays.items()}
    if pass_ == "forward":
        out = backend.forward(row.norm, natives, row.params)
    else:
        out = backend.gradients(row.norm, natives, row.params, backend.native(row.dy, "float32"), row.wrt)
    return {k: backend.to_numpy(v) for k, v in out.items()}


def check(engine: str, norm: str, pass_: str, backend, shape: tuple[int, ...] | None = None) -> dict[str, tuple]:
    """{variant: (largest difference, disagreements)} of each independent call with normspec's backend on a small input.
    Raises NotAvailable when the engine (or normspec's backend) has no such call."""
    from normspec.bench import Unsupported

    row = make_row(norm, shape or SMALL[norm])
    why = backend.unsupported(norm, row.params, "float32", "contiguous")
    if why:
        raise NotAvailable(f"normspec's {engine}: {why}")
    if pass_ != "forward" and not getattr(backend, "differentiates", True):
        raise NotAvailable(f"normspec's {engine} is forward-only")
    try:
        theirs = normspec_outputs(backend, row, pass_)
    except (Unsupported, NotImplementedError) as exc:
        raise NotAvailable(f"normspec's {engine}: {exc}") from None
    calls = independent_calls(engine, row, pass_, backend)
    return {label: compare(call(), theirs) for label, call in calls.items()}


# ---------------------------------------------------------------------------- timing

def _sample(call: Callable, sync: Callable, number: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(number):
        call()
    sync()
    return (time.perf_counter() - start) / number


def interleaved(calls: dict[str, tuple[Callable, Callable]], repeats: int, min_sample_s: float) -> dict:
    """{label: seconds per call, one per sample}: each (call, sync) is warmed up once, looped so a
    sample lasts min_sample_s, and sampled in turn (forward order on even rounds, reversed on odd)."""
    numbers = {}
    for label, (call, sync) in calls.items():
        _sample(call, sync, 1)  # warm-up
        first = _sample(call, sync, 1)
        numbers[label] = max(1, int(np.ceil(min_sample_s / max(first, 1e-7))))
    samples = {label: [] for label in calls}
    order = list(calls)
    for i in range(repeats):
        for label in (order if i % 2 == 0 else order[::-1]):
            samples[label].append(_sample(calls[label][0], calls[label][1], numbers[label]))
    return samples


def median_iqr(values) -> tuple[float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), float(q75 - q25)


@dataclass
class Line:
    """One line of the table: a row, an engine, one independent variant beside the bench's call.
    The ratio is the median (and IQR) over rounds of bench / independent samples taken side by side,
    which a host's drift moves less than the ratio of the two medians."""

    norm: str
    shape: str
    pass_: str
    engine: str
    variant: str
    indep: list = field(default_factory=list)  # seconds per call, one per sample
    bench: list = field(default_factory=list)
    copy_gbps: float = np.nan
    nbytes: int = 0
    note: str = ""

    def pct(self, seconds: float) -> float:
        return 100.0 * self.nbytes / seconds / 1e9 / self.copy_gbps

    def text(self) -> str:
        head = f"{self.norm:<10} {self.shape:<14} {self.pass_:<16} {self.engine:<14} {self.variant:<24}"
        if self.note:
            return f"{head} {self.note}"
        (i, di), (b, db) = median_iqr(self.indep), median_iqr(self.bench)
        r, dr = median_iqr(np.divide(self.bench, self.indep))
        return (f"{head} {i * 1e3:8.1f} {di * 1e3:6.1f} {b * 1e3:8.1f} {db * 1e3:6.1f} {r:5.2f} {dr:4.2f}"
                f" {self.pct(i):5.0f}% {self.pct(b):5.0f}% {self.copy_gbps:5.1f}")


HEADER = (f"{'norm':<10} {'shape':<14} {'pass':<16} {'engine':<14} {'independent call':<24} {'indep ms':>8}"
          f" {'IQR':>6} {'bench ms':>8} {'IQR':>6} {'b/i':>5} {'IQR':>4} {'i%copy':>6} {'b%copy':>6} {'copy GB/s':>5}")


def measure(engine: str, backend, row: Row, pass_: str, repeats: int, min_sample_s: float) -> list[Line]:
    """Time normspec's prepared call, the independent call(s) and np.copyto alternately for one cell."""
    from normspec.bench import Unsupported, prepare
    from normspec.registry import norms

    shape = "x".join(map(str, row.arrays["x"].shape))
    try:
        independent = independent_calls(engine, row, pass_, backend)
        prepared = prepare(norms()[row.norm], backend, row.arrays["x"].shape, "float32", pass_)
    except (NotAvailable, Unsupported, NotImplementedError) as exc:
        return [Line(row.norm, shape, pass_, engine, "-", note=f"n/a: {exc}")]
    nbytes = byte_model(row, pass_)
    note = "" if nbytes == prepared.bytes else f" (the bench's byte model says {prepared.bytes})"
    src = row.arrays["x"]
    dst = np.empty_like(src)
    nothing = lambda: None  # noqa: E731
    calls = {"copy": (lambda: np.copyto(dst, src), nothing), "bench": (prepared.call, backend.synchronize)}
    calls.update({label: (call, nothing) for label, call in independent.items()})
    samples = interleaved(calls, repeats, min_sample_s)
    copy_gbps = 2 * src.nbytes / median_iqr(samples["copy"])[0] / 1e9
    lines = [Line(row.norm, shape, pass_, engine, label, samples[label], samples["bench"], copy_gbps, nbytes)
             for label in independent]
    if note:
        lines[-1].variant += note
    return lines


# ---------------------------------------------------------------------------- the run

def versions() -> str:
    """The engines' versions, and torch's intra-op threads (a busy host slows its parallel regions most)."""
    import importlib.metadata as md

    import torch

    found = []
    for name in ("numpy", "torch", "jax", "flax", "onnxruntime"):
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(found) + f"; torch threads {torch.get_num_threads()}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="input size in MiB of float32 (default 64)")
    parser.add_argument("--repeats", type=int, default=7, help="samples per call (default 7)")
    parser.add_argument("--min-sample-s", type=float, default=0.02, help="shortest sample (default 0.02 s)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: all)")
    parser.add_argument("--norms", default=",".join(NORMS), help="comma-separated (default: all)")
    parser.add_argument("--passes", default=",".join(PASSES), help="comma-separated (default: both)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"table file (default {OUT})")
    args = parser.parse_args(argv)
    for name, known in (("engines", ENGINES), ("norms", NORMS), ("passes", PASSES)):
        chosen = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        unknown = [v for v in chosen if v not in known]
        if unknown or not chosen:
            parser.error(f"--{name}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
        setattr(args, name, chosen)
    if args.mb < 1 or args.repeats < 1:
        parser.error("--mb and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from normspec.bench import cpu_times, steal_pct
    from normspec.impls.base import available_backends

    backends, absent = available_backends(args.engines)
    out: list[str] = [f"python docs/speed/crosscheck.py --mb {args.mb} --repeats {args.repeats}"
                      f" (engines {','.join(args.engines)})",
                      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()},"
                      f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {versions()}"]
    emit = lambda text: (print(text, flush=True), out.append(text))  # noqa: E731
    for engine, why in absent.items():
        emit(f"{engine}: absent ({why})")
    failed = []
    emit("agreement with normspec's backends on a small input (float32, TOL = 64 unit roundoffs):")
    for engine in backends:
        for norm in args.norms:
            for pass_ in args.passes:
                try:
                    verdicts = check(engine, norm, pass_, backends[engine])
                except NotAvailable:
                    continue  # an n/a cell: the table says why
                for label, (worst, problems) in verdicts.items():
                    emit(f"  {engine:<14} {label:<24} {norm:<10} {pass_:<16} largest difference {worst:.1e}: "
                         f"{'; '.join(problems) or 'agrees'}")
                    if problems:
                        failed.append((engine, norm, pass_, label))
    if failed:
        emit("some independent calls compute something else than normspec's backend: no timing")
        write(args.out, out)
        return 1
    emit("")
    emit(HEADER)
    before = cpu_times()
    for norm in args.norms:
        row = make_row(norm, shape_for(norm, args.mb))
        for pass_ in args.passes:
            for engine in backends:
                for line in measure(engine, backends[engine], row, pass_, args.repeats, args.min_sample_s):
                    emit(line.text())
                gc.collect()
        del row
    emit(f"load average {os.getloadavg()[0]:.1f} at the end; the hypervisor took {steal_pct(before, cpu_times()):.1f}%"
         f" of the CPUs during the timings")
    write(args.out, out)
    return 0


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
