"""Norms whose batch is split over ranks that synchronize statistics (SyncBatchNorm).

The catalogue's identity: a rank-synchronized norm over any split of the global batch equals the
unsplit norm over the concatenated batch, forward, gradients and running statistics, uneven
per-rank sizes included. Checked two ways: against the unsplit norm's own spec (no sync spec in
the loop), and on the backend alone, as independence of the split.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.properties.agreement import where
from normspec.properties.core import OPTIONAL, Context, PropertyFailure, assert_close, prop, traits
from normspec.registry import get_norm

# The unsplit norm each rank-synchronized norm must equal on the concatenated batch.
UNSPLIT = {"sync_batch_norm": "batch_norm"}


def unsplit_case(case: Case) -> Case:
    """The same call as one process: the concatenated batch, without the per-rank split."""
    params = {k: v for k, v in case.params.items() if k != "rank_sizes"}
    return Case(UNSPLIT[case.norm], case.arrays, params)


def _applies(record) -> bool:
    return record.has("rank_synchronized") and record.name in UNSPLIT


_applies.requirement = "the trait rank_synchronized and an unsplit counterpart norm to compare with"


@prop("synchronization", applies=_applies)
def sync_equals_unsplit_norm(ctx: Context) -> None:
    """Output, running statistics and input/weight/bias gradients equal the unsplit norm's spec
    (BatchNorm for SyncBatchNorm) on the concatenated batch, within the tolerance model for the
    combined statistics: the ranks' (n_r, mu_r, s2_r) combine exactly into the global batch's
    statistics, and the all-reduced backward sums are the global ones. Averaging rank means
    without weighting by n_r, or a running variance from one rank's shard, fails on uneven splits."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=OPTIONAL)
    unsplit = get_norm(UNSPLIT[case.norm])
    reference_case = unsplit_case(run.case)
    ref = unsplit.reference(reference_case)
    ref_grads = unsplit.reference_grad(reference_case, run.dy) if run.dy is not None else {}
    bounds = ctx.bounds(run, ref, ref_grads)
    at = where(ctx, run) + f" vs {unsplit.name} spec on the concatenated batch"
    for name, expected in ref.items():
        if name not in run.outputs:
            raise PropertyFailure(f"{name} was not returned, but should be the updated {name} [{at}]")
        assert_close(run.outputs[name], expected, bounds[name], name, at)
    for role, expected in ref_grads.items():
        if role not in run.grads:
            raise PropertyFailure(f"d{role} was not returned, but should be the gradient of {role} [{at}]")
        assert_close(run.grads[role], expected, bounds[role], f"d{role}", at)


@st.composite
def other_split(draw, n: int, current: tuple[int, ...]):
    """Another split of n samples over 2..min(n, 4) ranks, with a rank of size 1 when n >= 3."""
    k = draw(st.integers(2, min(n, 4)), label="other_ranks")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="split_seed"))
    for _ in range(8):
        cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False))
        if n >= 3 and 1 not in np.diff(np.concatenate([[0], cuts, [n]])):
            cuts[0] = 1  # rank 0 holds a single sample
            cuts = np.unique(cuts)
        sizes = tuple(int(s) for s in np.diff(np.concatenate([[0], cuts, [n]])))
        if sizes != tuple(current):
            return sizes
    return tuple(current)


@prop("synchronization", applies=traits("rank_synchronized"))
def rank_split_invariance(ctx: Context) -> None:
    """The same global batch split over ranks in two different ways (other rank counts, uneven
    sizes, a rank holding one sample) gives the same outputs, running statistics and gradients,
    within twice the model's bound: where the batch is cut is invisible. Checked on the backend
    alone, with no spec in the loop."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    n = case.x.shape[0]
    ctx.assume(n >= 3, "needs a batch of at least three samples to re-split")
    sizes = ctx.draw(other_split(n, tuple(case.params["rank_sizes"])), "other_rank_sizes")
    ctx.assume(sizes != tuple(case.params["rank_sizes"]), "the drawn split equals the case's own")
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(case.x.shape)
    first = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=dy)
    second = ctx.run(case.with_params(rank_sizes=sizes), dtype, layout, grads=OPTIONAL, dy=dy)
    ref, ref_grads = ctx.reference(first)
    bounds = ctx.bounds(first, ref, ref_grads)
    bounds_other = ctx.bounds(second, ref, ref_grads)
    at = where(ctx, second) + f" vs rank_sizes={tuple(case.params['rank_sizes'])}"
    for name, value in first.outputs.items():
        assert_close(second.outputs[name], value, bounds[name] + bounds_other[name], name, at)
    for role, g in first.grads.items():
        assert_close(second.grads[role], g, bounds[role] + bounds_other[role], f"d{role}", at)
