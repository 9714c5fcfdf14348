"""Local response normalizations: y = x * (offset + scale * W(x^2))^(-beta), W a window reduction.

- Local Response Normalization (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification
  with Deep Convolutional Neural Networks", sec. 3.3) across channels, in five conventions:
    "pytorch"      torch.nn.LocalResponseNorm: (k + alpha/n * sum)^-beta, window
                   [c - n//2, c + (n-1)//2] (even n leans backwards), 3-D or higher input;
    "onnx"         ONNX LRN: alpha/n, window [c - floor((n-1)/2), c + ceil((n-1)/2)]
                   (even n leans forwards, the mirror image of PyTorch's);
    "caffe_across" Caffe ACROSS_CHANNELS: alpha/n, centred window, odd n only (LayerSetUp checks it);
    "tensorflow"   tf.nn.local_response_normalization: alpha *not* divided by n, window
                   [c - r, c + r] with depth_radius r = (n - 1)/2, so n = 2r + 1 must be odd;
    "caffe_within" Caffe WITHIN_CHANNEL: a spatial n x ... x n window per channel,
                   (1 + alpha/n^d * sum)^-beta (its AVE pooling with pad (n-1)/2 always divides by
                   n^d), k ignored, odd n only. Caffe is 2-D; the spec takes any number of spatial dims.
- MatConvNet's cross-channel normalization (vl_nnnormalize, PARAM = [N KAPPA ALPHA BETA]):
  (kappa + alpha * sum_{G(c)} x^2)^-beta, G(c) = [c - floor((N-1)/2), c + ceil((N-1)/2)]
  (normalize_cpu.cpp: m1 = (N-1)/2, m2 = N - m1 - 1); alpha is not divided by N.
- MatConvNet's spatial normalization (vl_nnspnorm, PARAM = [PH PW ALPHA BETA]):
  (1 + alpha * N2)^-beta with N2 the *mean* of x^2 over the PH x PW window (vl_nnpool 'avg' with
  pad floor((P-1)/2) before and the rest after; its average divides by the number of in-image
  positions, pooling_cpu.cpp). The documentation says "sum of squares": `reduction="sum"`.

Backward, with d = offset + scale * W(x^2):
    dx = dy * d^-beta - 2 * scale * beta * x * W^T(dy * x * d^(-beta-1)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normspec.spec.moments import as_float64
from normspec.spec.windows import window_extent, window_sum

LRN_CONVENTIONS = ("pytorch", "caffe_across", "caffe_within", "tensorflow", "onnx")
SPATIAL_REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class ResponseWindow:
    """How d = offset + scale * W(x^2) is formed: W sums (or averages over the in-range
    positions, when `average`) x^2 over windows [i - before, i + after] along each axis."""

    windows: tuple[tuple[int, int, int], ...]  # (axis, before, after)
    scale: float
    offset: float
    average: bool = False

    def reduce(self, a: np.ndarray) -> np.ndarray:
        for axis, before, after in self.windows:
            a = window_sum(a, axis, before, after)
        return a

    def reduce_transpose(self, g: np.ndarray) -> np.ndarray:
        for axis, before, after in reversed(self.windows):
            g = window_sum(g, axis, after, before)
        return g

    def count(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.reduce(np.ones(shape)) if self.average else np.ones((1,) * len(shape))

    def denominator(self, x: np.ndarray) -> np.ndarray:
        return self.offset + self.scale * self.reduce(x * x) / self.count(x.shape)


def _odd(size: int, convention: str, what: str = "size") -> None:
    if size % 2 != 1:
        raise ValueError(f"the {convention} convention supports odd {what} only, got {size}")


def lrn_window(shape: tuple[int, ...], size: int, alpha: float, k: float, convention: str) -> ResponseWindow:
    """The window, scale and offset of `local_response_norm` for an input of `shape`."""
    if convention not in LRN_CONVENTIONS:
        raise ValueError(f"convention must be one of {LRN_CONVENTIONS}, got {convention!r}")
    if len(shape) < 3:
        raise ValueError(f"local_response_norm expects input (N, C, *S) with at least one spatial dim "
                         f"(3-D or higher, as torch.nn.LocalResponseNorm), got shape {tuple(shape)}")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    if convention == "caffe_within":
        _odd(size, convention, "local_size")
        before, after = window_extent(size, "trailing")
        spatial = tuple(range(2, len(shape)))
        return ResponseWindow(tuple((a, before, after) for a in spatial), alpha / size ** len(spatial), 1.0)
    if convention in ("caffe_across",):
        _odd(size, convention, "local_size")
    if convention == "tensorflow":
        _odd(size, convention, "size = 2 * depth_radius + 1")
    placement = "leading" if convention == "pytorch" else "trailing"
    before, after = window_extent(size, placement)
    scale = alpha if convention == "tensorflow" else alpha / size
    return ResponseWindow(((1, before, after),), scale, k)


def response_forward(x, window: ResponseWindow, beta: float) -> np.ndarray:
    x = as_float64(x)
    with np.errstate(divide="ignore"):  # a zero denominator (kappa = 0, x = 0) gives inf, as the formula says
        return x * window.denominator(x) ** (-beta)


def response_backward(dy, x, window: ResponseWindow, beta: float) -> np.ndarray:
    """dx = dy d^-beta - 2 scale beta x W^T(dy x d^(-beta-1)) (averaging folded into W)."""
    x, dy = as_float64(x), as_float64(dy)
    d = window.denominator(x)
    inner = dy * x * d ** (-beta - 1.0) / window.count(x.shape)
    return dy * d ** (-beta) - 2.0 * window.scale * beta * x * window.reduce_transpose(inner)


def response_gradient_magnitude(dy, x, window: ResponseWindow, beta: float) -> np.ndarray:
    """|dy| d^-beta + 2 |scale beta| |x| W^T(|dy x| d^(-beta-1)): the size of the terms that
    `response_backward` adds, which is what rounding errors are relative to."""
    x, dy = as_float64(x), as_float64(dy)
    d = window.denominator(x)
    inner = np.abs(dy * x) * d ** (-beta - 1.0) / window.count(x.shape)
    return np.abs(dy) * d ** (-beta) + 2.0 * abs(window.scale * beta) * np.abs(x) * window.reduce_transpose(inner)


def local_response_norm(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                        convention: str = "pytorch") -> np.ndarray:
    """Local Response Normalization (Krizhevsky et al. 2012, sec. 3.3) in the given convention
    (module docstring); the defaults are torch.nn.LocalResponseNorm's."""
    x = as_float64(x)
    return response_forward(x, lrn_window(x.shape, size, alpha, k, convention), beta)


def local_response_norm_backward(dy, x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                                 convention: str = "pytorch") -> dict[str, np.ndarray]:
    x = as_float64(x)
    return {"x": response_backward(dy, x, lrn_window(x.shape, size, alpha, k, convention), beta)}


def matconvnet_window(shape: tuple[int, ...], size: int, kappa: float, alpha: float) -> ResponseWindow:
    if len(shape) < 2:
        raise ValueError(f"matconvnet_cross_channel expects input (N, C, *S), got shape {tuple(shape)}")
    before, after = window_extent(size, "trailing")
    return ResponseWindow(((1, before, after),), alpha, kappa)


def matconvnet_cross_channel(x, size: int = 5, kappa: float = 1.0, alpha: float = 1e-4,
                             beta: float = 0.75) -> np.ndarray:
    """vl_nnnormalize (MatConvNet manual, "Normalization"): x (kappa + alpha sum_{G(c)} x^2)^-beta."""
    x = as_float64(x)
    return response_forward(x, matconvnet_window(x.shape, size, kappa, alpha), beta)


def matconvnet_cross_channel_backward(dy, x, size: int = 5, kappa: float = 1.0, alpha: float = 1e-4,
                                      beta: float = 0.75) -> dict[str, np.ndarray]:
    x = as_float64(x)
    return {"x": response_backward(dy, x, matconvnet_window(x.shape, size, kappa, alpha), beta)}


def spatial_window(shape: tuple[int, ...], size, alpha: float, reduction: str) -> ResponseWindow:
    if reduction not in SPATIAL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {SPATIAL_REDUCTIONS}, got {reduction!r}")
    if len(shape) < 3:
        raise ValueError(f"matconvnet_spatial expects input (N, C, *S) with spatial dims, got shape {tuple(shape)}")
    nsp = len(shape) - 2
    sizes = (size,) * nsp if np.isscalar(size) else tuple(size)
    if len(sizes) != nsp:
        raise ValueError(f"size {size!r} must give one window size per spatial dim ({nsp}) of shape {tuple(shape)}")
    windows = tuple((2 + i, *window_extent(s, "trailing")) for i, s in enumerate(sizes))
    return ResponseWindow(windows, alpha, 1.0, average=reduction == "mean")


def matconvnet_spatial(x, size=(2, 2), alpha: float = 10.0, beta: float = 2.0, *,
                       reduction: str = "mean") -> np.ndarray:
    """vl_nnspnorm: x (1 + alpha N2)^-beta, N2 the mean (code) or sum (docs) of x^2 over the
    spatial window; the defaults are dagnn.SpatialNorm's param = [2 2 10 2]."""
    x = as_float64(x)
    return response_forward(x, spatial_window(x.shape, size, alpha, reduction), beta)


def matconvnet_spatial_backward(dy, x, size=(2, 2), alpha: float = 10.0, beta: float = 2.0, *,
                                reduction: str = "mean") -> dict[str, np.ndarray]:
    x = as_float64(x)
    return {"x": response_backward(dy, x, spatial_window(x.shape, size, alpha, reduction), beta)}
