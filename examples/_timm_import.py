"""Import timm.layers without torchvision.

timm imports torchvision at import time (timm/__init__ pulls in timm.models and timm.data, and
timm.layers.create_norm imports torchvision.ops.misc.FrozenBatchNorm2d). PyPI's torchvision does
not import beside the CPU build of torch 2.13.0 used here, so this helper loads the `timm` package
without running its __init__ and stands in a placeholder for the one torchvision name that
timm.layers needs. The normalization layers themselves are timm's, unmodified.
"""
import importlib.util
import sys
import types


def timm_layers():
    try:
        import timm.layers as layers
        import torchvision  # noqa: F401
        return layers
    except Exception:
        pass
    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise SystemExit("timm is not installed: pip install 'normspec[examples]'")
    pkg = types.ModuleType("timm")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["timm"] = pkg
    names = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
    stubs = {n: types.ModuleType(n) for n in names}
    stubs["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    for n in names:
        sys.modules.setdefault(n, stubs[n])
    import timm.layers as layers
    return layers
