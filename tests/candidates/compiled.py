"""Candidates for `normspec validate --compile`: one right under torch.compile, one wrong only there.

`LNWrongWhenCompiled` stands in for a miscompilation (Inductor has had normalization bugs of its
own): eager it is torch's LayerNorm, compiled it drops eps from the denominator, a realistic slip
of a hand-fused kernel that only the compiled path takes.
"""
import torch
import torch.nn.functional as F
from torch import nn


class CompiledOKLayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm itself: right eager and compiled."""


class LNWrongWhenCompiled(nn.LayerNorm):
    def forward(self, x):
        if not torch.compiler.is_compiling():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dims = tuple(range(-len(self.normalized_shape), 0))
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        y = (x - mean) / var.sqrt()  # eps forgotten on the compiled path
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y
