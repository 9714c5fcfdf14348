"""Hand-written SyncBatchNorm drop-ins for `normspec validate --as sync_batch_norm`: one correct
control and seeded bugs, each a mistake shipped by real synchronized-BatchNorm code.

Each class subclasses `torch.nn.SyncBatchNorm` (its constructor, parameters and buffers) and
replaces its forward, which runs inside an initialized torch.distributed process group (any
backend: the collectives are `all_gather` and `all_reduce` on CPU tensors). PyTorch's own
nn.SyncBatchNorm cannot be the control: in 2.13 its forward raises on CPU tensors ("SyncBatchNorm
expected input tensor to be on GPU or XPU") once a process group is initialized.

Statistics follow Chan, Golub & LeVeque 1979 (per-rank count, mean and sum of squared deviations,
combined pairwise); the backward is Ioffe & Szegedy 2015's over the global batch, with the sums
sum(dy) and sum(dy * xhat) all-reduced (Zhang et al. 2018, sec. 3.3). Not a test module:
tests/test_validate_distributed.py hands these to `normspec validate`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def acc(x):
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def dims_of(x):
    return [0] + list(range(2, x.ndim))


def view(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def local_moments(xa):
    """(count, mean, M2 = sum of squared deviations) of this rank's shard per channel, shifted two-pass."""
    dims = dims_of(xa)
    first = xa[(slice(0, 1), slice(None)) + (slice(0, 1),) * (xa.ndim - 2)]
    shifted = xa - first
    m = shifted.mean(dim=dims, keepdim=True)
    c = shifted - m
    count = xa.numel() // xa.shape[1]
    return count, (first + m).reshape(-1), (c * c).sum(dim=dims)


def gather_moments(count, mean, m2):
    """Every rank's (count, mean, M2), stacked (k, 3, C), in rank order."""
    row = torch.stack([torch.full_like(mean, float(count)), mean, m2])
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row.contiguous())
    return torch.stack(rows)


def combine(rows):
    """Chan et al.'s merge: n = sum n_r, mu = sum n_r mu_r / n, M2 = sum M2_r + n_r (mu_r - mu)^2."""
    counts = rows[:, 0]
    n = counts.sum(dim=0)
    mean = (counts * rows[:, 1]).sum(dim=0) / n
    m2 = (rows[:, 2] + counts * (rows[:, 1] - mean) ** 2).sum(dim=0)
    return int(n[0].item()), mean, m2 / n


class _SyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, stats_fn):
        xa = x.to(acc(x))
        n, mean, var = stats_fn(xa)
        inv_std = torch.rsqrt(var + eps)
        xhat = (xa - view(mean, xa)) * view(inv_std, xa)
        y = xhat
        if weight is not None:
            y = y * view(weight.to(xa.dtype), xa) + view(bias.to(xa.dtype), xa)
        ctx.save_for_backward(xhat, inv_std, weight)
        ctx.n, ctx.x_dtype = n, x.dtype
        ctx.stats = (n, mean.detach(), var.detach())
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        xhat, inv_std, weight = ctx.saved_tensors
        d = dy.to(xhat.dtype)
        dims = dims_of(xhat)
        local = torch.stack([d.sum(dim=dims), (d * xhat).sum(dim=dims)])
        total = local.clone()
        dist.all_reduce(total)
        scale = inv_std if weight is None else weight.to(xhat.dtype) * inv_std
        dx = view(scale, xhat) * (d - view(total[0] / ctx.n, xhat) - xhat * view(total[1] / ctx.n, xhat))
        dw = db = None
        if weight is not None:
            dw, db = local[1].to(weight.dtype), local[0].to(weight.dtype)  # this rank's share
        return dx.to(ctx.x_dtype), dw, db, None, None


class HandSyncBatchNorm(nn.SyncBatchNorm):
    """A correct SyncBatchNorm: group statistics weighted by each rank's count, the running variance
    unbiased with the global count, a backward that all-reduces its sums."""

    def group_stats(self, xa):
        count, mean, m2 = local_moments(xa)
        n, mean, var = combine(gather_moments(count, mean, m2))
        return n, mean, var

    def unbiased(self, var, n_global, n_local):
        return var * n_global / (n_global - 1)

    def batch_norm(self, x, weight, bias):
        stats = {}

        def stats_fn(xa):
            n, mean, var = self.group_stats(xa)
            stats.update(n=n, n_local=xa.numel() // xa.shape[1], mean=mean, var=var)
            if self.training and n <= 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got {n}")
            return n, mean, var

        y = _SyncBN.apply(x, weight, bias, self.eps, stats_fn)
        return y, stats

    def forward(self, x):
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        y, s = self.batch_norm(x, self.weight, self.bias)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                var = self.unbiased(s["var"].detach(), s["n"], s["n_local"])
                self.running_mean.mul_(1 - m).add_(m * s["mean"].detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * var.to(self.running_var.dtype))
        return y


class HandSyncBatchNormLocalEval(HandSyncBatchNorm):
    """Also correct: synchronizes in training only, as nn.SyncBatchNorm does (in eval without
    running statistics each rank normalizes by its own shard's statistics)."""

    def forward(self, x):
        if not self.training and not self.track_running_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class SyncBNEqualRankWeights(HandSyncBatchNorm):
    """Ranks' means and variances averaged with equal weights, as if every rank held the same
    number of samples (pytorch#22192, NVIDIA/apex#387): wrong whenever the batch is cut unevenly."""

    def group_stats(self, xa):
        count, mean, m2 = local_moments(xa)
        rows = gather_moments(count, mean, m2)
        mu = rows[:, 1].mean(dim=0)
        var = (rows[:, 2] / rows[:, 0] + (rows[:, 1] - mu) ** 2).mean(dim=0)
        return int(rows[:, 0, 0].sum().item()), mu, var


class SyncBNLocalCountUnbiased(HandSyncBatchNorm):
    """The running variance's Bessel correction n/(n-1) taken with this rank's count instead of the
    group's (infinite for a rank holding one sample)."""

    def unbiased(self, var, n_global, n_local):
        return var * n_local / (n_local - 1) if n_local > 1 else var * float("inf")


class SyncBNGatherNotDifferentiable(HandSyncBatchNorm):
    """Plain autograd through `dist.all_gather`, which autograd does not see: only this rank's row
    of the gathered statistics carries gradient, so each rank's input gradient misses the other
    ranks' share of the statistics' gradient (the sums of dy and dy * xhat over their samples)."""

    def batch_norm(self, x, weight, bias):
        xa = x.to(acc(x))
        count, mean, m2 = local_moments(xa)
        row = torch.stack([torch.full_like(mean, float(count)), mean, m2])
        rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, row.detach().contiguous())
        rows[dist.get_rank()] = row  # the only row autograd can differentiate
        n, mu, var = combine(torch.stack(rows))
        if self.training and n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {n}")
        y = (xa - view(mu, xa)) * view(torch.rsqrt(var + self.eps), xa)
        if weight is not None:
            y = y * view(weight.to(xa.dtype), xa) + view(bias.to(xa.dtype), xa)
        return y.to(x.dtype), {"n": n, "n_local": count, "mean": mu, "var": var}


class SyncBNRunningStatsRank0Only(HandSyncBatchNorm):
    """Running statistics updated on rank 0 only ("rank 0 holds the model"): the other ranks keep
    stale buffers, so eval differs across ranks unless DDP broadcasts rank 0's buffers. The global
    result (rank 0's buffers) is right; only the per-rank check sees it."""

    def forward(self, x):
        if dist.get_rank() == 0 or not (self.training and self.track_running_stats):
            return super().forward(x)
        saved = self.track_running_stats
        self.track_running_stats = False  # batch statistics, no update
        try:
            return super().forward(x)
        finally:
            self.track_running_stats = saved


# ---------------------------------------------------------------- hostile ranks (tests of the harness)

class HangingRankSyncBN(HandSyncBatchNorm):
    """Rank 1 never joins the collective: the others wait in all_gather."""

    def forward(self, x):
        if dist.get_rank() == 1:
            import time

            while True:
                time.sleep(0.05)
        return super().forward(x)


class RaisingRankSyncBN(HandSyncBatchNorm):
    """Rank 1 raises before the collective."""

    def forward(self, x):
        if dist.get_rank() == 1:
            raise RuntimeError("rank 1 gives up")
        return super().forward(x)


class DyingRankSyncBN(HandSyncBatchNorm):
    """Rank 1's process dies (SIGKILL) in the forward."""

    def forward(self, x):
        if dist.get_rank() == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


# bug name -> (class, what it gets wrong); CONTROLS: correct implementations
CATALOGUE = {
    "sync_equal_rank_weights": ("SyncBNEqualRankWeights", "statistics averaged with equal weights over ranks"),
    "sync_local_count_unbiased": ("SyncBNLocalCountUnbiased", "running variance unbiased with the local count"),
    "sync_gather_not_differentiable": ("SyncBNGatherNotDifferentiable",
                                       "backward misses the other ranks' share of the statistics' gradient"),
    "sync_running_stats_rank0_only": ("SyncBNRunningStatsRank0Only", "running statistics updated on rank 0 only"),
}
CONTROLS = {"hand_sync_batch_norm": "HandSyncBatchNorm", "hand_local_eval": "HandSyncBatchNormLocalEval"}
