"""Adapters: one call of a norm (arrays by role + parameters) -> a candidate's torch.nn module,
torch.nn.functional-style function or NumPy spec-signature function -> outputs, gradients, state.

This module imports nothing but the standard library, NumPy and torch: the validation worker
runs it in a child process, and reproducer scripts embed its source verbatim so that they replay
a counterexample with nothing but torch and numpy installed.

Kinds of candidate:
- "module": a torch.nn.Module subclass, constructed with the drop-in's constructor arguments drawn
  from the call (eps, momentum including None, affine / elementwise_affine / bias flags,
  track_running_stats, num_groups, normalized_shape, size...), cast to the dtype, its parameters
  and buffers loaded from the call's (random) arrays, put in train or eval mode, then called.
  Buffers read back after a training call are the returned state.
- "functional": a drop-in for the matching torch.nn.functional function (for weight_norm:
  `f(v, g, dim)` like `torch._weight_norm`); running statistics are handed over as clones
  and read back as the returned state, as torch.nn.functional.batch_norm updates them in place.
- "spec": a function with normspec's NumPy spec signature (e.g. normspec.spec.batch_norm),
  arguments bound by name; gradients come from a `<name>_backward` beside it, if there is one.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys

import numpy as np
import torch

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
NUMPY_DTYPES = ("float64", "float32", "float16")

# torch.nn base classes -> (norm, input ranks the class takes; None = any)
MODULE_BASES = (
    ("BatchNorm1d", "batch_norm", (2, 3)), ("BatchNorm2d", "batch_norm", (4,)),
    ("BatchNorm3d", "batch_norm", (5,)), ("SyncBatchNorm", "sync_batch_norm", None), ("_BatchNorm", "batch_norm", None),
    ("InstanceNorm1d", "instance_norm", (3,)), ("InstanceNorm2d", "instance_norm", (4,)),
    ("InstanceNorm3d", "instance_norm", (5,)), ("_InstanceNorm", "instance_norm", None),
    ("LayerNorm", "layer_norm", None), ("GroupNorm", "group_norm", None), ("RMSNorm", "rms_norm", None),
    ("LocalResponseNorm", "local_response_norm", None),
)
# Name fragments (lower case, without '_') -> norm, for classes and functions with no torch base.
NAME_HINTS = (
    ("syncbatchnorm", "sync_batch_norm"), ("syncbn", "sync_batch_norm"), ("batchnorm", "batch_norm"),
    ("instancenorm", "instance_norm"), ("layernorm", "layer_norm"),
    ("groupnorm", "group_norm"), ("rmsnorm", "rms_norm"), ("localresponsenorm", "local_response_norm"),
    ("lrn", "local_response_norm"), ("weightnorm", "weight_norm"),
)
RANKS_BY_SUFFIX = {"1d": (2, 3), "2d": (4,), "3d": (5,)}
ADAPTED_NORMS = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
                 "local_response_norm", "weight_norm", "sync_batch_norm")
# Norms whose module drop-in runs on every rank of a process group, on its shard of the batch
# (`normspec.validate.distributed`); module drop-ins only.
DISTRIBUTED_NORMS = ("sync_batch_norm",)


class CandidateError(Exception):
    """The candidate broke the drop-in contract (wrong type, shape or dtype of a result)."""


class ConstructorError(Exception):
    """The candidate's constructor refused torch.nn's arguments (as mapped): not a drop-in as declared."""


class Unsupported(Exception):
    """This call is outside what a drop-in of this kind can express (not the candidate's fault)."""


# ------------------------------------------------------------------ loading the target

def load_target(target: str, cwd: str | None = None):
    """The object named by `package.module:attr` or `path/to/file.py:attr` (dotted attr allowed)."""
    if ":" not in target:
        raise ValueError(f"TARGET {target!r} must be 'package.module:attr' or 'path/to/file.py:attr'")
    where, attr = target.rsplit(":", 1)
    sys.dont_write_bytecode = True  # never write __pycache__ next to the user's files
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(os.path.join(cwd or os.getcwd(), where))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        name = "normspec_candidate_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
    else:
        if cwd and cwd not in sys.path:
            sys.path.insert(0, cwd)
        module = importlib.import_module(where)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    _LOADED_FROM[id(obj)] = (module, attr)  # a wrapper file's contract applies to what it re-exports
    return obj


_LOADED_FROM: dict = {}


def compile_shapes(compile) -> str | None:
    """The shapes a `compile` setting compiles for: None (eager), "dynamic" (True, the default) or "static"."""
    if not compile or compile in ("0", "eager"):
        return None
    return "static" if compile == "static" else "dynamic"


def compiled(obj, shapes="dynamic"):
    """The candidate under torch.compile (TorchInductor), as its users would run it: with dynamic shapes
    (`dynamic=True`: one kernel for many sizes), or static (`dynamic=False`: a kernel per shape, what a
    model compiled with the default `dynamic=None` runs for its first shapes, and which can round
    differently).

    A module class becomes a subclass whose instances compile themselves (`nn.Module.compile`); a
    function is wrapped by `torch.compile`. Past torch's recompile limit the call raises instead of
    quietly running eager, so a compiled verdict is always the compiled code's."""
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 1024)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4096)
    cfg.fail_on_recompile_limit_hit = True
    dynamic = compile_shapes(shapes) != "static"
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        def __init__(self, *args, **kwargs):
            obj.__init__(self, *args, **kwargs)
            self.compile(dynamic=dynamic)

        def forward(self, *args, **kwargs):
            # A forward inherited from torch.nn (class MyLayerNorm(nn.LayerNorm): pass) is a frame Dynamo
            # skips, so nn.Module.compile alone compiles nothing and the "compiled" run is eager
            # (pytorch#150915); this frame is traced, and the inherited forward is inlined into it.
            return obj.forward(self, *args, **kwargs)

        return type(obj.__name__, (obj,), {"__init__": __init__, "forward": forward, "__module__": obj.__module__,
                                            "__qualname__": obj.__qualname__})
    wrapped = torch.compile(obj, dynamic=dynamic)
    for attr in ("__name__", "__qualname__", "__module__"):
        if hasattr(obj, attr):
            try:
                setattr(wrapped, attr, getattr(obj, attr))
            except (AttributeError, TypeError):
                pass
    return wrapped


def _hint(name: str):
    """(norm, fragment) a name points at, or (None, None)."""
    flat = name.lower().replace("_", "")
    for fragment, norm in NAME_HINTS:
        if fragment in flat:
            return norm, fragment
    return None, None


def suffix_ranks(name: str):
    """The input ranks a class name's 1d/2d/3d suffix says (None: no single one)."""
    found = [k for k in RANKS_BY_SUFFIX if k in name.lower()]
    return RANKS_BY_SUFFIX[found[0]] if len(found) == 1 else None


def classify(obj):
    """(kind, inferred norm or None, input ranks or None, how the norm was inferred) of a candidate."""
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        for klass in obj.__mro__:
            for base, norm, ranks in MODULE_BASES:
                if klass.__name__ == base and klass.__module__.startswith("torch.nn"):
                    return "module", norm, ranks, f"base class torch.nn.{base}"
        norm, fragment = _hint(obj.__name__)
        ranks = suffix_ranks(obj.__name__) if norm in ("batch_norm", "instance_norm") else None
        return "module", norm, ranks, (f"the name {obj.__name__!r} (contains {fragment!r})" if norm else "")
    if callable(obj) and not isinstance(obj, type):
        name = getattr(obj, "__name__", "") or ""
        norm, fragment = _hint(name)
        return "function", norm, None, (f"the name {name!r} (contains {fragment!r})" if norm else "")
    return None, None, None, ""


# ------------------------------------------------------------------ arrays

def torch_array(values: np.ndarray, dtype: str, layout: str = "contiguous") -> torch.Tensor:
    """`values` rounded to `dtype`, laid out as contiguous, channels_last or a strided view."""
    t = torch.from_numpy(np.array(values, dtype=np.float64, copy=True)).to(TORCH_DTYPES[dtype])
    if layout == "contiguous" or t.ndim == 0:
        return t.contiguous()
    if layout == "channels_last":
        if t.ndim < 3:
            return t.contiguous()
        order = (0,) + tuple(range(2, t.ndim)) + (1,)
        inverse = tuple(order.index(i) for i in range(t.ndim))
        return t.permute(order).contiguous().permute(inverse)
    if layout == "strided":
        wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "offset":  # a view one element into its buffer (storage offset 1)
        buffer = torch.zeros(t.numel() + 1, dtype=t.dtype)
        buffer[1:] = t.reshape(-1)
        return buffer[1:].view(t.shape)
    if layout == "expanded":  # stride 0 along axis 0 (values that repeat along it)
        if t.ndim == 0 or not bool((t == t[:1]).all()):
            raise ValueError("the expanded layout needs values that repeat along axis 0")
        return t[:1].clone().expand(t.shape)
    raise ValueError(f"unknown layout {layout!r}")


def numpy_array(values: np.ndarray, dtype: str, layout: str = "contiguous") -> np.ndarray:
    if dtype not in NUMPY_DTYPES:
        raise Unsupported(f"a NumPy spec-signature function cannot take {dtype} (NumPy has no such dtype)")
    a = np.array(values, dtype=np.float64).astype(dtype)
    if layout == "channels_last" and a.ndim >= 3:
        order = (0,) + tuple(range(2, a.ndim)) + (1,)
        return np.ascontiguousarray(a.transpose(order)).transpose(tuple(order.index(i) for i in range(a.ndim)))
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "offset":
        buffer = np.zeros(a.size + 1, dtype=a.dtype)
        buffer[1:] = a.reshape(-1)
        return buffer[1:].reshape(a.shape)
    if layout == "expanded":
        return np.broadcast_to(a[:1], a.shape)
    return np.ascontiguousarray(a).copy()


def to_float64(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy().copy()
    return np.array(value, dtype=np.float64, copy=True)


def dtype_name(value) -> str:
    if isinstance(value, torch.Tensor):
        return DTYPE_NAMES.get(value.dtype, str(value.dtype))
    return str(getattr(value, "dtype", type(value).__name__))


def same_bits(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.detach(), b.detach())) or bool(
            torch.equal(torch.isnan(a.detach()), torch.isnan(b.detach()))
            and torch.equal(torch.nan_to_num(a.detach()), torch.nan_to_num(b.detach())))
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------ per-norm adapters

def _momentum(params, contract=None):
    """PyTorch's new-value momentum for the call's convention (decay style: 1 - momentum), unless the
    contract pins momentum_style: then the candidate takes the momentum in that convention as is."""
    m = params.get("momentum", 0.1)
    if "momentum_style" in ((contract or {}).get("conventions") or {}):
        return m
    if m is not None and params.get("momentum_style", "new") == "decay":
        m = 1.0 - m
    return m


def _affine_flags(a, name="affine"):
    w, b = a.get("weight") is not None, a.get("bias") is not None
    kw = {name: w}
    if w and not b:
        kw["bias"] = False
    if b and not w:
        raise Unsupported("a bias without a weight has no torch.nn constructor form")
    return kw


def unsupported(norm: str, kind: str, params: dict, contract=None) -> str | None:
    """Why a drop-in of `kind` cannot express a call with these parameters, or None. A convention
    the contract pins is the candidate's own, whatever PyTorch does."""
    pinned = (contract or {}).get("conventions") or {}
    ctor = (contract or {}).get("ctor")
    for k, v in (ctor.items() if isinstance(ctor, dict) else ()):  # a value the class fixes: no other is passed
        if not isinstance(v, str) and k in params and params[k] != v:
            return (f"the class fixes {k} at {v!r} (declared in its constructor mapping); "
                    f"this call needs {k}={params[k]!r}")
    if kind in ("module", "functional"):
        if norm in ("batch_norm", "sync_batch_norm") and params.get("running_var_style", "unbiased") != "unbiased" \
                and "running_var_style" not in pinned:
            return "torch.nn BatchNorm feeds the running variance the unbiased estimate only"
        if norm == "local_response_norm" and params.get("convention", "pytorch") != "pytorch" \
                and "convention" not in pinned:
            return f"torch.nn.LocalResponseNorm implements the 'pytorch' convention, not {params.get('convention')!r}"
        if norm == "instance_norm" and params.get("momentum_style", "new") != "new" and "momentum_style" not in pinned:
            return "torch.nn InstanceNorm takes momentum as the new value's weight only"
    return None


def torch_ctor_kwargs(norm: str, shape, a: dict, p: dict, contract=None) -> dict:
    """torch.nn's constructor arguments, by name, for one call of `norm` on an input of `shape`."""
    c = shape[1] if len(shape) > 1 else None
    eps = p.get("eps", 1e-5)
    if norm in ("batch_norm", "sync_batch_norm", "instance_norm"):  # SyncBatchNorm: the default process group
        return {"num_features": c, "eps": eps, "momentum": _momentum(p, contract), **_affine_flags(a),
                "track_running_stats": a.get("running_mean") is not None}
    if norm == "layer_norm":  # a channels-first call (axes) is constructed with the normalized dims' sizes
        normalized = p.get("normalized_shape") or tuple(shape[a] for a in p["axes"])
        return {"normalized_shape": tuple(normalized), "eps": eps,
                **_affine_flags(a, "elementwise_affine")}
    if norm == "group_norm":
        return {"num_groups": p["num_groups"], "num_channels": c, "eps": eps, **_affine_flags(a)}
    if norm == "rms_norm":
        normalized = p.get("normalized_shape") or tuple(shape[a] for a in p["axes"])
        return {"normalized_shape": tuple(normalized), "eps": p.get("eps"),
                "elementwise_affine": a.get("weight") is not None}
    if norm == "local_response_norm":
        return {"size": p["size"], "alpha": p.get("alpha", 1e-4), "beta": p.get("beta", 0.75), "k": p.get("k", 1.0)}
    raise Unsupported(f"{norm} has no torch.nn module drop-in form (use a function, see `normspec validate --help`)")


def find_contract(obj):
    """The contract declared beside a candidate: `@contract` on it, or NORMSPEC_CONTRACT in its module
    (a Contract, or a dict {name: Contract}); None if there is none."""
    declared = getattr(obj, "__normspec_contract__", None)
    if declared is not None:
        return declared
    target_module, attr = _LOADED_FROM.get(id(obj), (None, None))
    for module in (target_module, sys.modules.get(getattr(obj, "__module__", "") or "")):
        declared = getattr(module, "NORMSPEC_CONTRACT", None) if module is not None else None
        if isinstance(declared, dict):
            declared = declared.get(attr) or declared.get(getattr(obj, "__name__", ""))
        if declared is not None:
            return declared
    return None


def mapped_ctor_kwargs(kw: dict, mapping: dict) -> dict:
    """torch.nn's arguments renamed to the candidate's; 'name:int' passes normalized_shape's one size."""
    out = {}
    for k, v in kw.items():
        if k not in mapping or not isinstance(mapping[k], str):  # not mapped, or fixed by the class
            continue
        name, _, conv = mapping[k].partition(":")
        if conv == "int":
            if len(v) != 1:
                raise Unsupported(f"{k}={v} has {len(v)} dims; '{mapping[k]}' passes one size")
            v = int(v[0])
        out[name] = v
    return out


def construct(norm: str, cls, shape, a: dict, p: dict, contract=None):
    """The module for one call: torch.nn's constructor arguments drawn from the call, passed by
    name, renamed by the contract's mapping or handed to its adapter."""
    kw = torch_ctor_kwargs(norm, shape, a, p, contract)
    ctor = (contract or {}).get("ctor")
    if ctor == "callable":
        declared = find_contract(cls)
        if declared is None or not callable(getattr(declared, "ctor", None)):
            raise CandidateError("the contract names a constructor adapter, but none is declared beside the class")
        return declared.ctor(**kw)
    if isinstance(ctor, dict):
        kw = mapped_ctor_kwargs(kw, ctor)
    try:
        return cls(**kw)
    except TypeError as exc:  # a signature mismatch (**kwargs hides it from the signature check)
        raise ConstructorError(f"{getattr(cls, '__name__', cls)}({', '.join(f'{k}={v!r}' for k, v in kw.items())}) "
                               f"raised TypeError: {exc}") from None


def affine_present(norm: str, cls, shape, a: dict, p: dict, contract=None) -> dict:
    """Which affine tensors a module built for this call has (a mapped constructor may not pass the
    torch.nn flags, so what the module holds decides what the validation can load)."""
    module = construct(norm, cls, shape, a, p, contract)
    return {role: isinstance(getattr(module, role, None), torch.Tensor) for role in ("weight", "bias")}


def describe_ctor(cls) -> dict | None:
    """The constructor's signature of a module class: text and parameters (name, keyword-passable,
    required), and whether it takes **kwargs; None where Python cannot tell."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    keyword_ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {"text": f"{getattr(cls, '__name__', cls)}{sig}",
            "params": [(n, q.kind in keyword_ok, q.default is inspect._empty and q.kind in keyword_ok)
                       for n, q in sig.parameters.items()
                       if q.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)],
            "var_kw": any(q.kind is inspect.Parameter.VAR_KEYWORD for q in sig.parameters.values()),
            "var_pos": any(q.kind is inspect.Parameter.VAR_POSITIONAL for q in sig.parameters.values())}


def load_state(norm: str, module, t: dict, p: dict) -> None:
    """Copy the call's parameters and running statistics into the module (cast to its dtype)."""
    with torch.no_grad():
        for role in ("weight", "bias", "running_mean", "running_var"):
            if t.get(role) is None:
                continue
            target = getattr(module, role, None)
            if target is None:
                raise CandidateError(f"the module has no {role} although the call has one "
                                     f"(constructed with {role} enabled)")
            if tuple(target.shape) != tuple(t[role].shape):
                raise CandidateError(f"module.{role} has shape {tuple(target.shape)}, but should have "
                                     f"shape {tuple(t[role].shape)}")
            target.copy_(t[role])
        if t.get("running_mean") is not None and getattr(module, "num_batches_tracked", None) is not None:
            module.num_batches_tracked.fill_(int(p.get("num_batches_tracked", 0)))


def state_outputs(norm: str, module, t: dict, p: dict) -> dict:
    if norm in ("batch_norm", "instance_norm", "sync_batch_norm") and p.get("training", True) \
            and t.get("running_mean") is not None:
        return {"running_mean": module.running_mean, "running_var": module.running_var}
    return {}


def call_functional(norm: str, fn, t: dict, p: dict):
    """(y, state) from a torch.nn.functional-style drop-in, positional arguments as PyTorch's."""
    eps = p.get("eps", 1e-5)
    if norm in ("batch_norm", "instance_norm"):
        rm = None if t.get("running_mean") is None else t["running_mean"].detach().clone()
        rv = None if t.get("running_var") is None else t["running_var"].detach().clone()
        m = _momentum(p)
        if m is None:  # BatchNorm: cumulative average; InstanceNorm modules pass 0.0 (no update)
            m = 1.0 / (int(p.get("num_batches_tracked", 0)) + 1) if norm == "batch_norm" else 0.0
        training = bool(p.get("training", True)) or rm is None
        y = fn(t["x"], rm, rv, t.get("weight"), t.get("bias"), training, m, eps)
        state = {"running_mean": rm, "running_var": rv} if p.get("training", True) and rm is not None else {}
        return y, state
    if norm == "layer_norm":
        return fn(t["x"], list(p["normalized_shape"]), t.get("weight"), t.get("bias"), eps), {}
    if norm == "group_norm":
        return fn(t["x"], p["num_groups"], t.get("weight"), t.get("bias"), eps), {}
    if norm == "rms_norm":
        return fn(t["x"], list(p["normalized_shape"]), t.get("weight"), p.get("eps")), {}
    if norm == "local_response_norm":
        return fn(t["x"], p["size"], p.get("alpha", 1e-4), p.get("beta", 0.75), p.get("k", 1.0)), {}
    if norm == "weight_norm":
        dim = p.get("dim", 0)
        return fn(t["x"], t["weight"], -1 if dim is None else dim), {}
    raise Unsupported(f"no torch.nn.functional form is known for {norm}")


ALIASES = {"input": "x", "v": "x", "g": "weight", "grad_output": "dy", "dw": "dy"}
GRAD_ALIASES = {"v": "x", "g": "weight", "input": "x"}


def bind_by_name(fn, values: dict, params: dict, dtype: str) -> dict:
    """Keyword arguments for a spec-signature function: arrays by role, parameters by name."""
    kwargs = {}
    for name, parameter in inspect.signature(fn).parameters.items():
        role = ALIASES.get(name, name)
        if role in values:
            kwargs[name] = values[role]
        elif name in params:
            kwargs[name] = params[name]
        elif name == "dtype":
            kwargs[name] = dtype
        elif role in ("weight", "bias", "running_mean", "running_var") and parameter.default is inspect._empty:
            kwargs[name] = None
    return kwargs


def spec_outputs(result, outputs: tuple) -> tuple:
    """(y, state) from what a spec-signature function returned: an array or a (named) tuple."""
    if isinstance(result, np.ndarray):
        return result, {}
    if isinstance(result, tuple) and result and isinstance(result[0], np.ndarray):
        fields = getattr(result, "_fields", None)
        state = {}
        for i, name in enumerate(outputs[1:], start=1):
            value = getattr(result, name, None) if fields else (result[i] if i < len(result) else None)
            if value is not None:
                state[name] = value
        return result[0], state
    raise CandidateError(f"returned {type(result).__name__}, but a spec-signature function should return "
                         f"a NumPy array or a tuple starting with one")


def backward_of(fn):
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    return getattr(module, f"{getattr(fn, '__name__', '')}_backward", None) if module else None


# ------------------------------------------------------------------ one call

def _check_result(name, value, like, dtype, kind):
    native = torch.Tensor if kind != "spec" else np.ndarray
    if not isinstance(value, native):
        raise CandidateError(f"{name} is a {type(value).__name__}, but should be a {native.__module__}."
                             f"{native.__name__}")
    if tuple(value.shape) != tuple(like):
        raise CandidateError(f"{name} has shape {tuple(value.shape)}, but should have shape {tuple(like)}")
    if kind == "spec":  # a NumPy reference may compute and return in float64 whatever it is given
        if not np.issubdtype(value.dtype, np.floating):
            raise CandidateError(f"{name} has dtype {value.dtype}, but should be a floating-point array")
    elif dtype_name(value) != dtype:
        raise CandidateError(f"{name} has dtype {dtype_name(value)}, but should have the input's dtype {dtype}")


def _tensors(kind, inputs, requires_grad=()):
    make = numpy_array if kind == "spec" else torch_array
    out = {}
    for role, (values, dtype, layout) in inputs.items():
        a = make(values, dtype, layout)
        if kind != "spec" and role in requires_grad:
            a = a.detach().requires_grad_(True)
        out[role] = a
    return out


# The previous call's outputs as the candidate returned them, and a copy of their values: the next
# call reports whether they changed, or whether its own outputs share memory with them.
_PREVIOUS: dict = {}


def _overlap(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        sa, sb = a.untyped_storage(), b.untyped_storage()
        return (sa.device == sb.device and sa.nbytes() > 0 and sb.nbytes() > 0
                and sa.data_ptr() < sb.data_ptr() + sb.nbytes() and sb.data_ptr() < sa.data_ptr() + sa.nbytes())
    return False


def _against_previous(objects: dict) -> dict:
    """{"changed": {name: the previous call's output now}, "shared": [(new name, previous name)]};
    then these outputs become the previous ones."""
    report = {"changed": {}, "shared": []}
    for name, (obj, copy) in _PREVIOUS.items():
        if not same_bits(obj, copy):
            report["changed"][name] = to_float64(obj)
        for new_name, new in objects.items():
            if _overlap(new, obj):
                report["shared"].append((new_name, name))
    _PREVIOUS.clear()
    for name, obj in objects.items():
        obj = obj.detach() if isinstance(obj, torch.Tensor) else obj
        _PREVIOUS[name] = (obj, obj.clone() if isinstance(obj, torch.Tensor) else np.array(obj, copy=True))
    return report


def execute(candidate, kind: str, norm: str, inputs: dict, params: dict, *, dy=None, wrt=(), outputs=("y",),
            contract=None):
    """Run one call. inputs: {role: (float64 values, dtype, layout)}; dy likewise (or None).

    Returns {"outputs": {name: float64}, "grads": {role: float64}, "mutated": {role: float64 after
    the call}, "dtypes": {name: dtype}, "previous": what became of the previous call's outputs}.
    The caller's tensors (x, weight, bias, dy) are compared
    bitwise before and after: a candidate that writes into them is reported through "mutated".
    """
    why = unsupported(norm, kind, params, contract)
    if why:
        raise Unsupported(why)
    dtype = inputs["x"][1]
    grads_wanted = dy is not None
    t = _tensors(kind, inputs, requires_grad=wrt if grads_wanted and kind == "functional" else ())
    dyt = None
    if grads_wanted:
        dyt = (numpy_array if kind == "spec" else torch_array)(*dy)
    pristine = {r: (a.detach().clone() if isinstance(a, torch.Tensor) else a.copy()) for r, a in t.items()
                if r in ("x", "weight", "bias")}
    dy_pristine = None if dyt is None else (dyt.clone() if isinstance(dyt, torch.Tensor) else dyt.copy())
    result = {"outputs": {}, "grads": {}, "mutated": {}, "dtypes": {}}
    module = None
    if kind == "module":
        x = t["x"].detach().requires_grad_(grads_wanted and "x" in wrt)
        module = construct(norm, candidate, tuple(x.shape), t, params, contract).to(TORCH_DTYPES[dtype])
        load_state(norm, module, t, params)
        module.train(bool(params.get("training", True)))
        if grads_wanted:  # affine tensors kept as buffers (or frozen): differentiate through them all the same
            for role in wrt:
                leaf = getattr(module, role, None) if role in ("weight", "bias") else None
                if isinstance(leaf, torch.Tensor) and leaf.is_leaf and not leaf.requires_grad:
                    leaf.requires_grad_(True)
        with torch.enable_grad() if grads_wanted else torch.no_grad():
            y = module(x)
        _check_result("y", y, x.shape, dtype, kind)
        state = state_outputs(norm, module, t, params)
        if not params.get("training", True):
            for role in ("running_mean", "running_var"):
                if t.get(role) is not None and isinstance(getattr(module, role, None), torch.Tensor) \
                        and not same_bits(getattr(module, role).detach().to(t[role].dtype), t[role]):
                    raise CandidateError(f"module.{role} changed in eval mode (running statistics must stay "
                                         f"fixed outside training)")
        leaves = {"x": x, "weight": getattr(module, "weight", None), "bias": getattr(module, "bias", None)}
        for role in ("weight", "bias"):
            if t.get(role) is not None and not same_bits(getattr(module, role), t[role]):
                result["mutated"][f"module.{role}"] = to_float64(getattr(module, role))
    elif kind == "functional":
        with torch.enable_grad() if grads_wanted else torch.no_grad():
            y, state = call_functional(norm, candidate, t, params)
        _check_result("y", y, t["x"].shape, dtype, kind)
        leaves = t
    else:  # spec
        y, state = spec_outputs(candidate(**bind_by_name(candidate, t, params, dtype)), outputs)
        if "running_mean" in state and not (params.get("training", True) and t.get("running_mean") is not None):
            state = {}  # unchanged running statistics are not an update (as a module's buffers in eval)
        _check_result("y", y, t["x"].shape, dtype, kind)
        leaves = t
    result["outputs"]["y"] = to_float64(y)
    result["dtypes"]["y"] = dtype_name(y)
    for name, value in state.items():
        result["outputs"][name] = to_float64(value)
    result["previous"] = _against_previous({"y": y, **state})
    if grads_wanted:
        roles = [r for r in wrt if leaves.get(r) is not None]
        if kind == "spec":
            backward = backward_of(candidate)
            if backward is None:
                raise Unsupported(f"no {candidate.__name__}_backward beside the spec-signature function")
            grads = backward(**bind_by_name(backward, {**t, "dy": dyt}, params, dtype))
            grads = {GRAD_ALIASES.get(k, k): v for k, v in grads.items()}
        else:
            targets = [leaves[r] for r in roles]
            if not y.requires_grad:
                raise CandidateError("y does not depend differentiably on its inputs (computed without autograd "
                                     "or detached); declare the candidate forward only if that is intended")
            got = torch.autograd.grad(y, targets, grad_outputs=dyt, allow_unused=True)
            grads = {r: (g if g is not None else torch.zeros_like(leaves[r])) for r, g in zip(roles, got)}
        for role in roles:
            if role not in grads:
                raise CandidateError(f"the backward returned no gradient for {role}")
            g = grads[role]
            if tuple(g.shape) != tuple(leaves[role].shape):
                raise CandidateError(f"d{role} has shape {tuple(g.shape)}, "
                                     f"but should have shape {tuple(leaves[role].shape)}")
            result["grads"][role] = to_float64(g)
    for role, before in pristine.items():
        if not same_bits(t[role], before):
            result["mutated"][role] = to_float64(t[role])
    if dy_pristine is not None and not same_bits(dyt, dy_pristine):
        result["mutated"]["dy"] = to_float64(dyt)
    return result


def execute_steps(candidate, norm: str, first: dict, params: dict, steps: list, eval_x, contract=None):
    """Real use of a module: one instance, several training steps, then eval (module kind only).

    first: the call's inputs {role: (values, dtype, layout)}; steps: the x values of each training
    step; eval_x: the x of the final eval call. Returns the y and buffers after every step.
    """
    t = _tensors("module", first)
    dtype = first["x"][1]
    layout = first["x"][2]
    module = construct(norm, candidate, tuple(t["x"].shape), t, params, contract).to(TORCH_DTYPES[dtype])
    load_state(norm, module, t, params)
    records = []
    with torch.no_grad():
        for values in steps:
            module.train(True)
            y = module(torch_array(values, dtype, layout))
            _check_result("y", y, values.shape, dtype, "module")
            state = state_outputs(norm, module, t, {**params, "training": True})
            records.append({"y": to_float64(y), **{k: to_float64(v) for k, v in state.items()}})
        module.train(False)
        y = module(torch_array(eval_x, dtype, layout))
        _check_result("y", y, eval_x.shape, dtype, "module")
        records.append({"y": to_float64(y)})
    return records
