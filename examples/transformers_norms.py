"""Hugging Face transformers' normalization layers under `normspec validate`.

    normspec validate examples/transformers_norms.py:LlamaRMSNorm
    normspec validate examples/transformers_norms.py:GemmaRMSNorm --as rms_norm
    normspec validate examples/transformers_norms.py:T5LayerNorm --as rms_norm

(or `python examples/transformers_norms.py`). T5LayerNorm is named a LayerNorm but computes
RMSNorm (no mean subtracted, no bias): without --as, validate stops and says so. GemmaRMSNorm
scales by (1 + weight) (its weight is an offset from 1): its contract pins rms_norm's convention
weight_offset=1; judged as torch's RMSNorm, its forward differs by design (see docs/field-report.md).
"""
import os
import sys

from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

from normspec.validate import Contract

# transformers casts the hidden states to float32 for the mean square (whatever the input dtype):
# float64 inputs are computed in float32, so the contract declares it.
_RMS = Contract(ctor={"normalized_shape": "hidden_size:int", "eps": "eps"}, axes="last", eps_none=False,
                compute="float32", source="examples/transformers_norms.py")
# Gemma stores w and scales by 1 + w: the spec's numeric convention weight_offset=1.
_GEMMA = _RMS.merged(Contract(conventions={"weight_offset": 1}, source="examples/transformers_norms.py"))
NORMSPEC_CONTRACT = {"LlamaRMSNorm": _RMS, "GemmaRMSNorm": _GEMMA, "T5LayerNorm": _RMS}
__all__ = ["GemmaRMSNorm", "LlamaRMSNorm", "T5LayerNorm"]

if __name__ == "__main__":
    from normspec.cli import main

    here = os.path.abspath(__file__)
    codes = [main(["validate", f"{here}:{name}", "--quiet", "--as", "rms_norm"]) for name in NORMSPEC_CONTRACT]
    sys.exit(max(codes))
