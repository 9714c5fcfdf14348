"""Which framework conventions of the spec a backend that implements only PyTorch's cannot run.

The spec draws conventions beyond PyTorch's (docs/conventions.md); an engine that offers only
PyTorch's semantics declares such calls unsupported with this reason instead of misreading them.
"""
from __future__ import annotations


def beyond_pytorch(norm: str, params) -> str | None:
    """Why a call of `norm` with `params` uses a convention PyTorch's layer does not have, or None."""
    if norm in ("layer_norm", "mvn", "rms_norm") and params.get("axes") is not None:
        return f"{norm} over arbitrary axes (Keras / ONNX axes) is not offered by this engine's adapter"
    if norm == "layer_norm" and params.get("saved_statistics"):
        return "layer_norm's saved statistics (mean, rstd) are not returned by this engine's adapter"
    if norm == "rms_norm" and params.get("weight_offset", 0.0) != 0.0:
        return "rms_norm with Gemma's weight offset (1 + w) is not offered by this engine's adapter"
    if norm == "batch_norm" and params.get("moving_average", "ema") != "ema":
        return "batch_norm's debiased moving average is not offered by this engine's adapter"
    return None


def biased_running_variance_only(engine: str):
    """The `unsupported` of a batch norm whose training update feeds the running variance the
    biased batch variance (flax, ONNX BatchNormalization): PyTorch's unbiased convention is refused."""
    def unsupported(params):
        tracked_training = params.get("training", True) and "momentum" in params
        if tracked_training and params.get("running_var_style", "unbiased") != "biased":
            return f"{engine} updates the running variance with the biased batch variance"
        return None
    return unsupported


def no_running_statistics(engine: str):
    """The `unsupported` of an instance norm that keeps no running statistics."""
    def unsupported(params):
        if "momentum" in params:  # running statistics are tracked
            return f"{engine} keeps no running statistics"
        return None
    return unsupported
