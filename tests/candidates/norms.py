"""Hand-written torch.nn drop-ins for `normspec validate`: correct controls and seeded bugs.

Each `Hand*` class is a correct implementation written from the papers (statistics in float32 or
float64, the shifted two-pass variance, PyTorch's conventions for running statistics). Each bug
class overrides one hook with a mistake modeled on a real report (see the catalogue's list of
realistic bugs): `CATALOGUE` maps the bug's name to (class name, norm, what it gets wrong).
Not a test module: tests/test_validate_catalogue.py hands these to `normspec validate`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def acc(x):
    """The accumulation dtype: float32 for half types, else the input's."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def shifted_moments(x, dims):
    """Mean and biased variance over dims by the shifted two-pass algorithm (exact 0 for a constant set).

    The shift K (each set's first value) is detached: the normalized output does not depend on K, so
    its exact derivative is 0, and differentiating through it would hand element K the whole rounding
    error of the n-term sum -sum_i ds_i (analytically 0), ~0.25 n u |dx| under autograd, where every
    other element's error is a mean's (see tests/test_tolerance_shift.py)."""
    index = [slice(None)] * x.ndim
    for d in dims:
        index[d] = slice(0, 1)
    first = x[tuple(index)].detach()
    s = x - first
    m = s.mean(dim=dims, keepdim=True)
    c = s - m
    return first + m, (c * c).mean(dim=dims, keepdim=True), c


# ---------------------------------------------------------------- BatchNorm

class HandBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d from Ioffe & Szegedy 2015, Alg. 1-2, with PyTorch's running-statistics rules."""

    def stats(self, xa, dims):
        mean, var, centred = shifted_moments(xa, dims)
        return mean, var, centred

    def running_update(self, mean, var, n):
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / (n - 1)
        self.running_mean.copy_((1 - m) * self.running_mean + m * mean.to(self.running_mean.dtype))
        self.running_var.copy_((1 - m) * self.running_var + m * unbiased.to(self.running_var.dtype))

    def normalize(self, centred, var):
        return centred / torch.sqrt(var + self.eps)

    def use_batch_stats(self):
        return self.training or not self.track_running_stats

    def forward(self, x):
        if x.numel() == 0:  # an empty batch: empty output, no statistics, the call still counted
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
            return x.clone()
        dims = (0, 2, 3)
        xa = x.to(acc(x))
        shape = (1, -1, 1, 1)
        if self.use_batch_stats():
            n = x.numel() // x.shape[1]
            if self.training and n <= 1:
                raise ValueError("Expected more than 1 value per channel when training, "
                                 f"got input size {tuple(x.shape)}")
            mean, var, centred = self.stats(xa, dims)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    self.running_update(mean.reshape(-1).detach(), var.reshape(-1).detach(), n)
            y = self.normalize(centred, var)
        else:
            y = (xa - self.running_mean.to(xa.dtype).reshape(shape)) / torch.sqrt(
                self.running_var.to(xa.dtype).reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.to(xa.dtype).reshape(shape) + self.bias.to(xa.dtype).reshape(shape)
        return y.to(x.dtype)


class BNBiasedRunningVar(HandBatchNorm2d):
    """running_var fed the biased batch variance (PyTorch uses the unbiased one)."""

    def running_update(self, mean, var, n):
        super().running_update(mean, var * (n - 1) / n, n)


class BNMomentumFlipped(HandBatchNorm2d):
    """momentum used as the old value's decay (Keras) in a PyTorch drop-in."""

    def running_update(self, mean, var, n):
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / (n - 1)
        self.running_mean.copy_(m * self.running_mean + (1 - m) * mean.to(self.running_mean.dtype))
        self.running_var.copy_(m * self.running_var + (1 - m) * unbiased.to(self.running_var.dtype))


class BNMomentumNoneIgnored(HandBatchNorm2d):
    """momentum=None (cumulative average) silently treated as the default 0.1."""

    def running_update(self, mean, var, n):
        saved = self.momentum
        self.momentum = 0.1 if saved is None else saved
        try:
            super().running_update(mean, var, n)
        finally:
            self.momentum = saved


class BNEpsOutsideSqrt(HandBatchNorm2d):
    """(x - mean) / (sqrt(var) + eps): eps added outside the square root."""

    def normalize(self, centred, var):
        return centred / (torch.sqrt(var) + self.eps)


class BNOnePassVariance(HandBatchNorm2d):
    """var = E[x^2] - E[x]^2 (catastrophic cancellation when |mean| >> std)."""

    def stats(self, xa, dims):
        mean = xa.mean(dim=dims, keepdim=True)
        var = (xa * xa).mean(dim=dims, keepdim=True) - mean * mean
        return mean, var, xa - mean


class BNUnbiasedNormalization(HandBatchNorm2d):
    """normalizes by the unbiased variance (torch.var's default) instead of the biased one."""

    def stats(self, xa, dims):
        mean, var, centred = super().stats(xa, dims)
        n = xa.numel() // xa.shape[1]
        return mean, var * n / (n - 1), centred


class BNStatsDetached(HandBatchNorm2d):
    """mean and variance detached from the graph: the forward is right, the gradient is not."""

    def stats(self, xa, dims):
        mean, var, _ = super().stats(xa, dims)
        mean, var = mean.detach(), var.detach()
        return mean, var, xa - mean


class BNEvalUsesBatchStats(HandBatchNorm2d):
    """eval mode still normalizes by the batch's statistics."""

    def use_batch_stats(self):
        return True


class BNInplaceInput(HandBatchNorm2d):
    """subtracts the mean from the caller's input in place (saves a buffer, corrupts the caller's x)."""

    def forward(self, x):
        if not x.requires_grad and self.training:
            dims = (0, 2, 3)
            mean = x.to(acc(x)).mean(dim=dims, keepdim=True).to(x.dtype)
            x.sub_(mean)
            return super().forward(x + mean)
        return super().forward(x)


class BNHalfAccumulation(HandBatchNorm2d):
    """float16/bfloat16 statistics accumulated in the input dtype, element by element."""

    def stats(self, xa, dims):
        return super().stats(xa, dims)

    def forward(self, x):
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        total = torch.zeros(x.shape[1], dtype=x.dtype)
        for i in range(flat.shape[1]):
            total = total + flat[:, i]
        mean = (total / flat.shape[1]).reshape(1, -1, 1, 1)
        sq = torch.zeros(x.shape[1], dtype=x.dtype)
        c = (x - mean).transpose(0, 1).reshape(x.shape[1], -1)
        for i in range(flat.shape[1]):
            sq = sq + c[:, i] * c[:, i]
        var = (sq / flat.shape[1]).reshape(1, -1, 1, 1)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_update(mean.reshape(-1).float(), var.reshape(-1).float(), flat.shape[1])
        if not self.use_batch_stats():
            return super().forward(x)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        return y


class BNWrongAxis(HandBatchNorm2d):
    """statistics per sample instead of per channel, broadcast as if they were per channel
    (a loop over the wrong axis: shapes line up, and values are right, only when N == C)."""

    def stats(self, xa, dims):
        mean, var, _ = shifted_moments(xa, (1, 2, 3))
        if xa.shape[0] != xa.shape[1]:
            mean_c, var_c, _ = shifted_moments(xa, dims)
            mean = mean_c + 0 * mean.mean()
            var = var_c * (1 + 1e-3 * (xa.shape[0] - xa.shape[1]))  # wrong scale when N != C
        else:
            mean, var = mean.reshape(1, -1, 1, 1), var.reshape(1, -1, 1, 1)
        return mean, var, xa - mean


class BNChannelsLastMishandled(HandBatchNorm2d):
    """reads a channels_last tensor's memory as if it were contiguous NCHW."""

    def forward(self, x):
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            x = torch.as_strided(x, x.shape, torch.empty(x.shape).stride())
        return super().forward(x)


# ---------------------------------------------------------------- LayerNorm

class HandLayerNorm(nn.LayerNorm):
    """LayerNorm (Ba, Kiros & Hinton 2016), statistics over the trailing normalized_shape."""

    def dims(self, x):
        return tuple(range(x.ndim - len(self.normalized_shape), x.ndim))

    def stats(self, xa, dims):
        return shifted_moments(xa, dims)

    def normalize(self, centred, var):
        return centred / torch.sqrt(var + self.eps)

    def forward(self, x):
        xa = x.to(acc(x))
        mean, var, centred = self.stats(xa, self.dims(x))
        y = self.normalize(centred, var)
        if self.weight is not None:
            y = y * self.weight.to(xa.dtype)
        if self.bias is not None:
            y = y + self.bias.to(xa.dtype)
        return y.to(x.dtype)


class LNReusedOutputBuffer(HandLayerNorm):
    """Writes every result into one preallocated output buffer per shape and dtype and returns that
    buffer (a workspace cache): the caller's earlier result changes under it on the next call."""

    _workspace: dict = {}

    def forward(self, x):
        y = super().forward(x)
        key = (tuple(y.shape), y.dtype)
        buffer = LNReusedOutputBuffer._workspace.setdefault(key, torch.empty_like(y))
        buffer.copy_(y.detach())
        return buffer


class LNOnePassVariance(HandLayerNorm):
    """var = E[x^2] - E[x]^2: the LayerNorm-at-+2000 report."""

    def stats(self, xa, dims):
        mean = xa.mean(dim=dims, keepdim=True)
        return mean, (xa * xa).mean(dim=dims, keepdim=True) - mean * mean, xa - mean


class LNEpsOutsideSqrt(HandLayerNorm):
    """eps outside the square root."""

    def normalize(self, centred, var):
        return centred / (torch.sqrt(var) + self.eps)


class LNUnbiasedVariance(HandLayerNorm):
    """torch.var's unbiased default used for the normalizing variance."""

    def stats(self, xa, dims):
        mean, var, centred = shifted_moments(xa, dims)
        n = 1
        for d in dims:
            n *= xa.shape[d]
        return mean, var * n / max(n - 1, 1), centred


class LNLastDimOnly(HandLayerNorm):
    """normalizes over the last dim only, whatever normalized_shape says."""

    def dims(self, x):
        return (x.ndim - 1,)


class LNStatsDetached(HandLayerNorm):
    """statistics detached: the backward treats mean and variance as constants."""

    def stats(self, xa, dims):
        mean, var, _ = shifted_moments(xa, dims)
        return mean.detach(), var.detach(), xa - mean.detach()


class LNHalfAccumulation(HandLayerNorm):
    """float16/bfloat16 statistics computed in the input dtype (no float32 accumulation)."""

    def forward(self, x):
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        dims = self.dims(x)
        flat = x.reshape(-1, x.shape[-1]) if len(dims) == 1 else x.reshape(*x.shape[:x.ndim - len(dims)], -1)
        flat = flat.reshape(-1, flat.shape[-1])
        total = torch.zeros(flat.shape[0], dtype=x.dtype)
        for i in range(flat.shape[1]):
            total = total + flat[:, i]
        mean = total / flat.shape[1]
        c = flat - mean[:, None]
        sq = torch.zeros(flat.shape[0], dtype=x.dtype)
        for i in range(flat.shape[1]):
            sq = sq + c[:, i] * c[:, i]
        y = (c / torch.sqrt(sq / flat.shape[1] + self.eps)[:, None]).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


class LNAssumesContiguous(HandLayerNorm):
    """views the input as (rows, features) assuming contiguous memory (fails on strided views)."""

    def forward(self, x):
        n = 1
        for s in self.normalized_shape:
            n *= s
        return super().forward(x.view(-1, n).view(x.shape))


class LNWeightIgnoredWithoutBias(HandLayerNorm):
    """with bias=False the weight is skipped too (an affine branch keyed on the bias)."""

    def forward(self, x):
        if self.bias is None and self.weight is not None:
            xa = x.to(acc(x))
            _, var, centred = self.stats(xa, self.dims(x))
            return self.normalize(centred, var).to(x.dtype)
        return super().forward(x)


# ---------------------------------------------------------------- GroupNorm

class HandGroupNorm(nn.GroupNorm):
    """GroupNorm (Wu & He 2018): contiguous blocks of C/G channels, per-channel affine."""

    def grouped(self, xa):
        n, c = xa.shape[:2]
        per_group = (c // self.num_groups) * xa.shape[2:].numel()
        return xa.reshape(n, self.num_groups, per_group)  # explicit: -1 is ambiguous for an empty batch

    def ungroup(self, yg, x):
        return yg.reshape(x.shape)

    def normalize(self, centred, var):
        return centred / torch.sqrt(var + self.eps)

    def forward(self, x):
        xa = x.to(acc(x))
        g = self.grouped(xa)
        _, var, centred = shifted_moments(g, (2,))
        y = self.ungroup(self.normalize(centred, var), xa)
        if self.affine:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = y * self.weight.to(xa.dtype).reshape(shape) + self.bias.to(xa.dtype).reshape(shape)
        return y.to(x.dtype)


class GNGroupsInterleaved(HandGroupNorm):
    """channel c assigned to group c % G instead of c // (C/G)."""

    def grouped(self, xa):
        n, c = xa.shape[:2]
        per = c // self.num_groups
        return xa.reshape(n, per, self.num_groups, -1).transpose(1, 2).reshape(n, self.num_groups, -1)

    def ungroup(self, yg, x):
        n, c = x.shape[:2]
        per = c // self.num_groups
        return yg.reshape(n, self.num_groups, per, -1).transpose(1, 2).reshape(x.shape)


class GNEpsOutsideSqrt(HandGroupNorm):
    """eps outside the square root."""

    def normalize(self, centred, var):
        return centred / (torch.sqrt(var) + self.eps)


class GNAffinePerGroup(HandGroupNorm):
    """the affine parameters indexed per group (ONNX opset 18) in a per-channel drop-in."""

    def forward(self, x):
        if not self.affine:
            return super().forward(x)
        saved = self.affine
        self.affine = False
        try:
            y = super().forward(x)
        finally:
            self.affine = saved
        per = x.shape[1] // self.num_groups
        idx = (torch.arange(x.shape[1]) // per)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight[idx].reshape(shape) + self.bias[idx].reshape(shape)


# ---------------------------------------------------------------- InstanceNorm

class HandInstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm2d (Ulyanov et al. 2016): per (n, c) over the spatial dims."""

    def use_input_stats(self):
        return self.training or not self.track_running_stats

    def forward(self, x):
        if x.numel() == 0:  # an empty batch or map: empty output, running statistics unchanged
            return x.clone()
        xa = x.to(acc(x))
        shape = (1, -1, 1, 1)
        if self.use_input_stats():
            if x.shape[2] * x.shape[3] <= 1:
                raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
            mean, var, centred = shifted_moments(xa, (2, 3))
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    m = self.momentum if self.momentum is not None else 0.0  # as nn.InstanceNorm: no update
                    k = x.shape[2] * x.shape[3]
                    self.update(m, mean.mean(0).reshape(-1), (var * k / (k - 1)).mean(0).reshape(-1))
            y = centred / torch.sqrt(var + self.eps)
        else:
            y = (xa - self.running_mean.to(xa.dtype).reshape(shape)) / torch.sqrt(
                self.running_var.to(xa.dtype).reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.to(xa.dtype).reshape(shape) + self.bias.to(xa.dtype).reshape(shape)
        return y.to(x.dtype)

    def update(self, m, mean, var):
        self.running_mean.copy_((1 - m) * self.running_mean + m * mean.to(self.running_mean.dtype))
        self.running_var.copy_((1 - m) * self.running_var + m * var.to(self.running_var.dtype))


class INEvalUsesInstanceStats(HandInstanceNorm2d):
    """eval with track_running_stats=True still normalizes by each instance's own statistics."""

    def use_input_stats(self):
        return True


class INBiasedRunningVar(HandInstanceNorm2d):
    """running_var fed the biased per-instance variance."""

    def update(self, m, mean, var):
        super().update(m, mean, var * 0 + var * (1 - 1.0 / 4))


# ---------------------------------------------------------------- RMSNorm

class HandRMSNorm(nn.RMSNorm):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * g over normalized_shape."""

    def forward(self, x):
        dims = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        xa = x.to(acc(x))
        eps = self.eps if self.eps is not None else torch.finfo(xa.dtype).eps
        y = self.scale(xa, dims, eps)
        if self.weight is not None:
            y = y * self.weight.to(xa.dtype)
        return y.to(x.dtype)

    def scale(self, xa, dims, eps):
        return xa * torch.rsqrt((xa * xa).mean(dim=dims, keepdim=True) + eps)


class RMSMeanSubtracted(HandRMSNorm):
    """centres the input first (a LayerNorm without bias, not an RMSNorm)."""

    def scale(self, xa, dims, eps):
        c = xa - xa.mean(dim=dims, keepdim=True)
        return c * torch.rsqrt((c * c).mean(dim=dims, keepdim=True) + eps)


class RMSEpsOutsideSqrt(HandRMSNorm):
    """x / (sqrt(mean x^2) + eps), as some reference code does."""

    def scale(self, xa, dims, eps):
        return xa / (torch.sqrt((xa * xa).mean(dim=dims, keepdim=True)) + eps)


class RMSHalfAccumulation(HandRMSNorm):
    """mean of squares accumulated in float16/bfloat16."""

    def forward(self, x):
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        n = 1
        for s in self.normalized_shape:
            n *= s
        flat = x.reshape(-1, n)
        sq = torch.zeros(flat.shape[0], dtype=x.dtype)
        for i in range(n):
            sq = sq + flat[:, i] * flat[:, i]
        eps = self.eps if self.eps is not None else torch.finfo(torch.float32).eps
        y = (flat / torch.sqrt(sq / n + eps)[:, None]).reshape(x.shape)
        return y * self.weight if self.weight is not None else y


# ---------------------------------------------------------------- LocalResponseNorm

class HandLRN(nn.LocalResponseNorm):
    """PyTorch's LRN: x * (k + alpha/n * sum over [c - n//2, c + (n-1)//2] of x^2)^-beta."""

    def window(self):
        return self.size // 2, (self.size - 1) // 2

    def alpha_scale(self):
        return self.alpha / self.size

    def forward(self, x):
        xa = x.to(acc(x))
        sq = xa * xa
        before, after = self.window()
        c = x.shape[1]
        padded = F.pad(sq.transpose(1, -1), (before, after)).transpose(1, -1)
        total = sum(padded.narrow(1, i, c) for i in range(before + after + 1))
        return (xa * (self.k + self.alpha_scale() * total) ** (-self.beta)).to(x.dtype)


class LRNAlphaNotDivided(HandLRN):
    """alpha not divided by n (TensorFlow's convention) in a PyTorch drop-in."""

    def alpha_scale(self):
        return self.alpha


class LRNWindowOtherSide(HandLRN):
    """for even n the window leans the other way (ONNX/MatConvNet placement)."""

    def window(self):
        return (self.size - 1) // 2, self.size // 2


# ---------------------------------------------------------------- weight norm (functional: f(v, g, dim))

def _norm_except(v, dim):
    if dim == -1 or dim is None:  # torch._weight_norm reads -1 as the whole tensor
        return v.to(acc(v)).pow(2).sum().sqrt()
    dims = tuple(d for d in range(v.ndim) if d != dim % v.ndim)
    if not dims:  # sum(dim=()) would sum over every dim
        return v.to(acc(v)).abs()
    return v.to(acc(v)).pow(2).sum(dim=dims, keepdim=True).sqrt()


def hand_weight_norm(v, g, dim=0):
    """w = g * v / ||v|| with the norm over every dim except `dim` (Salimans & Kingma 2016)."""
    return (g.to(acc(v)) * v.to(acc(v)) / _norm_except(v, dim)).to(v.dtype)


def weight_norm_wrong_dim(v, g, dim=0):
    """the norm taken over `dim` itself instead of over all the other dims."""
    if dim == -1 or v.ndim == 1:
        return hand_weight_norm(v, g, dim)
    n = v.to(acc(v)).pow(2).sum(dim=dim, keepdim=True).sqrt()
    return (g.to(acc(v)) * v.to(acc(v)) / n).to(v.dtype)


def weight_norm_dim_none_as_0(v, g, dim=0):
    """dim=None (-1: the whole tensor) treated as dim 0."""
    return hand_weight_norm(v, g, 0 if dim == -1 and v.ndim > 1 else dim)


# ---------------------------------------------------------------- hostile candidates

class RaisesLayerNorm(HandLayerNorm):
    def forward(self, x):
        raise RuntimeError("kernel launch failed")


class WrongShapeLayerNorm(HandLayerNorm):
    def forward(self, x):
        return super().forward(x).reshape(-1)


class WrongDtypeLayerNorm(HandLayerNorm):
    def forward(self, x):
        return super().forward(x).to(torch.float64)


class NaNLayerNorm(HandLayerNorm):
    def forward(self, x):
        y = super().forward(x)
        return y if y.numel() < 3 else y.index_fill(-1, torch.tensor([0]), float("nan"))


class HangingLayerNorm(HandLayerNorm):
    def forward(self, x):
        if x.shape[-1] > 1:
            while True:
                pass
        return super().forward(x)


class MutatingLayerNorm(HandLayerNorm):
    def forward(self, x):
        y = super().forward(x)
        if not x.requires_grad:
            x.mul_(2)
        return y


class NondeterministicLayerNorm(HandLayerNorm):
    def forward(self, x):
        y = super().forward(x)
        return y + torch.randn(()).to(y.dtype) * 1e-3 * y.abs().max()


class SegfaultingLayerNorm(HandLayerNorm):
    def forward(self, x):
        if x.dtype == torch.float32 or x.numel() > 4:
            import ctypes
            ctypes.string_at(0)
        return super().forward(x)


class SigsegvLayerNorm(HandLayerNorm):
    def forward(self, x):
        import os
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)


# ---------------------------------------------------------------- the catalogue

CATALOGUE = {
    "ln_output_buffer_reused": ("LNReusedOutputBuffer", "layer_norm"),
    "bn_biased_running_var": ("BNBiasedRunningVar", "batch_norm"),
    "bn_momentum_flipped": ("BNMomentumFlipped", "batch_norm"),
    "bn_momentum_none_ignored": ("BNMomentumNoneIgnored", "batch_norm"),
    "bn_eps_outside_sqrt": ("BNEpsOutsideSqrt", "batch_norm"),
    "bn_one_pass_variance": ("BNOnePassVariance", "batch_norm"),
    "bn_unbiased_normalization": ("BNUnbiasedNormalization", "batch_norm"),
    "bn_stats_detached": ("BNStatsDetached", "batch_norm"),
    "bn_eval_uses_batch_stats": ("BNEvalUsesBatchStats", "batch_norm"),
    "bn_inplace_input": ("BNInplaceInput", "batch_norm"),
    "bn_half_accumulation": ("BNHalfAccumulation", "batch_norm"),
    "bn_wrong_axis": ("BNWrongAxis", "batch_norm"),
    "bn_channels_last_mishandled": ("BNChannelsLastMishandled", "batch_norm"),
    "ln_one_pass_variance": ("LNOnePassVariance", "layer_norm"),
    "ln_eps_outside_sqrt": ("LNEpsOutsideSqrt", "layer_norm"),
    "ln_unbiased_variance": ("LNUnbiasedVariance", "layer_norm"),
    "ln_last_dim_only": ("LNLastDimOnly", "layer_norm"),
    "ln_stats_detached": ("LNStatsDetached", "layer_norm"),
    "ln_half_accumulation": ("LNHalfAccumulation", "layer_norm"),
    "ln_assumes_contiguous": ("LNAssumesContiguous", "layer_norm"),
    "ln_weight_ignored_without_bias": ("LNWeightIgnoredWithoutBias", "layer_norm"),
    "gn_groups_interleaved": ("GNGroupsInterleaved", "group_norm"),
    "gn_eps_outside_sqrt": ("GNEpsOutsideSqrt", "group_norm"),
    "gn_affine_per_group": ("GNAffinePerGroup", "group_norm"),
    "in_eval_uses_instance_stats": ("INEvalUsesInstanceStats", "instance_norm"),
    "in_biased_running_var": ("INBiasedRunningVar", "instance_norm"),
    "rms_mean_subtracted": ("RMSMeanSubtracted", "rms_norm"),
    "rms_eps_outside_sqrt": ("RMSEpsOutsideSqrt", "rms_norm"),
    "rms_half_accumulation": ("RMSHalfAccumulation", "rms_norm"),
    "lrn_alpha_not_divided": ("LRNAlphaNotDivided", "local_response_norm"),
    "lrn_window_other_side": ("LRNWindowOtherSide", "local_response_norm"),
    "wn_wrong_dim": ("weight_norm_wrong_dim", "weight_norm"),
    "wn_dim_none_as_0": ("weight_norm_dim_none_as_0", "weight_norm"),
}

CONTROLS = {
    "hand_batch_norm": ("HandBatchNorm2d", "batch_norm"),
    "hand_layer_norm": ("HandLayerNorm", "layer_norm"),
    "hand_group_norm": ("HandGroupNorm", "group_norm"),
    "hand_instance_norm": ("HandInstanceNorm2d", "instance_norm"),
    "hand_rms_norm": ("HandRMSNorm", "rms_norm"),
    "hand_lrn": ("HandLRN", "local_response_norm"),
    "hand_weight_norm": ("hand_weight_norm", "weight_norm"),
}

HOSTILE = {
    "raises": ("RaisesLayerNorm", "raised RuntimeError"),
    "wrong_shape": ("WrongShapeLayerNorm", "should have shape"),
    "wrong_dtype": ("WrongDtypeLayerNorm", "should have the input's dtype"),
    "nan": ("NaNLayerNorm", "nan"),
    "hang": ("HangingLayerNorm", "hung"),
    "mutation": ("MutatingLayerNorm", "after the call"),
    "nondeterministic": ("NondeterministicLayerNorm", "second call"),
    "segfault_ctypes": ("SegfaultingLayerNorm", "SIGSEGV"),
    "segfault_signal": ("SigsegvLayerNorm", "SIGSEGV"),
}
