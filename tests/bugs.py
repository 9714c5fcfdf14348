"""Seeded bugs: realistic wrong implementations of BatchNorm and LayerNorm, each a backend.

Each bug is modeled on a mistake reported in public trackers or made in real kernels (see the
catalogue's list). `buggy_backend(norm, bug)` returns a NumPy backend whose kernel for `norm`
has that one bug; everything else is the reference NumPy implementation. The harness's tests
hand these to the properties and require a counterexample.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from normspec.impls.numpy_backend import NumpyBackend, accumulation_dtype
from normspec.impls.numpy_kernels import batch_norm as bn_ref
from normspec.impls.numpy_kernels import layer_norm as ln_ref


def _geometry(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(y, inputs, shape):
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].astype(y.dtype).reshape(shape)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].astype(y.dtype).reshape(shape)
    return y


def _bn_variant(*, unbiased_normalize=False, eps_outside=False, one_pass=False, axes_fn=None,
                eval_batch_stats=False, momentum_flipped=False, biased_running=False, cumulative_as_fixed=False,
                folded_shift=False, mutate_input=False, no_single_value_check=False, noise=False,
                ignore_strides=False, first_two_samples=False, half_accumulate=False, half_var=False):
    """A BatchNorm forward with the named mistakes (all False: a correct implementation)."""

    def forward(inputs, params):
        x = inputs["x"]
        if ignore_strides:  # reads the buffer in memory order as if it were contiguous
            x = np.ascontiguousarray(x).reshape(-1).reshape(x.shape) if x.flags.c_contiguous else \
                np.asarray(x).ravel(order="K").reshape(x.shape)
        axes, shape = _geometry(x)
        if axes_fn is not None:
            axes = axes_fn(x)
        acc = x.dtype if half_accumulate else accumulation_dtype(x.dtype)
        eps = params.get("eps", 1e-5)
        training = params.get("training", True)
        has_running = inputs.get("running_mean") is not None
        batch = training or not has_running or eval_batch_stats
        if training and batch and x.size // x.shape[1] <= 1 and not no_single_value_check:
            raise ValueError("Expected more than 1 value per channel when training")
        xa = x.astype(acc)
        out = {}
        if batch:
            stats_x = xa[:2] if first_two_samples and xa.shape[0] > 2 else xa
            first = stats_x[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]
            mean = first + (stats_x - first).mean(axis=axes, keepdims=True)  # exact for constant sets
            if one_pass:
                var = (stats_x * stats_x).mean(axis=axes, keepdims=True) - mean * mean
            else:
                var = ((stats_x - mean) ** 2).mean(axis=axes, keepdims=True)
            count = stats_x.size // stats_x.shape[1]
            if half_var:  # the variance stored in the input dtype: inf in float16 once std > 256
                with np.errstate(over="ignore"):
                    var = var.astype(x.dtype).astype(acc)
            if unbiased_normalize and count > 1:
                var = var * count / (count - 1)
        else:
            mean = inputs["running_mean"].astype(acc).reshape(shape)
            var = inputs["running_var"].astype(acc).reshape(shape)
        if mutate_input:
            inputs["x"] -= mean.astype(x.dtype)  # "saves memory" by centring the caller's tensor
            centred = inputs["x"].astype(acc)
        else:
            centred = xa - mean
        denom = (np.sqrt(var) + eps) if eps_outside else np.sqrt(var + eps)
        if folded_shift:  # y = x * scale + (beta - mean * scale), the layout of many fused kernels
            gamma = inputs["weight"].astype(acc).reshape(shape) if inputs.get("weight") is not None else 1.0
            beta = inputs["bias"].astype(acc).reshape(shape) if inputs.get("bias") is not None else 0.0
            scale = gamma / denom
            out["y"] = (xa * scale + (beta - mean * scale)).astype(x.dtype)
        else:
            y = centred / denom
            if noise:
                y = y + np.random.default_rng().standard_normal(y.shape) * 1e-6 * np.abs(y).max()
            out["y"] = _affine(y, inputs, shape).astype(x.dtype)
        if training and has_running:
            momentum = params.get("momentum", 0.1)
            tracked = params.get("num_batches_tracked", 0) + 1
            if momentum is None:
                factor = 0.1 if cumulative_as_fixed else 1.0 / tracked
            elif params.get("momentum_style", "new") == "decay":
                factor = 1.0 - momentum
            else:
                factor = momentum
            if momentum_flipped and momentum is not None:
                factor = 1.0 - factor
            if params.get("moving_average", "ema") == "debiased" and momentum is not None:  # Caffe / TF zero_debias
                factor = 1.0 / tracked if factor == 0 else factor / -np.expm1(tracked * np.log1p(-min(factor, 1.0)))
            count = x.size // x.shape[1]
            bvar = var.reshape(-1)
            if unbiased_normalize:
                bvar = bvar * (count - 1) / count
            if params.get("running_var_style", "unbiased") == "unbiased" and not biased_running:
                bvar = bvar * count / (count - 1)
            rm, rv = inputs["running_mean"], inputs["running_var"]
            out["running_mean"] = ((1 - factor) * rm.astype(acc) + factor * mean.reshape(-1)).astype(rm.dtype)
            out["running_var"] = ((1 - factor) * rv.astype(acc) + factor * bvar).astype(rv.dtype)
        return out

    return forward


def _bn_backward_detached(inputs, params, dy):
    """Backward that treats the batch mean and variance as constants ("samples are not related")."""
    x = inputs["x"]
    axes, shape = _geometry(x)
    xhat, _, _, inv_std, _ = bn_ref._normalized(inputs, params)
    dy = dy.astype(xhat.dtype)
    g = dy if inputs.get("weight") is None else dy * inputs["weight"].astype(xhat.dtype).reshape(shape)
    grads = {"x": (g * inv_std).astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * xhat).sum(axis=axes).astype(x.dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=axes).astype(x.dtype)
    return grads


def _storage_start(x):
    """x read from the start of its buffer: a view one element in is shifted (ignores the offset)."""
    base = x
    while isinstance(base.base, np.ndarray):
        base = base.base
    start = x.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if start and x.flags.c_contiguous and base.flags.c_contiguous:
        return base.reshape(-1)[:x.size].reshape(x.shape)
    return x


def _ln_variant(*, last_dim_only=False, over_batch=False, eps_outside=False, one_pass=False,
                folded_shift=False, bias_twice=False, tail_block=None, one_pass_above=None,
                ignore_offset=False, count_in_input_dtype=False):
    def forward(inputs, params):
        x = _storage_start(inputs["x"]) if ignore_offset else inputs["x"]
        axes = _ln_axes(x, params)
        if last_dim_only:
            axes = (x.ndim - 1,)
        if over_batch:
            axes = tuple(range(x.ndim))
        acc = accumulation_dtype(x.dtype)
        xa = x.astype(acc)
        eps = params.get("eps", 1e-5)
        first = xa[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]
        mean = first + (xa - first).mean(axis=axes, keepdims=True)  # exact for constant sets
        n = int(np.prod([x.shape[a] for a in axes]))
        long_row = one_pass_above is not None and n > one_pass_above
        if one_pass or long_row:
            var = (xa * xa).mean(axis=axes, keepdims=True) - mean**2
        else:
            var = ((xa - mean) ** 2).mean(axis=axes, keepdims=True)
        if count_in_input_dtype:  # 1/n from the count held in x's dtype: float16 holds 2049 as 2048, 65505+ as inf
            inv_n = 1.0 / float(np.asarray(n, dtype=x.dtype))
            mean = xa.sum(axis=axes, keepdims=True) * inv_n
            var = ((xa - mean) ** 2).sum(axis=axes, keepdims=True) * inv_n
        if tail_block is not None and len(axes) == 1 and n > tail_block and n % tail_block:
            # blocks of `tail_block` values; the masked tail of the last block is dropped from the sums
            kept = xa[..., : n - n % tail_block]
            mean = kept.sum(axis=-1, keepdims=True) / n
            var = ((kept - mean) ** 2).sum(axis=-1, keepdims=True) / n
        denom = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
        pshape = tuple(x.shape[a] if a in _ln_axes(x, params) else 1 for a in range(x.ndim))
        gamma = inputs["weight"].astype(acc).reshape(pshape) if inputs.get("weight") is not None else 1.0
        beta = inputs["bias"].astype(acc).reshape(pshape) * (2 if bias_twice else 1) \
            if inputs.get("bias") is not None else 0.0
        if folded_shift:  # y = x * scale + (beta - mean * scale)
            scale = gamma / denom
            out = {"y": (xa * scale + (beta - mean * scale)).astype(x.dtype)}
        else:
            out = {"y": ((xa - mean) / denom * gamma + beta).astype(x.dtype)}
        if params.get("saved_statistics"):  # torch.native_layer_norm's mean and rstd
            out["mean"], out["rstd"] = mean.astype(x.dtype), (1.0 / denom).astype(x.dtype)
        return out

    return forward


def _ln_axes(x, params):
    """The normalized axes: the trailing normalized_shape, or Keras' `axes`."""
    if params.get("axes") is not None:
        return tuple(sorted(int(a) % x.ndim for a in params["axes"]))
    k = len(tuple(params["normalized_shape"]))
    return tuple(range(x.ndim - k, x.ndim))


def _ln_backward_detached(inputs, params, dy):
    x = inputs["x"]
    axes = _ln_axes(x, params)
    from normspec.impls.numpy_kernels.moments import normalize

    xhat, _, _, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    g = dy.astype(xhat.dtype)
    if inputs.get("weight") is not None:
        pshape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
        g = g * inputs["weight"].astype(xhat.dtype).reshape(pshape)
    grads = ln_ref.backward(inputs, params, dy)
    grads["x"] = (g * inv_std).astype(x.dtype)
    return grads


def _as_laid_out_like(dy, x):
    """dy's memory read in x's memory order: dy itself when the two share a layout, scrambled
    otherwise (a backward that indexes dy with x's strides)."""
    order = tuple(sorted(range(x.ndim), key=lambda a: -x.strides[a]))  # x's axes, outermost first
    own = tuple(sorted(range(dy.ndim), key=lambda a: -dy.strides[a]))
    memory = np.transpose(dy, own).reshape(-1)  # dy's elements in its own memory order
    return memory.reshape(tuple(x.shape[a] for a in order)).transpose(np.argsort(order))


def _bn_backward_dy_layout_of_x(inputs, params, dy):
    return bn_ref.backward(inputs, params, _as_laid_out_like(dy, inputs["x"]))


def _bn_empty_batch_nan(inputs, params):
    """An empty batch updates the running statistics with the mean of no values (NaN), as a kernel
    that divides sums by the count does; other calls are the reference's."""
    x = inputs["x"]
    if x.size == 0:
        out = {"y": x.copy()}
        if params.get("training", True) and inputs.get("running_mean") is not None:
            out["running_mean"] = np.full_like(inputs["running_mean"], np.nan)
            out["running_var"] = np.full_like(inputs["running_var"], np.nan)
        return out
    return bn_ref.forward(inputs, params)


# Bugs in how a call on an empty input is handled: the backend hands empty inputs to the kernel
# instead of answering them itself (NumpyBackend.forward).
KERNEL_SEES_EMPTY = {"nan_running_stats_on_empty_batch"}


def _reusing_outputs(forward):
    """The forward, but each result is copied into one cached buffer per output, shape and dtype and
    that buffer is returned (a workspace reused across calls, as kernels with preallocated outputs
    do): a second call overwrites the caller's first result."""
    workspace: dict = {}

    def reused(inputs, params):
        out = forward(inputs, params)
        for name, value in out.items():
            buffer = workspace.setdefault((name, value.shape, value.dtype), np.empty_like(value))
            np.copyto(buffer, value)
            out[name] = buffer
        return out

    return reused


BUGS = {
    "batch_norm": {
        "unbiased_variance_in_normalization": dict(forward=_bn_variant(unbiased_normalize=True)),
        "eps_outside_sqrt": dict(forward=_bn_variant(eps_outside=True)),
        "one_pass_variance": dict(forward=_bn_variant(one_pass=True)),
        "statistics_per_sample": dict(forward=_bn_variant(axes_fn=lambda x: tuple(range(1, x.ndim)))),
        "eval_uses_batch_stats": dict(forward=_bn_variant(eval_batch_stats=True)),
        "momentum_flipped": dict(forward=_bn_variant(momentum_flipped=True)),
        "running_var_biased": dict(forward=_bn_variant(biased_running=True)),
        "momentum_none_as_fixed": dict(forward=_bn_variant(cumulative_as_fixed=True)),
        "folded_shift": dict(forward=_bn_variant(folded_shift=True)),
        "input_modified_in_place": dict(forward=_bn_variant(mutate_input=True)),
        "no_error_on_single_value": dict(forward=_bn_variant(no_single_value_check=True)),
        "nondeterministic": dict(forward=_bn_variant(noise=True)),
        "ignores_strides": dict(forward=_bn_variant(ignore_strides=True)),
        "stats_from_first_samples": dict(forward=_bn_variant(first_two_samples=True)),
        "statistics_detached_in_backward": dict(backward=_bn_backward_detached),
        "backward_reads_dy_in_x_layout": dict(backward=_bn_backward_dy_layout_of_x),
        "variance_in_half_precision": dict(forward=_bn_variant(half_var=True)),
        "nan_running_stats_on_empty_batch": dict(forward=_bn_empty_batch_nan),
        "output_buffer_reused": dict(forward=_reusing_outputs(bn_ref.forward)),
    },
    "layer_norm": {
        "last_dim_only": dict(forward=_ln_variant(last_dim_only=True)),
        "statistics_over_batch": dict(forward=_ln_variant(over_batch=True)),
        "eps_outside_sqrt": dict(forward=_ln_variant(eps_outside=True)),
        "one_pass_variance": dict(forward=_ln_variant(one_pass=True)),
        "folded_shift": dict(forward=_ln_variant(folded_shift=True)),
        "bias_added_twice": dict(forward=_ln_variant(bias_twice=True)),
        "statistics_detached_in_backward": dict(backward=_ln_backward_detached),
        "tail_block_dropped": dict(forward=_ln_variant(tail_block=1024)),
        "one_pass_variance_above_4096": dict(forward=_ln_variant(one_pass_above=4096)),
        "count_in_input_dtype": dict(forward=_ln_variant(count_in_input_dtype=True)),
        "ignores_storage_offset": dict(forward=_ln_variant(ignore_offset=True)),
        "output_buffer_reused": dict(forward=_reusing_outputs(ln_ref.forward)),
    },
}


def buggy_backend(norm: str, bug: str) -> NumpyBackend:
    """A NumPy backend whose `norm` kernel carries `bug` (forward and/or backward replaced)."""
    backend = NumpyBackend()
    reference = backend.kernels[norm]
    kernel = replace(reference, **BUGS[norm][bug])
    backend.kernels = {**backend.kernels, norm: kernel}
    backend.name = f"numpy+{bug}"
    if bug in KERNEL_SEES_EMPTY:
        backend.forward = lambda name, inputs, params: backend.kernels[name].forward(inputs, params)
    return backend


def correct_variant_backend(norm: str) -> NumpyBackend:
    """The bug factories with every bug off: shows the factories themselves are right."""
    backend = NumpyBackend()
    variant = _bn_variant() if norm == "batch_norm" else _ln_variant()
    backend.kernels = {**backend.kernels, norm: replace(backend.kernels[norm], forward=variant)}
    backend.name = "numpy+no_bug"
    return backend


def reused_output_backend(norm: str = "layer_norm") -> NumpyBackend:
    """`buggy_backend(norm, "output_buffer_reused")`: one cached output buffer per shape, returned."""
    return buggy_backend(norm, "output_buffer_reused")
