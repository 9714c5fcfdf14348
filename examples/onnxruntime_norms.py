"""ONNX Runtime's LayerNormalization and BatchNormalization (inference) under `normspec validate`.

    normspec validate examples/onnxruntime_norms.py:OrtLayerNorm
    normspec validate examples/onnxruntime_norms.py:OrtBatchNorm2d

(or `python examples/onnxruntime_norms.py`). Each class is a torch.nn.Module whose forward builds
a one-node ONNX graph (opset 17) and runs it with onnxruntime on the CPU: forward only, float32
(and float16 where ORT has the kernel), and ONNX's BatchNormalization in its inference form
(eval mode only). The contract beside each says so.
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from normspec.validate import Contract

_ELEM = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16, torch.float64: TensorProto.DOUBLE}


def _run(node, inputs: dict, out_dtype, opset=17):
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, _ELEM[v.dtype], list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", _ELEM[out_dtype], None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(["y"], {k: v.detach().cpu().numpy() for k, v in inputs.items()})[0]
    return torch.from_numpy(np.ascontiguousarray(out))


class OrtLayerNorm(torch.nn.Module):
    """ONNX LayerNormalization (axis=-1, epsilon) run by onnxruntime."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        n = normalized_shape if isinstance(normalized_shape, int) else normalized_shape[-1]
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.bias = torch.nn.Parameter(torch.zeros(n))

    def forward(self, x):
        node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=float(self.eps))
        return _run(node, {"x": x, "w": self.weight.to(x.dtype), "b": self.bias.to(x.dtype)}, x.dtype)


class OrtBatchNorm2d(torch.nn.Module):
    """ONNX BatchNormalization in inference mode (running statistics) run by onnxruntime."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        node = helper.make_node("BatchNormalization", ["x", "w", "b", "m", "v"], ["y"], epsilon=float(self.eps))
        def t(a):
            return a.to(x.dtype)

        return _run(node, {"x": x, "w": t(self.weight), "b": t(self.bias), "m": t(self.running_mean),
                           "v": t(self.running_var)}, x.dtype, opset=15)


NORMSPEC_CONTRACT = {
    "OrtLayerNorm": Contract(axes="last", affine=True, forward_only=True, dtypes=("float32", "float16"),
                             source="examples/onnxruntime_norms.py"),
    "OrtBatchNorm2d": Contract(modes=("eval",), affine=True, forward_only=True, dtypes=("float32", "float16"),
                               source="examples/onnxruntime_norms.py"),
}

if __name__ == "__main__":
    from normspec.cli import main

    here = os.path.abspath(__file__)
    sys.exit(max(main(["validate", f"{here}:{name}", "--quiet"]) for name in NORMSPEC_CONTRACT))
