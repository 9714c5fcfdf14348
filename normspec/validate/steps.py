"""Properties only a candidate can be put through: real use of one module instance over time.

They are `normspec.properties.core.Property` objects run by the same engine (`run_property`),
kept out of the global PROPERTIES table because the built-in backends have no module instance
to step: they need the candidate's `steps` capability, and are "not applicable" without it.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.properties.agreement import compare_outputs
from normspec.properties.core import Context, Property, Run, traits
from normspec.validate.candidate import round_to


def training_steps_then_eval(ctx: Context) -> None:
    """One module instance, as a training loop uses it: parameters and buffers loaded from random
    values, 2-4 training steps on different batches, then eval. Every step's output and updated
    buffers equal the spec evaluated on that step's batch and the buffers the module held before
    it (its own num_batches_tracked counting the steps, momentum=None included), and the final
    eval output is the spec's eval output on the buffers after training. Catches state that is
    not carried between calls, a counter that is not incremented, eval that still uses batch stats."""
    case = ctx.case(training=True, track_running_stats=True, conventions=False)
    # float64/float32: carrying state is what is checked here; half precision is covered call by call
    dtype, layout = ctx.dtype("float64", "float32"), ctx.layout()
    ctx.supported(case, dtype, layout)
    n_steps = ctx.draw(st.integers(2, 4), "steps")
    rng = np.random.default_rng(ctx.seed("batches_seed"))
    xs = [round_to(case.x * rng.uniform(0.5, 2.0) + rng.normal(0.0, 3.0), dtype) for _ in range(n_steps)]
    eval_x = round_to(case.x * rng.uniform(0.5, 2.0) + rng.normal(0.0, 1.0), dtype)
    case = ctx.rounded(case, dtype)
    b = ctx.backend
    natives = ctx.natives(case, dtype, layout)
    records = b.steps(natives, case.params, xs, eval_x)
    state = {r: case.get(r) for r in ("running_mean", "running_var")}
    tracked = case.params.get("num_batches_tracked", 0)
    for t, (x, got) in enumerate(zip(xs + [eval_x], records)):
        training = t < n_steps
        step = case.with_arrays(x=x, **state).with_params(training=training, num_batches_tracked=tracked + t)
        run = Run(step, dtype, layout, {k: np.asarray(v) for k, v in got.items()})
        ref, _ = ctx.reference(run)
        label = f"step {t + 1} of {n_steps} (training)" if training else f"eval after {n_steps} training steps"
        compare_outputs(_WhereContext(f"{b.name} at {label},"), run, ref, ctx.bounds(run, ref, {}))
        if training:
            state = {r: run.outputs[r] for r in ("running_mean", "running_var") if r in run.outputs}


class _WhereContext:
    """Stands in for a Context in `compare_outputs`, whose messages end with `where(ctx, run)`."""

    def __init__(self, name: str):
        self.backend = type("NamedBackend", (), {"name": name})()


VALIDATE_PROPERTIES: dict[str, Property] = {
    "training_steps_then_eval": Property(
        "training_steps_then_eval", training_steps_then_eval, traits("running_stats"),
        (training_steps_then_eval.__doc__ or "").strip(), "inference"),
}
