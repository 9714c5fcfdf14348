"""Normalization by reparametrization in NumPy: the whitened layer (Desjardins et al. 2015), the
mean-normalized layer (Wiesler et al. 2014) and Raiko et al.'s transformed tanh units (2012), with
their own closed-form backwards. Computed in the input's dtype (float32 for float16); the output y
comes from the parameters the call received, the refreshed parameters are returned beside it."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def _due(params) -> bool:
    interval, step = params.get("interval", 1), params.get("step", 0)
    integers = (int, np.integer)
    if not isinstance(interval, integers) or interval < 1 or not isinstance(step, integers) or step < 0:
        raise ValueError(f"interval must be a positive integer and step a non-negative one, got {interval!r}, {step!r}")
    return bool(params.get("training", True)) and step % interval == 0


def _cast(inputs, roles):
    acc = accumulation_dtype(inputs["x"].dtype)
    x = inputs["x"]
    if x.ndim != 2:
        raise ValueError(f"expected x of shape (N, in_features), got {x.shape}")
    return acc, [np.asarray(inputs[r], dtype=acc) for r in roles]


def _stored(out: dict, dtype) -> dict:
    return {k: np.asarray(v).astype(dtype) for k, v in out.items()}


# ---------------------------------------------------------------- whitened layer

def _whiten(xa, eps, method):
    """(c', U', U'^-1) from the samples xa: eigendecomposition of the biased covariance."""
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    mean = xa.sum(axis=0) / xa.shape[0]
    centred = xa - mean
    cov = np.dot(centred.T, centred) / xa.shape[0]
    lam, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    lam = np.clip(lam, 0, None) + eps
    if method == "zca":
        root = np.sqrt(lam)
        return mean, np.dot(vecs / root, vecs.T), np.dot(vecs * root, vecs.T)
    if method != "pca":
        raise ValueError(f"method must be 'pca' or 'zca', got {method!r}")
    order = np.argsort(-lam, kind="stable")
    lam, vecs = lam[order], vecs[:, order]
    pivot = np.argmax(np.abs(vecs), axis=0)
    sign = np.where(vecs[pivot, np.arange(vecs.shape[1])] < 0, -1.0, 1.0).astype(vecs.dtype)
    vecs = vecs * sign
    root = np.sqrt(lam)
    return mean, vecs.T / root[:, None], vecs * root


def whitened_forward(inputs, params):
    dtype = inputs["x"].dtype
    acc, (x, v, d, c, u) = _cast(inputs, ("x", "weight", "bias", "running_mean", "whitening"))
    if u.shape != (x.shape[1], x.shape[1]) or v.shape[1] != x.shape[1]:
        raise ValueError(f"whitened_linear: whitening {u.shape} and weight {v.shape} do not fit x {x.shape}")
    out = {"y": np.dot(np.dot(x - c, u.T), v.T) + d}
    if _due(params):
        w = np.dot(v, u)
        mean, u_new, u_inv = _whiten(x, acc.type(params.get("eps", 1e-5)), params.get("method", "pca"))
        out.update(running_mean=mean, whitening=u_new, new_weight=np.dot(w, u_inv), new_bias=d + np.dot(w, mean - c))
    return _stored(out, dtype)


def whitened_backward(inputs, params, dy):
    dtype = inputs["x"].dtype
    _, (x, v, d, c, u) = _cast(inputs, ("x", "weight", "bias", "running_mean", "whitening"))
    g = np.asarray(dy, dtype=x.dtype)
    return _stored({"x": np.dot(np.dot(g, v), u), "weight": np.dot(g.T, np.dot(x - c, u.T)), "bias": g.sum(axis=0)},
                   dtype)


# ---------------------------------------------------------------- mean-normalized layer

def mean_forward(inputs, params):
    dtype = inputs["x"].dtype
    _, (x, w, b, mu) = _cast(inputs, ("x", "weight", "bias", "running_mean"))
    out = {"y": np.dot(x - mu, w.T) + b}
    if _due(params):
        m = params.get("momentum", 1.0)
        if not 0 < m <= 1:
            raise ValueError(f"momentum must lie in (0, 1], got {m!r}")
        mu_new = mu + m * (x.sum(axis=0) / x.shape[0] - mu)
        out.update(running_mean=mu_new, new_bias=b + np.dot(w, mu_new - mu))
    return _stored(out, dtype)


def mean_backward(inputs, params, dy):
    dtype = inputs["x"].dtype
    _, (x, w, b, mu) = _cast(inputs, ("x", "weight", "bias", "running_mean"))
    g = np.asarray(dy, dtype=x.dtype)
    return _stored({"x": np.dot(g, w), "weight": np.dot(g.T, x - mu), "bias": g.sum(axis=0)}, dtype)


# ---------------------------------------------------------------- Raiko et al.

_RAIKO = ("x", "weight", "bias", "out_weight", "shortcut", "out_bias", "alpha", "beta")


def raiko_forward(inputs, params):
    dtype = inputs["x"].dtype
    _, (x, bw, b, aw, cw, e, al, be) = _cast(inputs, _RAIKO)
    pre = np.dot(x, bw.T) + b
    th = np.tanh(pre)
    out = {"y": np.dot(th - al * pre - be, aw.T) + np.dot(x, cw.T) + e}
    if _due(params):
        n = x.shape[0]
        al_new = (1 - th * th).sum(axis=0) / n
        be_new = th.sum(axis=0) / n - al_new * (pre.sum(axis=0) / n)
        d_al, d_be = al_new - al, be_new - be
        out.update(alpha=al_new, beta=be_new, new_shortcut=cw + np.dot(aw * d_al, bw),
                   new_out_bias=e + np.dot(aw, d_al * b + d_be))
    return _stored(out, dtype)


def raiko_backward(inputs, params, dy):
    dtype = inputs["x"].dtype
    _, (x, bw, b, aw, cw, e, al, be) = _cast(inputs, _RAIKO)
    g = np.asarray(dy, dtype=x.dtype)
    pre = np.dot(x, bw.T) + b
    th = np.tanh(pre)
    gh = np.dot(g, aw) * (1 - th * th - al)
    return _stored({"x": np.dot(gh, bw) + np.dot(g, cw), "weight": np.dot(gh.T, x), "bias": gh.sum(axis=0),
                    "out_weight": np.dot(g.T, th - al * pre - be), "shortcut": np.dot(g.T, x),
                    "out_bias": g.sum(axis=0)}, dtype)


numpy_kernel("whitened_linear", backward=whitened_backward)(whitened_forward)
numpy_kernel("mean_normalized_linear", backward=mean_backward)(mean_forward)
numpy_kernel("raiko_tanh", backward=raiko_backward)(raiko_forward)
