"""timm's normalization layers under `normspec validate`, each with the contract it needs.

    normspec validate examples/timm_norms.py:RmsNorm
    normspec validate examples/timm_norms.py:LayerNorm
    normspec validate examples/timm_norms.py:GroupNorm
    normspec validate examples/timm_norms.py:GroupNorm1
    normspec validate examples/timm_norms.py:LayerNorm2d
    normspec validate examples/timm_norms.py:RmsNorm2d

(or `python examples/timm_norms.py` for all of them). Each class here is timm's own, re-exported;
the contract beside it says how torch.nn's constructor arguments map onto timm's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timm_import import timm_layers  # noqa: E402

from normspec.validate import Contract  # noqa: E402

_L = timm_layers()
RmsNorm = _L.RmsNorm  # RmsNorm(channels, eps=1e-6, affine=True): over the last dim only
LayerNorm = _L.LayerNorm  # LayerNorm(num_channels, eps=1e-6, affine=True): a torch.nn.LayerNorm subclass
GroupNorm = _L.GroupNorm  # GroupNorm(num_channels, num_groups=32, eps=1e-5, affine=True)
GroupNorm1 = _L.GroupNorm1  # GroupNorm1(num_channels, **kwargs): num_groups fixed at 1
LayerNorm2d = _L.LayerNorm2d  # LayerNorm2d(num_channels, eps=1e-6, affine=True): over C of NCHW
RmsNorm2d = _L.RmsNorm2d  # RmsNorm2d(channels, eps=1e-6, affine=True): over C of NCHW

NORMSPEC_CONTRACT = {
    "RmsNorm": Contract(ctor={"normalized_shape": "channels:int", "eps": "eps", "elementwise_affine": "affine"},
                        axes="last", eps_none=False, source="examples/timm_norms.py"),
    "LayerNorm": Contract(ctor={"normalized_shape": "num_channels:int", "eps": "eps", "elementwise_affine": "affine"},
                          axes="last", source="examples/timm_norms.py"),
    "GroupNorm": Contract(ctor={"num_channels": "num_channels", "num_groups": "num_groups", "eps": "eps",
                                "affine": "affine"}, source="examples/timm_norms.py"),
    # the class fixes num_groups at 1 (a value in the mapping, not passed); **kwargs takes eps and affine
    "GroupNorm1": Contract(ctor={"num_channels": "num_channels", "num_groups": 1, "eps": "eps", "affine": "affine"},
                           source="examples/timm_norms.py"),
    # a LayerNorm over the channels of (N, C, H, W), constructed with C
    "LayerNorm2d": Contract(ctor={"normalized_shape": "num_channels:int", "eps": "eps", "elementwise_affine": "affine"},
                            axes="channels", source="examples/timm_norms.py"),
    "RmsNorm2d": Contract(ctor={"normalized_shape": "channels:int", "eps": "eps", "elementwise_affine": "affine"},
                          axes="channels", eps_none=False, source="examples/timm_norms.py"),
}

if __name__ == "__main__":
    from normspec.cli import main

    here = os.path.abspath(__file__)
    codes = [main(["validate", f"{here}:{name}", "--quiet"]) for name in NORMSPEC_CONTRACT]
    sys.exit(max(codes))
