"""Normalization by reparametrization: a layer is rewritten around statistics of its input (or of its
units), the statistics are refreshed every T steps, and the parameters are updated at each refresh so
that the function the layer computes is unchanged. Three members, fully connected layers on x (N, in):

- Whitened layer, Natural Neural Networks (Desjardins, Simonyan, Pascanu & Kavukcuoglu, NIPS 2015,
  sec. 3 and Algorithm 1, PRONG): h = V U (x - c) + d with c the mean of the layer's input and U a
  whitening matrix of its covariance Sigma (biased, over the N samples the refresh is fitted on):
  PCA: U = (Lambda + eps I)^(-1/2) E^T, ZCA: U = E (Lambda + eps I)^(-1/2) E^T (Sigma = E Lambda E^T).
  At a refresh, with W = V U and b = d - W c the layer's effective parameters, the new statistics
  c', U' are estimated and V' = W U'^(-1), d' = b + W c' = d + W (c' - c): the function is unchanged.
  Right after a refresh U'(x - c') has zero mean and covariance U' Sigma U'^T = I - eps U' U'^T.
  Unlike Decorrelated BatchNorm (Huang et al. 2018, spec/decorrelated_batch_norm.py), which whitens
  each batch inside the forward (the output depends on the batch), this layer is batch-independent
  between refreshes: U, c are parameters held fixed and only the refresh looks at data.
- Mean-normalized layer (Wiesler, Richard, Schlueter & Ney, ICASSP 2014, "Mean-normalized stochastic
  gradient for large-scale deep learning", sec. 2): h = W (x - mu) + b, mu a running mean of the
  input, mu' = (1 - m) mu + m mean(x), and the bias compensates: b' = b + W (mu' - mu). It is the
  whitened layer with U = I (and the refresh's U' = I).
- Raiko, Valpola & LeCun (AISTATS 2012, "Deep learning made easier by linear transformations in
  perceptrons", sec. 2): y = A f(B x + b) + C x + e with each hidden unit's nonlinearity
  f_i(a) = tanh(a) - alpha_i a - beta_i. At a refresh alpha_i = mean(tanh'(a_i)), beta_i =
  mean(tanh(a_i) - alpha_i a_i) over the data, so each unit's output and slope have zero mean there;
  the shortcut and the output bias compensate: C' = C + A diag(alpha' - alpha) B,
  e' = e + A ((alpha' - alpha) o b + beta' - beta). (The paper writes f = tanh(a) + alpha a + beta
  with alpha, beta of the opposite sign; the function is the same.)

Sections are cited, not equation numbers: the papers' text was not retrievable where this spec was
written, so the formulas above are the papers' constructions as the catalogue states them, derived
here (each compensating update is checked to keep the function, in tests/test_reparam_family.py).

Conventions (keywords): `training`, `step` and `interval` (the refresh happens in training when
step % interval == 0: the update interval T), `eps` (added to the covariance's eigenvalues before
the inverse square root), `method` ("pca" or "zca") and `momentum` (the mean-normalized layer's
running mean; 1.0 re-estimates it from the data). The output y is the layer's output on x; at a
refresh the new parameters are returned too (they define the same function). Gradients are taken
with respect to the reparametrized parameters with the statistics held constant (PRONG and Raiko
et al. treat them as constants between refreshes); since the refresh preserves the function they
are the same whether or not the step refreshes.
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64

METHODS = ("pca", "zca")


def refreshes(training: bool = True, step: int = 0, interval: int = 1) -> bool:
    """Whether this call refreshes the statistics: in training, every `interval` steps (T)."""
    if not isinstance(interval, (int, np.integer)) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"interval must be a positive integer (the update interval T), got {interval!r}")
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return bool(training) and step % interval == 0


def _check_linear(x, weight, bias, mean, name):
    if x.ndim != 2:
        raise ValueError(f"{name} expects x of shape (N, in_features), got {x.shape}")
    n_in = x.shape[1]
    if weight.ndim != 2 or weight.shape[1] != n_in:
        raise ValueError(f"{name}: weight has shape {weight.shape}, but should be (out_features, {n_in})")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"{name}: bias has shape {bias.shape}, but should be ({weight.shape[0]},)")
    if mean.shape != (n_in,):
        raise ValueError(f"{name}: running_mean has shape {mean.shape}, but should be ({n_in},)")


# ---------------------------------------------------------------- whitened layer (PRONG)

def eigen(sigma: np.ndarray, eps: float):
    """Eigenvalues (ascending, clipped at 0: Sigma is positive semidefinite) and eigenvectors."""
    lam, vecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return np.maximum(lam, 0.0), vecs


def canonical_pca_basis(vecs: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns, ascending eigenvalue) in PCA order, descending eigenvalue, each with
    its entry of largest magnitude positive (first such index on ties): the spec's canonical basis."""
    e = vecs[:, ::-1]
    idx = np.argmax(np.abs(e), axis=0)
    signs = np.sign(e[idx, np.arange(e.shape[1])])
    return e * np.where(signs == 0, 1.0, signs)


def whitening_pair(sigma: np.ndarray, eps: float, method: str = "pca"):
    """(U, U^-1) for the covariance sigma: PCA (Lambda + eps)^(-1/2) E^T or ZCA E (Lambda + eps)^(-1/2) E^T."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive (it keeps the inverse square root finite), got {eps!r}")
    lam, vecs = eigen(sigma, eps)
    if method == "pca":
        e = canonical_pca_basis(vecs)
        s = np.sqrt(lam[::-1] + eps)
        return e.T / s[:, None], e * s[None, :]
    s = np.sqrt(lam + eps)
    return (vecs / s) @ vecs.T, (vecs * s) @ vecs.T


def input_statistics(x: np.ndarray):
    """The mean and biased covariance of the N samples of x (N, in)."""
    mean = x.mean(axis=0)
    xc = x - mean
    return mean, xc.T @ xc / x.shape[0]


def _check_whitened(x, v, d, c, u):
    _check_linear(x, v, d, c, "whitened_linear")
    if u.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"whitened_linear: whitening has shape {u.shape}, but should be ({x.shape[1]}, {x.shape[1]})")


def whitened_linear(x, weight, bias, running_mean, whitening, *, training: bool = True, step: int = 0,
                    interval: int = 1, eps: float = 1e-5, method: str = "pca") -> dict[str, np.ndarray]:
    """h = V U (x - c) + d (Desjardins et al. 2015, sec. 3); at a refresh also the new c', U', V', d'
    (Algorithm 1: W = V U, b = d - W c; c', U' from x; V' = W U'^-1, d' = b + W c')."""
    x, v, d, c, u = (as_float64(a) for a in (x, weight, bias, running_mean, whitening))
    _check_whitened(x, v, d, c, u)
    refresh = refreshes(training, step, interval)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    out = {"y": (x - c) @ u.T @ v.T + d}
    if refresh:
        w = v @ u
        c_new, sigma = input_statistics(x)
        u_new, u_inv = whitening_pair(sigma, eps, method)
        out.update(running_mean=c_new, whitening=u_new, new_weight=w @ u_inv, new_bias=d + w @ (c_new - c))
    return out


def whitened_linear_backward(dy, x, weight, bias, running_mean, whitening, **_conventions) -> dict[str, np.ndarray]:
    """Gradients {x, weight, bias} of <y, dy> with c, U constant: z = U(x - c), dV = dy^T z,
    dd = sum_n dy, dx = dy V U."""
    dy, x, v, d, c, u = (as_float64(a) for a in (dy, x, weight, bias, running_mean, whitening))
    _check_whitened(x, v, d, c, u)
    z = (x - c) @ u.T
    return {"x": dy @ v @ u, "weight": dy.T @ z, "bias": dy.sum(axis=0)}


# ---------------------------------------------------------------- mean-normalized layer

def mean_normalized_linear(x, weight, bias, running_mean, *, training: bool = True, step: int = 0,
                           interval: int = 1, momentum: float = 1.0) -> dict[str, np.ndarray]:
    """h = W (x - mu) + b (Wiesler et al. 2014, sec. 2); at a refresh mu' = (1 - m) mu + m mean(x)
    and b' = b + W (mu' - mu), the compensation that keeps h unchanged."""
    x, w, b, mu = (as_float64(a) for a in (x, weight, bias, running_mean))
    _check_linear(x, w, b, mu, "mean_normalized_linear")
    refresh = refreshes(training, step, interval)
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must lie in (0, 1], got {momentum!r}")
    out = {"y": (x - mu) @ w.T + b}
    if refresh:
        mu_new = (1.0 - momentum) * mu + momentum * x.mean(axis=0)
        out.update(running_mean=mu_new, new_bias=b + w @ (mu_new - mu))
    return out


def mean_normalized_linear_backward(dy, x, weight, bias, running_mean, **_conventions) -> dict[str, np.ndarray]:
    """Gradients {x, weight, bias} with mu constant: dW = dy^T (x - mu), db = sum dy, dx = dy W."""
    dy, x, w, b, mu = (as_float64(a) for a in (dy, x, weight, bias, running_mean))
    _check_linear(x, w, b, mu, "mean_normalized_linear")
    return {"x": dy @ w, "weight": dy.T @ (x - mu), "bias": dy.sum(axis=0)}


# ---------------------------------------------------------------- Raiko, Valpola & LeCun

RAIKO_ROLES = ("x", "weight", "bias", "out_weight", "shortcut", "out_bias", "alpha", "beta")


def _check_raiko(x, b_w, b, a_w, c_w, e, alpha, beta):
    if x.ndim != 2:
        raise ValueError(f"raiko_tanh expects x of shape (N, in_features), got {x.shape}")
    n_in = x.shape[1]
    if b_w.ndim != 2 or b_w.shape[1] != n_in:
        raise ValueError(f"raiko_tanh: weight has shape {b_w.shape}, but should be (hidden, {n_in})")
    h = b_w.shape[0]
    if a_w.ndim != 2 or a_w.shape[1] != h:
        raise ValueError(f"raiko_tanh: out_weight has shape {a_w.shape}, but should be (out_features, {h})")
    out = a_w.shape[0]
    for name, arr, want in (("bias", b, (h,)), ("alpha", alpha, (h,)), ("beta", beta, (h,)),
                            ("shortcut", c_w, (out, n_in)), ("out_bias", e, (out,))):
        if arr.shape != want:
            raise ValueError(f"raiko_tanh: {name} has shape {arr.shape}, but should be {want}")


def unit_statistics(a: np.ndarray):
    """alpha = mean tanh'(a), beta = mean(tanh(a) - alpha a) per hidden unit over the N samples:
    the transformed unit tanh(a) - alpha a - beta then has zero mean output and zero mean slope."""
    t = np.tanh(a)
    alpha = (1.0 - t * t).mean(axis=0)
    return alpha, t.mean(axis=0) - alpha * a.mean(axis=0)


def raiko_tanh(x, weight, bias, out_weight, shortcut, out_bias, alpha, beta, *, training: bool = True,
               step: int = 0, interval: int = 1) -> dict[str, np.ndarray]:
    """y = A f(B x + b) + C x + e, f(a) = tanh(a) - alpha a - beta (Raiko et al. 2012, sec. 2); at a
    refresh the new alpha', beta' and the compensating C', e' (sec. 2)."""
    arrays = [as_float64(a) for a in (x, weight, bias, out_weight, shortcut, out_bias, alpha, beta)]
    _check_raiko(*arrays)
    x, b_w, b, a_w, c_w, e, al, be = arrays
    refresh = refreshes(training, step, interval)
    a = x @ b_w.T + b
    out = {"y": (np.tanh(a) - al * a - be) @ a_w.T + x @ c_w.T + e}
    if refresh:
        al_new, be_new = unit_statistics(a)
        d_al, d_be = al_new - al, be_new - be
        out.update(alpha=al_new, beta=be_new, new_shortcut=c_w + (a_w * d_al) @ b_w,
                   new_out_bias=e + a_w @ (d_al * b + d_be))
    return out


def raiko_tanh_backward(dy, x, weight, bias, out_weight, shortcut, out_bias, alpha, beta,
                        **_conventions) -> dict[str, np.ndarray]:
    """Gradients {x, weight, bias, out_weight, shortcut, out_bias} with alpha, beta constant:
    g = (dy A) o (tanh'(a) - alpha), dB = g^T x, db = sum g, dA = dy^T f(a), dC = dy^T x, de = sum dy,
    dx = g B + dy C."""
    arrays = [as_float64(a) for a in (x, weight, bias, out_weight, shortcut, out_bias, alpha, beta)]
    _check_raiko(*arrays)
    x, b_w, b, a_w, c_w, e, al, be = arrays
    dy = as_float64(dy)
    a = x @ b_w.T + b
    t = np.tanh(a)
    g = (dy @ a_w) * (1.0 - t * t - al)
    return {"x": g @ b_w + dy @ c_w, "weight": g.T @ x, "bias": g.sum(axis=0),
            "out_weight": dy.T @ (t - al * a - be), "shortcut": dy.T @ x, "out_bias": dy.sum(axis=0)}
