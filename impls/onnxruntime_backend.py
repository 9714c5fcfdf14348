"""`onnxruntime`: each norm as a one-node ONNX model run by ONNX Runtime's CPU provider (forward only).

What exported models run on. Each model is built with `onnx.helper` once per (operator,
attributes, dtype, rank, optional inputs present) with symbolic dimensions, and its
InferenceSession cached, so the property matrix builds a handful of sessions per norm. The ONNX
operators' own conventions decide what is offered (`unsupported` says why the rest is not):

- BatchNormalization (opset 15): inference, and training_mode=1 for batch statistics; its running
  statistics follow ONNX's rule running = momentum*running + (1-momentum)*batch with the *biased*
  batch variance (PyTorch's momentum m is ONNX's 1-m);
- LayerNormalization (17), GroupNormalization (21, per-channel scale and bias),
  InstanceNormalization, RMSNormalization (23) where the installed onnx/onnxruntime have it;
- LRN (odd sizes: its window [c-floor((n-1)/2), c+ceil((n-1)/2)] is PyTorch's mirror image for
  even n), MeanVarianceNormalization ((x-mean)/(std+1e-9), the eps fixed by the operator).

Missing scale/bias inputs that ONNX requires are fed as ones/zeros (exact: y*1+0 == y).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from normspec.impls.base import Backend, BackendUnavailable, Kernel
from normspec.impls.conventions import beyond_pytorch, biased_running_variance_only, no_running_statistics
from normspec.spec.rms_norm import resolve_eps

try:
    import onnx
    import onnxruntime as ort
    from onnx import helper
except ImportError as _exc:  # pragma: no cover - exercised where the extra is absent
    onnx = ort = None
    _IMPORT_ERROR = str(_exc)

INSTALL = "pip install 'normspec[onnx]'"
OPSET = 23
ELEM = {"float64": 11, "float32": 1, "float16": 10}  # TensorProto.DOUBLE, FLOAT, FLOAT16
NP = {"float64": np.float64, "float32": np.float32, "float16": np.float16}
# The rank of the canonical model used to find out whether the runtime has a kernel for a dtype.
PROBE_RANK = {"BatchNormalization": 4, "LayerNormalization": 2, "GroupNormalization": 4, "InstanceNormalization": 4,
              "RMSNormalization": 2, "LRN": 4, "MeanVarianceNormalization": 4}


class Session:
    """An InferenceSession for one node with symbolic input dimensions."""

    def __init__(self, op: str, attrs: tuple, dtype: str, ranks: tuple[tuple[str, int], ...],
                 outputs: tuple[str, ...]):
        elem = ELEM[dtype]
        inputs = [helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(rank)] if rank else None)
                  if name else None for name, rank in ranks]
        outs = [helper.make_tensor_value_info(o, elem, None) for o in outputs]
        node = helper.make_node(op, [name for name, _ in ranks], list(outputs), **dict(attrs))
        graph = helper.make_graph([node], f"normspec_{op}", [i for i in inputs if i is not None], outs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = min(model.ir_version, 10)
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: a failing Run is raised and reported by the harness itself
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.names = [name for name, _ in ranks if name]
        self.outputs = outputs

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(list(self.outputs), {n: np.ascontiguousarray(feeds[n]) for n in self.names})
        return dict(zip(self.outputs, values))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    dtypes = ("float64", "float32", "float16")
    layouts = ("contiguous",)
    differentiates = False
    opt_in = True  # the default `normspec check` keeps its time budget; `--backend NAME` selects it

    def __init__(self):
        if ort is None:
            raise BackendUnavailable(f"onnxruntime/onnx are not installed ({_IMPORT_ERROR}); {INSTALL}")
        self.sessions: dict[tuple, Session] = {}
        self.missing: dict[tuple[str, str], str | None] = {}  # (op, dtype) -> why the runtime lacks it
        self.kernels = {name: Kernel(forward=self._forward(name), unsupported=UNSUPPORTED.get(name, lambda p: None))
                        for name, (op, _) in OPS.items() if _opset_has(op)}

    # -- arrays
    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> np.ndarray:
        return np.ascontiguousarray(np.asarray(array).astype(NP[dtype]))

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.array(value, dtype=np.float64, copy=True)

    def gradients(self, norm, inputs, params, dy, wrt):
        raise NotImplementedError(f"{self.name} is forward-only")

    # -- sessions
    def session(self, op: str, attrs: dict, dtype: str, ranks, outputs) -> Session:
        key = (op, tuple(sorted(attrs.items())), dtype, tuple(ranks), tuple(outputs))
        if key not in self.sessions:
            self.sessions[key] = Session(op, key[1], dtype, tuple(ranks), tuple(outputs))
        return self.sessions[key]

    def runtime_lacks(self, op: str, dtype: str) -> str | None:
        """Why onnxruntime's CPU provider cannot run `op` in `dtype` (probed once), or None."""
        if (op, dtype) not in self.missing:
            rank = PROBE_RANK[op]
            x = np.ones((2,) * rank, NP[dtype])
            try:
                PROBES[op](self, x, dtype)
                self.missing[(op, dtype)] = None
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:160]
                self.missing[(op, dtype)] = f"onnxruntime {ort.__version__} (CPU) cannot run {op} in {dtype}: {first}"
        return self.missing[(op, dtype)]

    def unsupported(self, norm, params, dtype="float64", layout="contiguous"):
        why = beyond_pytorch(norm, params) or super().unsupported(norm, params, dtype, layout)
        return why or self.runtime_lacks(OPS[norm][0], dtype)

    def _forward(self, name: str):
        run = OPS[name][1]
        return lambda inputs, params: run(self, inputs, params)


def _opset_has(op: str) -> bool:
    try:
        return onnx.defs.get_schema(op, OPSET).since_version <= OPSET
    except Exception:
        return False


def _dtype_of(a: np.ndarray) -> str:
    return {np.dtype(v): k for k, v in NP.items()}[a.dtype]


def _or(a, fill: float, n: int, like: np.ndarray) -> np.ndarray:
    return np.full(n, fill, like.dtype) if a is None else a


# ---------------------------------------------------------------- conventions offered

def _lrn_unsupported(params):
    conv, size = params.get("convention", "pytorch"), params["size"]
    if conv not in ("pytorch", "caffe_across"):
        return f"ONNX LRN is the cross-channel alpha/size convention only, not {conv}"
    if size % 2 == 0:
        return "ONNX LRN sums channels [c-floor((n-1)/2), c+ceil((n-1)/2)], PyTorch's window mirrored for even sizes"
    return None


def _mvn_unsupported(params):
    if not params.get("normalize_variance", True):
        return "ONNX MeanVarianceNormalization always divides by the standard deviation"
    if params.get("eps", 1e-9) != 1e-9:
        return "ONNX MeanVarianceNormalization's eps is fixed at 1e-9"
    return None


_batch_norm_unsupported = biased_running_variance_only("ONNX BatchNormalization (training_mode)")
_instance_norm_unsupported = no_running_statistics("ONNX InstanceNormalization")


# ---------------------------------------------------------------- one function per operator

def _batch_norm(b: OnnxRuntimeBackend, inputs, params):
    x = inputs["x"]
    c = x.shape[1]
    rm, rv = inputs.get("running_mean"), inputs.get("running_var")
    training = params.get("training", True)
    batch = training or rm is None or rv is None
    momentum = params.get("momentum", 0.1)
    if momentum is None:
        momentum = 1.0 / (params.get("num_batches_tracked", 0) + 1)
    elif params.get("momentum_style", "new") == "decay":
        momentum = 1.0 - momentum
    attrs = {"epsilon": float(params.get("eps", 1e-5))}
    outputs = ("Y",)
    if batch:
        attrs.update(training_mode=1, momentum=float(1.0 - momentum))
        outputs = ("Y", "running_mean", "running_var")
    feeds = {"X": x, "scale": _or(inputs.get("weight"), 1, c, x), "B": _or(inputs.get("bias"), 0, c, x),
             "input_mean": _or(rm, 0, c, x), "input_var": _or(rv, 1, c, x)}
    ranks = (("X", x.ndim), ("scale", 1), ("B", 1), ("input_mean", 1), ("input_var", 1))
    out = b.session("BatchNormalization", attrs, _dtype_of(x), ranks, outputs)(feeds)
    result = {"y": out["Y"]}
    if training and rm is not None and rv is not None:
        result["running_mean"], result["running_var"] = out["running_mean"], out["running_var"]
    return result


def _layer_norm(b, inputs, params):
    x = inputs["x"]
    shape = tuple(params["normalized_shape"])
    w, bias = inputs.get("weight"), inputs.get("bias")
    feeds = {"X": x, "Scale": np.ones(shape, x.dtype) if w is None else w}
    ranks = [("X", x.ndim), ("Scale", len(shape))]
    if bias is not None:
        feeds["B"] = bias
        ranks.append(("B", len(shape)))
    attrs = {"axis": x.ndim - len(shape), "epsilon": float(params.get("eps", 1e-5))}
    return {"y": b.session("LayerNormalization", attrs, _dtype_of(x), ranks, ("Y",))(feeds)["Y"]}


def _group_norm(b, inputs, params):
    x = inputs["x"]
    c = x.shape[1]
    feeds = {"X": x, "scale": _or(inputs.get("weight"), 1, c, x), "bias": _or(inputs.get("bias"), 0, c, x)}
    attrs = {"num_groups": int(params["num_groups"]), "epsilon": float(params.get("eps", 1e-5))}
    ranks = (("X", x.ndim), ("scale", 1), ("bias", 1))
    return {"y": b.session("GroupNormalization", attrs, _dtype_of(x), ranks, ("Y",))(feeds)["Y"]}


def _instance_norm(b, inputs, params):
    x = inputs["x"]
    c = x.shape[1]
    rm, rv = inputs.get("running_mean"), inputs.get("running_var")
    if rm is not None and rv is not None:
        raise NotImplementedError("ONNX InstanceNormalization keeps no running statistics")
    feeds = {"input": x, "scale": _or(inputs.get("weight"), 1, c, x), "B": _or(inputs.get("bias"), 0, c, x)}
    ranks = (("input", x.ndim), ("scale", 1), ("B", 1))
    attrs = {"epsilon": float(params.get("eps", 1e-5))}
    return {"y": b.session("InstanceNormalization", attrs, _dtype_of(x), ranks, ("Y",))(feeds)["Y"]}


def _rms_norm(b, inputs, params):
    x = inputs["x"]
    shape = tuple(params["normalized_shape"])
    eps = resolve_eps(params.get("eps"), _dtype_of(x))  # PyTorch's rule: float32's epsilon for float16 inputs too
    w = inputs.get("weight")
    feeds = {"X": x, "scale": np.ones(shape, x.dtype) if w is None else w}
    attrs = {"axis": x.ndim - len(shape), "epsilon": float(eps)}
    ranks = (("X", x.ndim), ("scale", len(shape)))
    return {"y": b.session("RMSNormalization", attrs, _dtype_of(x), ranks, ("Y",))(feeds)["Y"]}


def _lrn(b, inputs, params):
    """LRN sums over channels only, so (N, C, *S) runs as (N, C, prod(S), 1): ORT's kernel is 4-D only."""
    x = inputs["x"]
    if x.ndim < 3:
        raise ValueError(f"local_response_norm needs a 3-D or higher input, got {x.ndim}-D")
    attrs = {"size": int(params["size"]), "alpha": float(params.get("alpha", 1e-4)),
             "beta": float(params.get("beta", 0.75)), "bias": float(params.get("k", 1.0))}
    x4 = x.reshape(x.shape[0], x.shape[1], -1, 1)
    y = b.session("LRN", attrs, _dtype_of(x), (("X", 4),), ("Y",))({"X": x4})["Y"]
    return {"y": y.reshape(x.shape)}


def _mvn(b, inputs, params):
    x = inputs["x"]
    first = 1 if params.get("across_channels", False) else 2
    if x.ndim <= first:
        raise ValueError(f"mvn over dims {first}.. needs an input with more dims than {x.shape}")
    attrs = {"axes": list(range(first, x.ndim))}
    attrs_key = {"axes": tuple(attrs["axes"])}
    s = b.session("MeanVarianceNormalization", attrs_key, _dtype_of(x), (("X", x.ndim),), ("Y",))
    return {"y": s({"X": x})["Y"]}


OPS = {
    "batch_norm": ("BatchNormalization", _batch_norm),
    "layer_norm": ("LayerNormalization", _layer_norm),
    "group_norm": ("GroupNormalization", _group_norm),
    "instance_norm": ("InstanceNormalization", _instance_norm),
    "rms_norm": ("RMSNormalization", _rms_norm),
    "local_response_norm": ("LRN", _lrn),
    "mvn": ("MeanVarianceNormalization", _mvn),
}

UNSUPPORTED = {"batch_norm": _batch_norm_unsupported, "instance_norm": _instance_norm_unsupported,
               "local_response_norm": _lrn_unsupported, "mvn": _mvn_unsupported}

PROBES = {
    "BatchNormalization": lambda b, x, d: _batch_norm(b, {"x": x}, {"training": False}),
    "LayerNormalization": lambda b, x, d: _layer_norm(b, {"x": x}, {"normalized_shape": (2,)}),
    "GroupNormalization": lambda b, x, d: _group_norm(b, {"x": x}, {"num_groups": 1}),
    "InstanceNormalization": lambda b, x, d: _instance_norm(b, {"x": x}, {}),
    "RMSNormalization": lambda b, x, d: _rms_norm(b, {"x": x}, {"normalized_shape": (2,)}),
    "LRN": lambda b, x, d: _lrn(b, {"x": x}, {"size": 1}),
    "MeanVarianceNormalization": lambda b, x, d: _mvn(b, {"x": x}, {}),
}

OnnxRuntimeBackend.native_norms = tuple(OPS)  # declared once OPS exists (the catalogue reads it)
