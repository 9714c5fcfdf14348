"""Normalization layers written the way popular libraries write them (other constructors, other
conventions, other compute precisions), correct and with real deviations, for
tests/test_validate_contract.py. Written from the papers and the libraries' documented behaviour."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from normspec.validate import Contract


def _acc(x):
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class TimmStyleRmsNorm(nn.Module):
    """RMSNorm over the last dim, timm's constructor (channels, eps, affine). Correct."""

    def __init__(self, channels, eps=1e-6, affine=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None

    def forward(self, x):
        xf = x.to(_acc(x))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        return y.to(x.dtype)


class DeclaredRmsNorm(TimmStyleRmsNorm):
    """The same, with its contract declared beside it (NORMSPEC_CONTRACT below)."""


class HalfIntermediatesRmsNorm(TimmStyleRmsNorm):
    """Computes in the input's dtype: in float16 the mean of squares is a float16 sum (a real deviation)."""

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y


class Float32RmsNorm(TimmStyleRmsNorm):
    """Computes in float32 whatever the input (float64 in, float32 arithmetic, float64 out)."""

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


class GemmaStyleRmsNorm(TimmStyleRmsNorm):
    """Gemma's RMSNorm: stores w (initialized to 0) and scales by 1 + w, all in float32 whatever the input
    (the convention weight_offset=1 with compute=float32). Correct under that contract."""

    def __init__(self, channels, eps=1e-6, affine=True):
        super().__init__(channels, eps, affine)
        if self.weight is not None:
            nn.init.zeros_(self.weight)

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * (1.0 + self.weight.float())
        return y.to(x.dtype)


class GemmaWeightsInPlainRmsNorm(GemmaStyleRmsNorm):
    """Gemma's stored w used as the gain itself, the +1 forgotten: what loading a Gemma checkpoint into a
    w-scaling RMSNorm gives unless the converter adds 1 to the weights (a real deviation)."""

    forward = Float32RmsNorm.forward  # scales by w


class T5StyleLayerNorm(nn.Module):
    """Named a LayerNorm, computes RMSNorm (as transformers' T5LayerNorm does): no mean subtracted."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(var + self.variance_epsilon))).to(x.dtype)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with frozen statistics and affine tensors as buffers (torchvision's form), eval only."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), value))

    def forward(self, x):
        a = x.to(_acc(x))
        scale = self.weight.to(a.dtype) * torch.rsqrt(self.running_var.to(a.dtype) + self.eps)
        shift = self.bias.to(a.dtype) - self.running_mean.to(a.dtype) * scale
        return (a * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)).to(x.dtype)


class FrozenBatchNorm2dUpdatesInEval(FrozenBatchNorm2d):
    """Declared eval only, but moves its running mean in eval (a contradiction the run must report)."""

    def forward(self, x):
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * x.mean(dim=(0, 2, 3)).to(self.running_mean.dtype))
        return super().forward(x)


class KerasStyleBatchNorm2d(nn.BatchNorm2d):
    """Keras' conventions: momentum is the decay of the old value, the running variance is fed the
    biased batch variance. Correct for those conventions; wrong for PyTorch's."""

    def forward(self, x):
        dims = (0, 2, 3)
        a = x.to(_acc(x))
        shape = (1, -1, 1, 1)
        if self.training or not self.track_running_stats:
            mean = a.mean(dims)
            var = (a - mean.reshape(shape)).pow(2).mean(dims)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    m = self.momentum if self.momentum is not None else 1.0 - 1.0 / float(self.num_batches_tracked)
                    self.running_mean.copy_(m * self.running_mean + (1 - m) * mean.to(self.running_mean.dtype))
                    self.running_var.copy_(m * self.running_var + (1 - m) * var.to(self.running_var.dtype))
        else:
            mean, var = self.running_mean.to(a.dtype), self.running_var.to(a.dtype)
        y = (a - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.to(a.dtype).reshape(shape) + self.bias.to(a.dtype).reshape(shape)
        return y.to(x.dtype)


NORMSPEC_CONTRACT = {
    "DeclaredRmsNorm": Contract(ctor={"normalized_shape": "channels:int", "eps": "eps", "elementwise_affine": "affine"},
                                axes="last", eps_none=False, source="tests/candidates/library.py"),
}


class LayerNormNoBias(nn.Module):
    """LayerNorm with a weight and no bias at all (OLMo-style), constructor (dim, eps). Correct."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        a = x.to(_acc(x))
        mean = a.mean(-1, keepdim=True)
        c = a - mean
        y = c * torch.rsqrt((c * c).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(a.dtype)).to(x.dtype)


class ChannelsLayerNorm(nn.LayerNorm):
    """timm-style constructor (num_channels, eps, affine) over torch.nn.LayerNorm. Correct."""

    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)


class ChannelsLayerNormBiasTwice(ChannelsLayerNorm):
    """Adds the bias twice (once inside layer_norm, once after): invisible wherever the bias is 0 or absent."""

    def forward(self, x):
        y = super().forward(x)
        return y + self.bias if self.bias is not None else y


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of NCHW, timm's way: permute to channels-last, layer_norm, permute back. Correct
    under axes=channels (not a torch.nn.LayerNorm drop-in: it takes 4-D inputs only)."""

    def forward(self, x):
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's channels_first LayerNorm (any rank from 2), in float32 for half inputs. Correct under
    axes=channels with the mapping normalized_shape -> normalized_shape:int."""

    def __init__(self, normalized_shape, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps

    def _stats(self, a):
        mean = a.mean(1, keepdim=True)
        return mean, (a - mean).pow(2).mean(1, keepdim=True)

    def forward(self, x):
        a = x.to(_acc(x))
        mean, var = self._stats(a)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (a - mean) / torch.sqrt(var + self.eps)
        return (self.weight.to(a.dtype).view(shape) * y + self.bias.to(a.dtype).view(shape)).to(x.dtype)


class ChannelsFirstLayerNormUnbiased(ChannelsFirstLayerNorm):
    """The same with the unbiased variance (x.var(1) defaults to n - 1): wrong."""

    def _stats(self, a):
        return a.mean(1, keepdim=True), a.var(1, keepdim=True)


class GroupNorm1(nn.GroupNorm):
    """timm's GroupNorm1: num_groups fixed at 1, the rest through **kwargs. Correct with num_groups fixed at 1."""

    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)


class GroupNorm1PerChannel(GroupNorm1):
    """Statistics per channel (as many groups as channels) instead of over the whole (C, *S): wrong."""

    def forward(self, x):
        return F.group_norm(x, self.num_channels, self.weight, self.bias, self.eps)


class LayerNormEps6(nn.Module):
    """eps hard-coded at 1e-6, only the size passed (as many model files do). Correct with eps fixed at 1e-6."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, 1e-6)


class RmsNorm2d(TimmStyleRmsNorm):
    """RMSNorm over the channels of NCHW (timm's constructor (channels, eps, affine)), float32 statistics for
    half inputs. Correct under axes=channels."""

    def _mean_square(self, x):
        a = x.to(_acc(x))
        return a, a.pow(2).mean(1, keepdim=True)

    def forward(self, x):
        a, ms = self._mean_square(x)
        y = a * torch.rsqrt(ms + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(a.dtype).view(1, -1, *([1] * (x.dim() - 2)))
        return y.to(x.dtype)


class RmsNorm2dHalfSquares(RmsNorm2d):
    """Squares and averages in the input dtype, as timm 1.0's rms_norm2d does: in float16, x^2 overflows for
    |x| > 256 and the channel's output becomes 0 (the float16 overflow LeetCUDA#335 and tiny-llm#18 fixed in their
    RMSNorms by computing in float32)."""

    def _mean_square(self, x):
        return x, x.pow(2).mean(1, keepdim=True)


class ConvNextStyleLayerNorm(ChannelsFirstLayerNorm):
    """transformers' ConvNextLayerNorm(data_format="channels_first") shape of thing: 4-D input only (it permutes to
    NHWC), a name that does not say so. Correct under axes=channels with ranks=(4,)."""

    def forward(self, x):
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class Float32LayerNorm(nn.LayerNorm):
    """timm's LayerNormFp32 way: PyTorch's layer_norm on float32 copies whatever the input dtype. Correct under
    compute=float32 (it shares PyTorch's float32 kernel and its deviations)."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class Float32OnePassLayerNorm(Float32LayerNorm):
    """The same with the one-pass variance E[x^2] - E[x]^2 in float32: wrong at |mean|/std of 1e3 already."""

    def forward(self, x):
        a, dims = x.float(), tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        mean = a.mean(dims, keepdim=True)
        var = ((a * a).mean(dims, keepdim=True) - mean * mean).clamp_min(0)
        y = (a - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.float() + (self.bias.float() if self.bias is not None else 0)
        return y.to(x.dtype)
