"""Seeded wrong torch.nn drop-ins whose bug shows only where the reach draws go (issue 19): long
rows and block tails, many rows, half-precision magnitudes, memory layouts.

Each is a correct implementation (float32 statistics, the shifted two-pass variance, as in
tests/candidates/norms.py) with one mistake modeled on a kind of bug reported in fused kernels:
`REACH` maps the bug's name to (class name, norm). Today's small draws (<= 512 values per row,
<= 162 per channel, unit magnitudes, dy in x's layout) accept every one of them. Not a test
module: tests/test_reach.py hands these to `normspec validate`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

BLOCK = 1024


def acc(x):
    """The accumulation dtype: float32 for half types, else the input's."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def two_pass(xa, dims):
    """Mean and biased variance over dims, shifted two-pass (exact 0 for a constant set); the shift is
    detached (its exact derivative is 0; see shifted_moments in tests/candidates/norms.py)."""
    index = [slice(None)] * xa.ndim
    for d in dims:
        index[d] = slice(0, 1)
    first = xa[tuple(index)].detach()
    s = xa - first
    m = s.mean(dim=dims, keepdim=True)
    c = s - m
    return first + m, (c * c).mean(dim=dims, keepdim=True)


class ReachLayerNorm(nn.LayerNorm):
    """A correct LayerNorm (Ba et al. 2016) on rows (..., n): hooks for the seeded mistakes."""

    def rows(self, x):
        n = 1
        for s in self.normalized_shape:
            n *= s
        return x.reshape(-1, n)

    def moments(self, rows, xa):
        return two_pass(xa, (1,))

    def forward(self, x):
        rows = self.rows(x)
        xa = rows.to(acc(x))
        mean, var = self.moments(rows, xa)
        y = ((xa - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)


class LNHalfSquares(ReachLayerNorm):
    """centred squares formed in the input dtype before the float32 sum: in float16 they pass
    65504 once |x - mean| > 256 (inf variance, y = 0)."""

    def moments(self, rows, xa):
        mean, _ = two_pass(xa, (1,))
        c = rows - mean.to(rows.dtype)
        return mean, (c * c).to(xa.dtype).mean(dim=1, keepdim=True)


class LNHalfCount(ReachLayerNorm):
    """the row length held in the input dtype (1/n computed from it): float16 counts exactly only
    up to 2048, so 2049 values are averaged as 2048, and past 65504 1/n is 0."""

    def moments(self, rows, xa):
        inv_n = 1.0 / torch.tensor(float(xa.shape[1]), dtype=rows.dtype).to(xa.dtype)
        mean = xa.sum(dim=1, keepdim=True) * inv_n
        c = xa - mean
        return mean, (c * c).sum(dim=1, keepdim=True) * inv_n


class LNHalfVariance(ReachLayerNorm):
    """the variance, accumulated in float32, stored in the input dtype before the rsqrt: in float16
    it is inf once the row's std passes 256 (values in the hundreds), and y collapses to 0."""

    def moments(self, rows, xa):
        mean, var = two_pass(xa, (1,))
        return mean, var.to(rows.dtype).to(xa.dtype)


class LNTailMaskForgotten(ReachLayerNorm):
    """blocks of 1024: the masked tail of the last block is left out of the sums (divided by n all
    the same) when a row is longer than one block and not a multiple of it."""

    def moments(self, rows, xa):
        n = xa.shape[1]
        full = n - n % BLOCK if n > BLOCK else n
        part = xa[:, :full]
        mean = part.sum(dim=1, keepdim=True) / n
        c = part - mean
        return mean, (c * c).sum(dim=1, keepdim=True) / n


class LNOnePassLongRows(ReachLayerNorm):
    """rows longer than 4096 take a 'fast path' with the one-pass variance E[x^2] - E[x]^2."""

    def moments(self, rows, xa):
        if xa.shape[1] <= 4096:
            return two_pass(xa, (1,))
        mean = xa.mean(dim=1, keepdim=True)
        return mean, ((xa * xa).mean(dim=1, keepdim=True) - mean * mean).clamp_min(0)


class LNGridWraps(ReachLayerNorm):
    """one program per row on a grid capped at 65535: rows past it reuse the statistics of row
    i - 65535 (a wrapped grid index)."""

    def moments(self, rows, xa):
        mean, var = two_pass(xa, (1,))
        if xa.shape[0] > 65535:
            idx = torch.arange(xa.shape[0]) % 65535
            mean, var = mean[idx], var[idx]
        return mean, var


class LNEpsInHalf(ReachLayerNorm):
    """eps rounded to the input dtype: 1e-10 is 0 in float16, so rows whose variance is below
    float16's resolution divide by ~0."""

    def forward(self, x):
        eps = torch.tensor(self.eps, dtype=x.dtype).item()
        rows = self.rows(x)
        xa = rows.to(acc(x))
        mean, var = two_pass(xa, (1,))
        y = ((xa - mean) / torch.sqrt(var + eps)).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)


class ReachRMSNorm(nn.RMSNorm):
    """A correct RMSNorm (Zhang & Sennrich 2019): hooks for the seeded mistakes."""

    def mean_square(self, rows, xa):
        return (xa * xa).mean(dim=1, keepdim=True)

    def forward(self, x):
        n = 1
        for s in self.normalized_shape:
            n *= s
        rows = x.reshape(-1, n)
        xa = rows.to(acc(x))
        eps = self.eps if self.eps is not None else torch.finfo(xa.dtype).eps  # the compute dtype's, as PyTorch
        y = (xa / torch.sqrt(self.mean_square(rows, xa) + eps)).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        return y.to(x.dtype)


class RMSTailMaskForgotten(ReachRMSNorm):
    """blocks of 2048 values: the last, partial block is left out of the sum of squares."""

    def mean_square(self, rows, xa):
        n = xa.shape[1]
        full = n - n % 2048 if n > 2048 else n
        return (xa[:, :full] * xa[:, :full]).sum(dim=1, keepdim=True) / n


class RMSHalfSquares(ReachRMSNorm):
    """squares formed in the input dtype (float16 squares pass 65504 for |x| > 256)."""

    def mean_square(self, rows, xa):
        return (rows * rows).to(xa.dtype).mean(dim=1, keepdim=True)


class ReachBatchNorm2d(nn.BatchNorm2d):
    """A correct BatchNorm2d (Ioffe & Szegedy 2015) with PyTorch's running-statistics rules."""

    def moments(self, x, xa):
        return two_pass(xa, (0, 2, 3))

    def forward(self, x):
        shape = (1, -1, 1, 1)
        if x.numel() == 0:  # an empty batch: empty output, no statistics, the call still counted
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
            return x.clone()
        xa = x.to(acc(x))
        if self.training or not self.track_running_stats:
            n = x.numel() // x.shape[1]
            if self.training and n <= 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got {tuple(x.shape)}")
            mean, var = self.moments(x, xa)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                    batch_mean = mean.reshape(-1).to(self.running_mean.dtype)
                    self.running_mean.copy_((1 - m) * self.running_mean + m * batch_mean)
                    unbiased = (var * n / max(n - 1, 1)).reshape(-1).to(self.running_var.dtype)
                    self.running_var.copy_((1 - m) * self.running_var + m * unbiased)
        else:
            mean = self.running_mean.to(xa.dtype).reshape(shape)
            var = self.running_var.to(xa.dtype).reshape(shape)
        y = (xa - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.to(xa.dtype).reshape(shape) + self.bias.to(xa.dtype).reshape(shape)
        return y.to(x.dtype)


class BNHalfCount(ReachBatchNorm2d):
    """the channel's element count N*H*W held in the input dtype: float16 counts exactly only up to
    2048, and past 65504 the count is inf (mean and variance 0)."""

    def moments(self, x, xa):
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype).to(xa.dtype)
        mean = xa.sum(dim=(0, 2, 3), keepdim=True) / count
        c = xa - mean
        return mean, (c * c).sum(dim=(0, 2, 3), keepdim=True) / count


class BNOnePassLargeChannels(ReachBatchNorm2d):
    """channels of more than 4096 values take the one-pass variance E[x^2] - E[x]^2."""

    def moments(self, x, xa):
        if x.numel() // x.shape[1] <= 4096:
            return two_pass(xa, (0, 2, 3))
        mean = xa.mean(dim=(0, 2, 3), keepdim=True)
        return mean, ((xa * xa).mean(dim=(0, 2, 3), keepdim=True) - mean * mean).clamp_min(0)


class ReachGroupNorm(nn.GroupNorm):
    """A correct GroupNorm (Wu & He 2018): contiguous blocks of C/G channels, per-channel affine."""

    def moments(self, g):
        return two_pass(g, (2,))

    def forward(self, x):
        n, c = x.shape[:2]
        xa = x.to(acc(x))
        per_group = (c // self.num_groups) * x.shape[2:].numel()
        g = xa.reshape(n, self.num_groups, per_group)  # explicit: -1 is ambiguous for an empty batch
        mean, var = self.moments(g)
        y = ((g - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.ndim - 2)
            y = y * self.weight.to(y.dtype).reshape(shape) + self.bias.to(y.dtype).reshape(shape)
        return y.to(x.dtype)


class GNTailMaskForgotten(ReachGroupNorm):
    """groups reduced in blocks of 512 values; the partial last block is dropped from the sums."""

    def moments(self, g):
        m = g.shape[2]
        full = m - m % 512 if m > 512 else m
        part = g[:, :, :full]
        mean = part.sum(dim=2, keepdim=True) / m
        c = part - mean
        return mean, (c * c).sum(dim=2, keepdim=True) / m


def _is_channels_last(t) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class _MemoryFormatBlind(torch.autograd.Function):
    """GroupNorm whose backward takes dy's elements in dy's memory order as if dy had x's memory
    format (a kernel handed dy's data pointer, checking contiguity but not the format)."""

    @staticmethod
    def forward(ctx, x, weight, bias, module):
        ctx.save_for_backward(x, weight, bias)
        ctx.module = module
        with torch.no_grad():
            return ReachGroupNorm.forward(module, x)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        if x.dim() == 4 and _is_channels_last(x) != _is_channels_last(dy):
            n, c, h, w = dy.shape
            raw = dy.permute(0, 2, 3, 1).reshape(-1) if _is_channels_last(dy) else dy.contiguous().reshape(-1)
            dy = raw.view(n, h, w, c).permute(0, 3, 1, 2) if _is_channels_last(x) else raw.view(n, c, h, w)
        leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
        module = ctx.module
        with torch.enable_grad():
            saved = module.weight, module.bias
            try:
                if module.affine:
                    module.weight, module.bias = nn.Parameter(leaves[1]), nn.Parameter(leaves[2])
                y = ReachGroupNorm.forward(module, leaves[0])
                wrt = [leaves[0]] + ([module.weight, module.bias] if module.affine else [])
                grads = torch.autograd.grad(y, wrt, dy)
            finally:
                module.weight, module.bias = saved
        dx = grads[0]
        dw, db = (grads[1], grads[2]) if module.affine else (None, None)
        return dx, dw, db, None


class GNBackwardBlindToMemoryFormat(ReachGroupNorm):
    """the backward reads dy as if it had x's memory format: right whenever both are contiguous or
    both channels_last, wrong for a channels_last x with a contiguous dy and the reverse (4-D)."""

    def forward(self, x):
        if not torch.is_grad_enabled():
            return super().forward(x)
        return _MemoryFormatBlind.apply(x, self.weight, self.bias, self)


class ReachInstanceNorm2d(nn.InstanceNorm2d):
    """A correct InstanceNorm2d (Ulyanov et al. 2016), no running statistics in this hook."""

    def moments(self, xa):
        return two_pass(xa, (2, 3))

    def forward(self, x):
        if self.track_running_stats or x.numel() == 0:
            return super().forward(x)
        if x.shape[2] * x.shape[3] == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {tuple(x.shape)}")
        xa = x.to(acc(x))
        mean, var = self.moments(xa)
        y = (xa - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.to(y.dtype).reshape(1, -1, 1, 1) + self.bias.to(y.dtype).reshape(1, -1, 1, 1)
        return y.to(x.dtype)


class INOnePassLargeMaps(ReachInstanceNorm2d):
    """maps of more than 8192 values (~100 x 100 and up) take the one-pass variance."""

    def moments(self, xa):
        if xa.shape[2] * xa.shape[3] <= 8192:
            return two_pass(xa, (2, 3))
        mean = xa.mean(dim=(2, 3), keepdim=True)
        return mean, ((xa * xa).mean(dim=(2, 3), keepdim=True) - mean * mean).clamp_min(0)


class _RowNorm(torch.autograd.Function):
    """LayerNorm over the trailing `n` values with its closed-form backward (a fused kernel's
    structure); weight and bias may be None."""

    @staticmethod
    def forward(ctx, x, weight, bias, n, eps, dy_like_x):
        rows = x.reshape(-1, n).to(acc(x))
        mean, var = two_pass(rows, (1,))
        rstd = torch.rsqrt(var + eps)
        xhat = (rows - mean) * rstd
        w = torch.ones(n, dtype=rows.dtype) if weight is None else weight.reshape(-1).to(rows.dtype)
        b = torch.zeros(n, dtype=rows.dtype) if bias is None else bias.reshape(-1).to(rows.dtype)
        ctx.save_for_backward(xhat, rstd, w)
        ctx.x_stride, ctx.shape, ctx.dtype, ctx.dy_like_x = x.stride(), x.shape, x.dtype, dy_like_x
        ctx.param_shape = None if weight is None else (weight.shape, weight.dtype)
        ctx.has_bias = bias is not None
        return (xhat * w + b).reshape(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, w = ctx.saved_tensors
        if ctx.dy_like_x:  # the kernel indexes dy with x's strides (no .contiguous(), no stride check)
            dy = torch.as_strided(dy, dy.shape, ctx.x_stride, dy.storage_offset())
        g = dy.reshape(xhat.shape).to(xhat.dtype)
        gw = g * w
        dx = rstd * (gw - gw.mean(dim=1, keepdim=True) - xhat * (gw * xhat).mean(dim=1, keepdim=True))
        dweight = dbias = None
        if ctx.param_shape is not None:
            shape, dtype = ctx.param_shape
            dweight = (g * xhat).sum(0).reshape(shape).to(dtype)
            dbias = g.sum(0).reshape(shape).to(dtype) if ctx.has_bias else None
        return dx.reshape(ctx.shape).to(ctx.dtype), dweight, dbias, None, None, None


class RowLayerNorm(nn.LayerNorm):
    """A correct LayerNorm with a hand-written backward (the structure of a fused kernel)."""

    dy_like_x = False

    def forward(self, x):
        n = 1
        for s in self.normalized_shape:
            n *= s
        return _RowNorm.apply(x, self.weight, self.bias, n, self.eps, self.dy_like_x)


class LNBackwardAssumesInputLayout(RowLayerNorm):
    """the backward reads dy with x's strides: right whenever dy has x's layout, wrong (or out of
    bounds) for a channels_last, strided, offset or expanded dy under another x."""

    dy_like_x = True


class LNIgnoresStorageOffset(ReachLayerNorm):
    """reads x from the start of its storage (as a kernel handed data_ptr() of the base would):
    right for every view that starts at element 0, shifted by one for a view one element in."""

    def forward(self, x):
        return super().forward(torch.as_strided(x, x.shape, x.stride(), 0))


_WORKSPACE: dict = {}


class LNReusesLargeOutputBuffer(ReachLayerNorm):
    """outputs of 10000 elements or more are written into one cached buffer per (shape, dtype) and
    that buffer is returned: a second call of the same shape overwrites the caller's first result
    (small outputs are fresh tensors, so small draws never see it)."""

    def forward(self, x):
        y = super().forward(x)
        if y.numel() < 10000:
            return y
        buffer = _WORKSPACE.setdefault((tuple(y.shape), y.dtype), torch.empty_like(y))
        return buffer.detach().copy_(y)


REACH = {
    "ln_half_squares": ("LNHalfSquares", "layer_norm"),
    "ln_half_count": ("LNHalfCount", "layer_norm"),
    "ln_half_variance": ("LNHalfVariance", "layer_norm"),
    "ln_backward_assumes_input_layout": ("LNBackwardAssumesInputLayout", "layer_norm"),
    "ln_ignores_storage_offset": ("LNIgnoresStorageOffset", "layer_norm"),
    "ln_tail_mask_forgotten": ("LNTailMaskForgotten", "layer_norm"),
    "ln_one_pass_long_rows": ("LNOnePassLongRows", "layer_norm"),
    "ln_grid_wraps_past_65535_rows": ("LNGridWraps", "layer_norm"),
    "ln_eps_in_half": ("LNEpsInHalf", "layer_norm"),
    "ln_reuses_large_output_buffer": ("LNReusesLargeOutputBuffer", "layer_norm"),
    "rms_tail_mask_forgotten": ("RMSTailMaskForgotten", "rms_norm"),
    "rms_half_squares": ("RMSHalfSquares", "rms_norm"),
    "bn_half_count": ("BNHalfCount", "batch_norm"),
    "bn_one_pass_large_channels": ("BNOnePassLargeChannels", "batch_norm"),
    "gn_tail_mask_forgotten": ("GNTailMaskForgotten", "group_norm"),
    "gn_backward_blind_to_memory_format": ("GNBackwardBlindToMemoryFormat", "group_norm"),
    "in_one_pass_large_maps": ("INOnePassLargeMaps", "instance_norm"),
}

# Of these, the draws before issue 19 (main at c362388, `normspec validate`, ci profile) already
# rejected the three below (through ill-conditioned inputs, constant rows with eps = 1e-8 and
# outliers whose squares pass 65504); they stay as regression cases. Every other one was accepted.
CAUGHT_BEFORE = {"ln_half_squares", "rms_half_squares", "ln_eps_in_half"}

# Correct controls: the same classes without a mistake.
CONTROLS = {
    "layer_norm": ("ReachLayerNorm", "layer_norm"),
    "layer_norm_closed_form_backward": ("RowLayerNorm", "layer_norm"),
    "rms_norm": ("ReachRMSNorm", "rms_norm"),
    "batch_norm": ("ReachBatchNorm2d", "batch_norm"),
    "group_norm": ("ReachGroupNorm", "group_norm"),
    "instance_norm": ("ReachInstanceNorm2d", "instance_norm"),
}


# PyTorch's own modules as drop-ins (subclasses, as a user's wrapper would be): must be accepted.
class TorchLayerNorm(nn.LayerNorm):
    pass


class TorchBatchNorm2d(nn.BatchNorm2d):
    pass


class TorchGroupNorm(nn.GroupNorm):
    pass


class TorchRMSNorm(nn.RMSNorm):
    pass


class TorchInstanceNorm2d(nn.InstanceNorm2d):
    pass
