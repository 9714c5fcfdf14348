"""The contract a user declares for a candidate: what it takes and what it covers.

A library's normalization rarely is a drop-in for torch.nn: its constructor has other names
(timm's `RmsNorm(channels, eps, affine)`), it follows another framework's conventions (Keras'
decay momentum, ONNX's biased running variance), it covers part of the domain (the last
dimension only, eval only, forward only) or computes in float32 whatever the input. The contract
says so, and everything it narrows is printed with the verdict (report header, JSON, JUnit), so
that a narrowed validation never passes for a full one.

    from normspec.validate import Contract
    NORMSPEC_CONTRACT = Contract(ctor={"normalized_shape": "dim", "eps": "eps"}, axes="last")

beside the class in the file named by TARGET (or `@contract(...)` on the class, or a dict
{class name: Contract}); the same fields as CLI options (`normspec validate --ctor ... --axes last`)
and as pytest options (`--normspec-ctor ...`). CLI fields override the file's.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

MODES = ("training", "eval")
AXES = ("last", "channels")
COMPUTES = ("float32", "half")
DTYPES = ("float64", "float32", "float16", "bfloat16")
# The torch.nn constructor of each norm's module drop-in: its arguments, in order.
TORCH_CTOR = {
    "batch_norm": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "instance_norm": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "layer_norm": ("normalized_shape", "eps", "elementwise_affine", "bias"),
    "group_norm": ("num_groups", "num_channels", "eps", "affine"),
    "rms_norm": ("normalized_shape", "eps", "elementwise_affine"),
    "local_response_norm": ("size", "alpha", "beta", "k"),
}
# Names libraries give torch.nn's constructor arguments (for the adapter a usage error suggests).
SYNONYMS = {
    "normalized_shape": ("dim", "hidden_size", "channels", "num_channels", "num_features", "d_model", "size",
                         "features", "normalized_shape", "n_embd", "embed_dim"),
    "num_features": ("num_features", "channels", "num_channels", "dim", "features", "c"),
    "num_channels": ("num_channels", "channels", "num_features", "dim", "c"),
    "num_groups": ("num_groups", "groups", "group_num", "g"),
    "eps": ("eps", "epsilon", "variance_epsilon", "layer_norm_eps", "rms_norm_eps", "norm_eps"),
    "elementwise_affine": ("elementwise_affine", "affine", "learnable", "use_weight", "scale", "use_scale"),
    "affine": ("affine", "elementwise_affine", "learnable", "use_scale"),
    "bias": ("bias", "use_bias", "center"),
    "momentum": ("momentum", "decay"),
    "track_running_stats": ("track_running_stats", "use_running_stats"),
}


class ContractError(ValueError):
    """A declaration that is malformed or does not fit the norm (a usage error, exit 2)."""


@dataclass(frozen=True)
class Contract:
    """What the candidate takes and covers; every field narrows the validation and is reported.

    ctor: torch.nn's constructor argument -> the candidate's (`{"normalized_shape": "dim"}`; a
          value "dim:int" passes the one normalized size as an int; a number or bool, the value the
          class fixes, not passed: `{"num_groups": 1}` for timm's GroupNorm1), or a callable taking
          torch.nn's arguments by keyword and returning the module (an adapter). torch.nn
          arguments left out of a mapping are not passed, so they are fixed at torch.nn's default.
    conventions: convention keywords of the spec pinned to a value (`running_var_style="biased"`,
          `momentum_style="decay"`, LRN `convention="caffe"`...).
    axes: "last": normalizes over the last dimension only (layer_norm, rms_norm); "channels": over dim 1 of
          (N, C, *S) only, with (C,) parameters (ConvNeXt's channels_first LayerNorm, timm's LayerNorm2d
          and RmsNorm2d).
    modes: ("eval",) or ("training",): the only mode(s) it supports (batch_norm, instance_norm).
    forward_only: no gradients are checked (gradient properties are reported as not run).
    affine: True / False: the affine parameters are always / never there.
    eps_none: False: eps=None (a dtype-dependent eps) is not supported.
    dtypes: the only dtypes to validate.
    compute: "float32": computes in float32 whatever the input, so float64 inputs are judged at
          float32's roundoff; "half": half inputs keep half-precision intermediates, judged at
          their own roundoff, a lower tier reported as such.
    ranks: the only input ranks the module takes (transformers' ConvNextLayerNorm: (4,)), where the
          class name's 1d/2d/3d does not say them.
    """

    ctor: Mapping[str, str] | Callable[..., Any] | None = None
    conventions: Mapping[str, Any] = field(default_factory=dict)
    axes: str | None = None
    modes: tuple[str, ...] | None = None
    forward_only: bool = False
    affine: bool | None = None
    eps_none: bool = True
    dtypes: tuple[str, ...] | None = None
    compute: str | None = None
    ranks: tuple[int, ...] | None = None
    source: str = ""  # where it was declared (file, CLI), for the report

    def __post_init__(self):
        if self.modes is not None:
            object.__setattr__(self, "modes", tuple([self.modes] if isinstance(self.modes, str) else self.modes))
        if self.dtypes is not None:
            object.__setattr__(self, "dtypes", tuple([self.dtypes] if isinstance(self.dtypes, str) else self.dtypes))
        if self.ranks is not None:
            object.__setattr__(self, "ranks", tuple([self.ranks] if isinstance(self.ranks, int) else self.ranks))
        object.__setattr__(self, "conventions", dict(self.conventions or {}))
        check_fields(self)

    # -- what travels to the worker and into reports
    @classmethod
    def from_wire(cls, wire: Mapping[str, Any], source: str = "") -> "Contract":
        kw = {k: v for k, v in wire.items() if k in {f.name for f in fields(cls)} and k != "source"}
        for k in ("modes", "dtypes", "ranks"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw, source=source)

    def to_wire(self) -> dict:
        ctor = self.ctor
        if callable(ctor) or ctor == "callable":
            ctor = "callable"
        elif ctor is not None:
            ctor = dict(ctor)
        return {"ctor": ctor, "conventions": dict(self.conventions), "axes": self.axes,
                "modes": list(self.modes) if self.modes else None, "forward_only": self.forward_only,
                "affine": self.affine, "eps_none": self.eps_none,
                "dtypes": list(self.dtypes) if self.dtypes else None, "compute": self.compute,
                "ranks": list(self.ranks) if self.ranks else None}

    @property
    def empty(self) -> bool:
        return self == Contract(source=self.source)

    def merged(self, other: "Contract | None") -> "Contract":
        """This contract with every field `other` sets (differs from the default) taken from `other`."""
        if other is None:
            return self
        default = Contract()
        changes = {f.name: getattr(other, f.name) for f in fields(Contract)
                   if f.name != "source" and getattr(other, f.name) != getattr(default, f.name)}
        if "conventions" in changes:
            changes["conventions"] = {**self.conventions, **other.conventions}
        sources = [s for s in (self.source, other.source if changes else "") if s]
        return replace(self, **changes, source=" + ".join(sources))

    def fixed_by_class(self) -> dict[str, Any]:
        """torch.nn arguments the candidate's class fixes at a value (a number or bool in the mapping)."""
        if not isinstance(self.ctor, Mapping):
            return {}
        return {k: v for k, v in self.ctor.items() if not isinstance(v, str)}

    def lines(self, implied: Mapping[str, Any] | None = None) -> list[str]:
        """One line per narrowing, for the report header ([] for a full, drop-in validation)."""
        out = []
        if self.ctor is not None:
            if callable(self.ctor) or self.ctor == "callable":
                name = getattr(self.ctor, "__name__", "declared beside the class")
                out.append(f"constructor: adapter {name} (takes torch.nn's arguments by keyword)")
            else:
                out.append("constructor: " + ", ".join(
                    f"{k} -> {v}" if isinstance(v, str) else f"{k} fixed at {v!r} by the class (not passed)"
                    for k, v in self.ctor.items()))
        for k, v in self.conventions.items():
            out.append(f"convention pinned: {k}={v!r} (other values not validated)")
        if self.axes == "last":
            out.append("domain: normalizes over the last dimension only (normalized_shape of one dim)")
        if self.axes == "channels":
            out.append("domain: normalizes over the channels (dim 1) of (N, C, *S) only, (C,) parameters")
        if self.modes:
            out.append(f"domain: {' and '.join(self.modes)} mode only")
        if self.forward_only:
            out.append("domain: forward only (no gradient checked)")
        if self.affine is not None:
            out.append(f"domain: affine parameters always {'on' if self.affine else 'off'}")
        if not self.eps_none:
            out.append("domain: eps=None not supported")
        if self.dtypes:
            out.append(f"domain: dtypes {', '.join(self.dtypes)} only")
        if self.ranks:
            out.append(f"domain: inputs of rank {' or '.join(map(str, self.ranks))} only")
        if self.compute == "float32":
            out.append("compute precision: float32 whatever the input (float64 judged at float32's roundoff)")
        if self.compute == "half":
            out.append("compute precision: LOWER TIER: half inputs with half-precision intermediates "
                       "(float16/bfloat16 judged at their own roundoff, not float32's)")
        for k, v in (implied or {}).items():
            if k in self.fixed_by_class():
                continue  # on the constructor line
            why = "torch.nn's default" if v else "the module has none"
            out.append(f"fixed by the constructor mapping: {k}={v!r} ({why}; not passed)")
        return out


def check_fields(c: Contract) -> None:
    """Field values that are wrong whatever the norm (ContractError says what is allowed)."""
    if c.ctor is not None and not callable(c.ctor) and c.ctor != "callable":
        if not isinstance(c.ctor, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in c.ctor.items()):
            raise ContractError("ctor must map torch.nn argument names to the candidate's (strings) or to the value "
                                "the class fixes (a number or bool), e.g. {'normalized_shape': 'dim', 'eps': 'eps'}, "
                                "or be a callable adapter")
        for k, v in c.ctor.items():
            if isinstance(v, str) and not re.fullmatch(r"[A-Za-z_]\w*(:int)?", v):
                raise ContractError(f"ctor: {k}={v!r} is not a parameter name (optionally with ':int')")
    if c.axes is not None and c.axes not in AXES:
        raise ContractError(f"axes={c.axes!r}; allowed: {', '.join(AXES)}")
    if c.modes is not None:
        bad = [m for m in c.modes if m not in MODES]
        if bad or not c.modes:
            raise ContractError(f"modes {bad or '(none)'} unknown; allowed: {', '.join(MODES)} (one or both)")
    if c.dtypes is not None:
        bad = [d for d in c.dtypes if d not in DTYPES]
        if bad or not c.dtypes:
            raise ContractError(f"dtypes {bad or '(none)'} unknown; allowed: {', '.join(DTYPES)}")
    if c.compute is not None and c.compute not in COMPUTES:
        raise ContractError(f"compute={c.compute!r}; allowed: {', '.join(COMPUTES)} "
                            "(float32: computes in float32 whatever the input; half: half intermediates)")
    if c.ranks is not None and (not c.ranks or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 5
                                                       for r in c.ranks)):
        raise ContractError(f"ranks {c.ranks!r}: input ranks from 1 to 5 (e.g. 4, or 3,4)")
    if c.affine not in (None, True, False):
        raise ContractError(f"affine={c.affine!r}; allowed: on, off")
    for k in c.conventions:
        if not isinstance(k, str) or not k.isidentifier():
            raise ContractError(f"convention {k!r} is not a keyword name")


def contract(**kwargs) -> Callable[[type], type]:
    """Class decorator: `@contract(ctor={...}, axes="last")` declares the class's contract."""

    def deco(obj):
        obj.__normspec_contract__ = Contract(**kwargs, source=f"@contract on {getattr(obj, '__name__', obj)}")
        return obj

    return deco


# ------------------------------------------------------------------ CLI parsing

def _mapping(text: str, what: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ContractError(f"{what}: {part!r} is not NAME=VALUE (e.g. normalized_shape=dim,eps=eps)")
        k, v = (s.strip() for s in part.split("=", 1))
        if not k.isidentifier():
            raise ContractError(f"{what}: {k!r} is not a name")
        out[k] = v
    return out


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# torch.nn's constructor arguments a class may fix, and what a value of each must be.
_FLAGS = {"affine", "elementwise_affine", "bias", "track_running_stats"}
_COUNTS = {"num_groups", "size"}


def _bad_fixed_value(k: str, v) -> str | None:
    """Why `v` is no value of torch.nn's argument `k` (None when it is one)."""
    if k in _FLAGS:
        return None if isinstance(v, bool) else "it is a flag (true or false)"
    if k in _COUNTS:
        return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "it is a count (1, 2, ...)"
    if not _finite_number(v):
        return "it is a finite number"
    if k in ("eps", "alpha", "k") and v < 0:
        return f"{k} is not negative"
    if k == "momentum" and not 0 <= v <= 1:
        return "momentum lies in [0, 1]"
    return None


def _fixed_or_name(text: str) -> Any:
    """A --ctor value: the candidate's parameter name, or a number/bool the class fixes."""
    value = _value(text)
    return value if isinstance(value, (int, float, bool)) else text


def from_options(*, ctor: str | None = None, conventions: list[str] | None = None, axes: str | None = None,
                 modes: str | None = None, forward_only: bool = False, affine: str | None = None,
                 no_eps_none: bool = False, dtypes: list[str] | None = None, compute: str | None = None,
                 ranks: str | None = None, source: str = "command line") -> Contract | None:
    """The contract the CLI / pytest options declare, or None when they declare nothing."""
    kw: dict[str, Any] = {}
    if ctor:
        kw["ctor"] = {k: _fixed_or_name(v) for k, v in _mapping(ctor, "--ctor").items()}
    if conventions:
        pinned = {}
        for text in conventions:
            for k, v in _mapping(text, "--convention").items():
                if k in pinned and pinned[k] != _value(v):
                    raise ContractError(f"--convention {k} given twice, as {pinned[k]!r} and {_value(v)!r}")
                pinned[k] = _value(v)
        kw["conventions"] = pinned
    if axes:
        kw["axes"] = axes
    if modes:
        kw["modes"] = tuple(m.strip() for m in modes.split(",") if m.strip())
    if forward_only:
        kw["forward_only"] = True
    if affine is not None:
        if affine not in ("on", "off"):
            raise ContractError(f"--affine {affine!r}; allowed: on, off")
        kw["affine"] = affine == "on"
    if no_eps_none:
        kw["eps_none"] = False
    if dtypes:
        kw["dtypes"] = tuple(dtypes)
    if compute:
        kw["compute"] = compute
    if ranks:
        try:
            kw["ranks"] = tuple(int(r) for r in ranks.split(",") if r.strip())
        except ValueError:
            raise ContractError(f"--ranks {ranks!r}: input ranks, e.g. 4 or 3,4") from None
    return Contract(**kw, source=source) if kw else None


# ------------------------------------------------------------------ fitting it to the norm

def check_for_norm(c: Contract, norm: str, kind: str, conventions: Mapping[str, tuple]) -> None:
    """Declarations that do not fit the norm or the kind (ContractError says what is allowed).
    conventions: the norm's convention keywords -> the values the spec accepts."""
    if c.ctor is not None and kind != "module":
        raise ContractError(f"a constructor mapping applies to a torch.nn.Module class; this target is a {kind} "
                            f"function (its arguments are bound {'by name' if kind == 'spec' else 'positionally'})")
    if c.ctor is not None and norm not in TORCH_CTOR:
        raise ContractError(f"{norm} has no torch.nn module constructor to map")
    if isinstance(c.ctor, Mapping):
        allowed = TORCH_CTOR.get(norm, ())
        bad = [k for k in c.ctor if k not in allowed]
        if bad:
            raise ContractError(f"ctor: {', '.join(bad)} not an argument of torch.nn's {norm} constructor; "
                                f"its arguments: {', '.join(allowed)}")
        int_ok = {"normalized_shape"}
        for k, v in c.ctor.items():
            if isinstance(v, str) and v.endswith(":int") and k not in int_ok:
                raise ContractError(f"ctor: ':int' applies to normalized_shape only, not {k}")
            if not isinstance(v, str) and k in SHAPE_ARGS:
                raise ContractError(f"ctor: {k} cannot be fixed at {v!r}: the validation draws the shapes; map it "
                                    f"to the candidate's parameter")
            if not isinstance(v, str):
                problem = _bad_fixed_value(k, v)
                if problem:
                    raise ContractError(f"ctor: {k}={v!r} cannot be the value the class fixes: {problem}")
    if c.axes == "last" and norm not in ("layer_norm", "rms_norm"):
        raise ContractError(f"axes=last applies to layer_norm and rms_norm (normalized_shape), not {norm}")
    if c.axes == "channels" and (norm not in ("layer_norm", "rms_norm") or kind != "module"):
        raise ContractError(f"axes=channels applies to layer_norm and rms_norm module classes (a channels-first "
                            f"norm constructed with the channel count), not a {norm} {kind}")
    if c.modes and norm not in ("batch_norm", "instance_norm"):
        raise ContractError(f"modes apply to norms with a training/eval distinction (batch_norm, instance_norm), "
                            f"not {norm}")
    if c.affine is not None and norm == "local_response_norm":
        raise ContractError("local_response_norm has no affine parameters; affine does not apply")
    if not c.eps_none and norm != "rms_norm":
        pass  # eps=None is drawn for rms_norm only; elsewhere the declaration narrows nothing
    for k, v in c.conventions.items():
        if k not in conventions:
            known = ", ".join(f"{n} ({'/'.join(map(str, vals)) or 'a number'})"
                              for n, vals in conventions.items()) or "none"
            raise ContractError(f"{k!r} is not a convention keyword of {norm}'s spec; its conventions: {known}")
        if not conventions[k] and not _finite_number(v):
            raise ContractError(f"{k}={v!r}: {norm}'s {k} is a finite number")
        if conventions[k] and v not in conventions[k]:
            raise ContractError(f"{k}={v!r} is not a value {norm}'s spec accepts; allowed: "
                                f"{', '.join(map(repr, conventions[k]))}")
    # compute describes the candidate, so it stands whatever dtypes this run narrows to: with --dtype float32 a
    # compute=float32 declaration has nothing to change, and refusing it blocked the narrowed runs the docs advise
    # for exactly the layers that need it (Llama, T5, Gemma; outside red team)


# torch.nn arguments that size the module to the input: mapped, never fixed.
SHAPE_ARGS = {"num_features", "normalized_shape", "num_channels"}
REQUIRED = {"num_features", "normalized_shape", "num_groups", "num_channels", "size", "alpha", "beta", "k", "eps",
            "momentum"}


def unmapped_required(c: Contract, norm: str) -> list[str]:
    """torch.nn arguments that change the result and have no default the harness could assume:
    a mapping must name them (momentum only where training mode is in the domain)."""
    if not isinstance(c.ctor, Mapping):
        return []
    need = [k for k in TORCH_CTOR.get(norm, ()) if k in REQUIRED and k not in c.ctor]
    if c.modes == ("eval",):
        need = [k for k in need if k != "momentum"]
    return need


def implied_by_ctor(c: Contract, norm: str) -> dict[str, Any]:
    """torch.nn arguments a mapping leaves out, which the candidate therefore never receives: the
    validation fixes them at torch.nn's default (and says so); and those the class fixes at a value."""
    if not isinstance(c.ctor, Mapping):
        return {}
    defaults = {"elementwise_affine": True, "affine": True, "bias": True, "track_running_stats": True}
    return {**{k: v for k, v in defaults.items() if k in TORCH_CTOR.get(norm, ()) and k not in c.ctor},
            **c.fixed_by_class()}
