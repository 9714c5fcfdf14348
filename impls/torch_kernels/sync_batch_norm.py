"""SyncBatchNorm on a real distributed engine: k gloo processes on this machine, one per rank.

`torch.nn.SyncBatchNorm` does not synchronize on the CPU: in PyTorch 2.13 its forward raises
"SyncBatchNorm expected input tensor to be on GPU or XPU ..." once a process group is initialized
and the module is training (its fused kernels `batch_norm_stats` / `batch_norm_gather_stats_with_counts`
exist for CUDA only). So each rank runs `SyncBatchNormRank`, an autograd.Function written here
with `torch.distributed` collectives, as the module does on GPUs:
- forward: local (n_r, mu_r, s2_r) per channel (shifted two-pass), one `all_gather` of them, then
  Chan, Golub & LeVeque's pairwise merge in rank order; every rank normalizes by the group's stats;
- backward: local sum dy and sum dy xhat, one `all_reduce`, then BatchNorm's input gradient over the
  global batch. Each rank's weight and bias gradients are its local sums (as in nn.SyncBatchNorm);
  the caller adds them over ranks in rank order, the step data-parallel training's gradient
  all-reduce performs (summed, not averaged over ranks).
Running statistics are updated by every rank from the group's statistics (unbiased n/(n-1) or
biased, momentum new-value / decay / cumulative). Eval with running statistics is local
`F.batch_norm`, no communication. Batch statistics are synchronized whenever they are used
(nn.SyncBatchNorm uses local ones in eval without running statistics).

In the caller, the kernel splits the global batch by `rank_sizes`, ships the shards to the rank
pool (`normspec.impls.torch_distributed`) and concatenates the replies; an autograd.Function on
the caller's side sends the backward to the ranks as a second job (each rank re-runs its forward
with autograd, then the distributed backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.running import running_update
from normspec.impls.torch_backend import torch_kernel

TASK = f"{__name__}:rank_task"


# ---------------------------------------------------------------- on each rank (worker process)

def _geometry(x):
    return [0] + list(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def accumulation_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def local_statistics(xa):
    """(n_r, mu_r, s2_r) per channel of this rank's shard: shifted two-pass, so a constant shard has
    mean exactly its value and variance exactly 0."""
    axes, shape = _geometry(xa)
    if xa.shape[0] == 0:  # an empty shard: zeros and count 0, as nn.SyncBatchNorm all-gathers for it
        zeros = xa.new_zeros(xa.shape[1])
        return 0, zeros, zeros
    shift = xa[(0, slice(None)) + (0,) * (xa.ndim - 2)].reshape(shape)
    centred = xa - shift
    shifted_mean = centred.mean(dim=axes, keepdim=True)
    var = (centred - shifted_mean).square().mean(dim=axes)
    return xa.numel() // xa.shape[1], (shift + shifted_mean).reshape(-1), var


def combine(gathered):
    """Merge the all-gathered rows (n_r, mu_r, s2_r) in rank order (Chan et al. 1979), after
    dropping the rows of ranks with count 0 (nn.SyncBatchNorm's "remove stats from empty inputs")."""
    gathered = [row for row in gathered if row[0, 0].item() >= 1]
    n, mean, var = gathered[0][0, 0].item(), gathered[0][1], gathered[0][2]
    m2 = var * n
    for row in gathered[1:]:
        n_r, mean_r, var_r = row[0, 0].item(), row[1], row[2]
        total = n + n_r
        delta = mean_r - mean
        mean = mean + delta * (n_r / total)
        m2 = m2 + var_r * n_r + delta * delta * (n * n_r / total)
        n = total
    return int(n), mean, m2 / n


class SyncBatchNormRank(torch.autograd.Function):
    """One rank's SyncBatchNorm with batch statistics: returns (y, group mean, group biased var, n)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        import torch.distributed as dist

        axes, shape = _geometry(x)
        acc = accumulation_dtype(x.dtype)
        xa = x.to(acc)
        n_r, mean_r, var_r = local_statistics(xa)
        stats = torch.stack([torch.full_like(mean_r, float(n_r)), mean_r, var_r])
        gathered = [torch.empty_like(stats) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, stats)
        count, mean, var = combine(gathered)
        inv_std = 1.0 / torch.sqrt(var + eps)
        xhat = (xa - mean.reshape(shape)) * inv_std.reshape(shape)
        y = xhat
        if weight is not None:
            y = y * weight.to(acc).reshape(shape)
        if bias is not None:
            y = y + bias.to(acc).reshape(shape)
        ctx.save_for_backward(xhat, inv_std, weight)
        ctx.count, ctx.x_dtype, ctx.has_bias = count, x.dtype, bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, dy, _mean, _var, _count):
        import torch.distributed as dist

        xhat, inv_std, weight = ctx.saved_tensors
        axes, shape = _geometry(xhat)
        dya = dy.to(xhat.dtype)
        local = torch.stack([dya.sum(dim=axes), (dya * xhat).sum(dim=axes)])
        sums = local.clone()
        dist.all_reduce(sums)  # sum over ranks of sum dy and sum dy xhat
        sum_dy, sum_dy_xhat = sums[0], sums[1]
        scale = inv_std if weight is None else weight.to(xhat.dtype) * inv_std
        n = ctx.count
        dx = scale.reshape(shape) * (dya - (sum_dy / n).reshape(shape) - xhat * (sum_dy_xhat / n).reshape(shape))
        d_weight = None if weight is None else local[1].to(weight.dtype)  # this rank's share
        d_bias = local[0].to(ctx.bias_dtype) if ctx.has_bias else None
        return dx.to(ctx.x_dtype), d_weight, d_bias, None


def _running_update(rm, rv, mean, var, count, params):
    """The new running statistics (`normspec.impls.running`), in the buffers' dtype."""
    return running_update(rm, rv, mean, var, count, params, lambda new, like: new.to(like.dtype))


def rank_forward(x, weight, bias, running_mean, running_var, params):
    """This rank's (y, new running mean, new running var); collectives when batch stats are used."""
    training = params.get("training", True)
    has_running = running_mean is not None and running_var is not None
    eps = params.get("eps", 1e-5)
    if not training and has_running:  # inference: local, as nn.SyncBatchNorm in eval
        return F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps), None, None
    y, mean, var, count = SyncBatchNormRank.apply(x, weight, bias, eps)
    if training and has_running:
        return (y, *_running_update(running_mean, running_var, mean, var, count, params))
    return y, None, None


def rank_task(payload):
    """Worker entry point: forward (payload["dy"] is None) or forward + distributed backward."""
    p = payload
    if p["dy"] is None:
        with torch.no_grad():
            y, rm, rv = rank_forward(p["x"], p["weight"], p["bias"], p["running_mean"], p["running_var"], p["params"])
        return {"y": y, "running_mean": rm, "running_var": rv}
    leaves = {r: (None if p[r] is None else p[r].detach().requires_grad_(True)) for r in ("x", "weight", "bias")}
    with torch.enable_grad():
        y, _, _ = rank_forward(leaves["x"], leaves["weight"], leaves["bias"], p["running_mean"], p["running_var"],
                               p["params"])
        roles = [r for r in p["wrt"] if leaves.get(r) is not None]
        grads = torch.autograd.grad(y, [leaves[r] for r in roles], grad_outputs=p["dy"], allow_unused=True)
    return {r: (torch.zeros_like(leaves[r]) if g is None else g) for r, g in zip(roles, grads)}


# ---------------------------------------------------------------- in the caller

def _shards(t, params):
    from normspec.spec.sync_batch_norm import split_batch

    return split_batch(t, params)


def _check(x, inputs, params):
    batch = params.get("training", True) or inputs.get("running_mean") is None or inputs.get("running_var") is None
    if params.get("training", True) and batch and x.numel() // max(x.shape[1], 1) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)} over rank_sizes {tuple(params.get('rank_sizes', ()))}")


def _dispatch(inputs, params, dy=None, wrt=(), task=TASK):
    from normspec.impls.torch_distributed import run_on_ranks

    x = inputs["x"]
    if x.ndim < 2 or x.ndim > 5:
        raise ValueError("sync_batch_norm expects input of shape (N, C, *S) with 0-3 spatial dims, "
                         f"got {tuple(x.shape)}")
    shards = _shards(x, params)
    _check(x, inputs, params)
    dys = [None] * len(shards) if dy is None else _shards(dy, params)

    def plain(t):
        return None if t is None else t.detach()

    shared = {r: plain(inputs.get(r)) for r in ("weight", "bias", "running_mean", "running_var")}
    payloads = [{"x": s.detach(), **shared, "params": dict(params), "dy": plain(d), "wrt": tuple(wrt)}
                for s, d in zip(shards, dys)]
    return run_on_ranks(task, payloads)


def _sum_over_ranks(local_grads):
    """Data-parallel training's gradient all-reduce of a parameter's per-rank gradients, in rank order."""
    acc = accumulation_dtype(local_grads[0].dtype)
    total = local_grads[0].to(acc)
    for g in local_grads[1:]:
        total = total + g.to(acc)
    return total.to(local_grads[0].dtype)


class DistributedSyncBatchNorm(torch.autograd.Function):
    """Caller-side node: forward and backward are each one job on the rank pool."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, params, state, task):
        inputs = {"x": x, "weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var}
        replies = _dispatch(inputs, params, task=task)
        ctx.save_for_backward(x, weight, bias, running_mean, running_var)
        ctx.params, ctx.task = params, task
        state["running_mean"], state["running_var"] = replies[0]["running_mean"], replies[0]["running_var"]
        return torch.cat([r["y"] for r in replies])

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, rm, rv = ctx.saved_tensors
        inputs = {"x": x, "weight": weight, "bias": bias, "running_mean": rm, "running_var": rv}
        wrt = tuple(r for r, need in zip(("x", "weight", "bias"), ctx.needs_input_grad[:3]) if need)
        replies = _dispatch(inputs, ctx.params, dy, wrt, ctx.task)
        dx = torch.cat([r["x"] for r in replies]) if "x" in wrt else None
        dw = _sum_over_ranks([r["weight"] for r in replies]) if "weight" in wrt else None
        db = _sum_over_ranks([r["bias"] for r in replies]) if "bias" in wrt else None
        return dx, dw, db, None, None, None, None, None


def distributed_forward(task: str = TASK):
    """A kernel forward that runs `task` ("module:function", called with one rank's payload) on the ranks."""

    def forward(inputs, params):
        state: dict = {}
        y = DistributedSyncBatchNorm.apply(inputs["x"], inputs.get("weight"), inputs.get("bias"),
                                           inputs.get("running_mean"), inputs.get("running_var"), dict(params),
                                           state, task)
        out = {"y": y}
        if params.get("training", True) and state.get("running_mean") is not None:
            out["running_mean"], out["running_var"] = state["running_mean"], state["running_var"]
        return out

    return forward


forward = distributed_forward()
torch_kernel("sync_batch_norm")(forward)


def probe_nn_sync_batch_norm(payload):
    """Worker task: what `torch.nn.SyncBatchNorm` does on CPU tensors inside an initialized gloo group
    (training mode). Returns ("synchronized", y) if it ran, else ("raised", "Type: message")."""
    module = torch.nn.SyncBatchNorm(payload.shape[1])
    module.train()
    try:
        y = module(payload)
    except Exception as exc:
        return "raised", f"{type(exc).__name__}: {exc}"
    return "synchronized", y.detach()
