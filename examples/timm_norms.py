"""timm's normalization layers under `normspec validate`, each with the contract it needs.

    normspec validate examples/timm_norms.py:RmsNorm
    normspec validate examples/timm_norms.py:LayerNorm
    normspec validate examples/timm_norms.py:GroupNorm

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

NORMSPEC_CONTRACT = {
    "RmsNorm": Contract(ctor={"normalized_shape": "channels:int", "eps": "eps", "elementwise_affine": "affine"},
                        axes="last", eps_none=False, source="examples/timm_norms.py"),
    "LayerNorm": Contract(ctor={"normalized_shape": "num_channels:int", "eps": "eps", "elementwise_affine": "affine"},
                          axes="last", source="examples/timm_norms.py"),
    "GroupNorm": Contract(ctor={"num_channels": "num_channels", "num_groups": "num_groups", "eps": "eps",
                                "affine": "affine"}, source="examples/timm_norms.py"),
}

if __name__ == "__main__":
    from normspec.cli import main

    here = os.path.abspath(__file__)
    codes = [main(["validate", f"{here}:{name}", "--quiet"]) for name in NORMSPEC_CONTRACT]
    sys.exit(max(codes))
