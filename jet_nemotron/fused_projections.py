"""Inference-time fusion of the projections that read the same input into one matrix product.

At decode time a step is a few hundred small matrix-vector products; each launch has a floor of a few
microseconds, so at batch 1 the count of kernels, not the bytes, sets the speed. Reading q/k/v/g/a/b and the
kernel generator's w1 (JetBlock), q/k/v (attention) and gate/up (MLP) as one matrix each removes about half of
the launches and reads the same bytes. The original parameters become views into the fused weight, so no memory
is added and the parameter names are unchanged; the fused weight is a non-persistent buffer.
"""

from __future__ import annotations

import torch
from torch import nn


def fuse_linears(module: nn.Module, name: str, linears: list[nn.Linear]) -> list[int]:
    """Register buffer `name` (weight) and `name + "_bias"` (or None) on `module` holding the row-concatenation of
    `linears`; their weights become views of it. Returns the output sizes, for `split`."""
    sizes = [lin.out_features for lin in linears]
    weight = torch.cat([lin.weight.detach() for lin in linears])
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError(f"cannot fuse {name}: some projections have a bias and some do not")
    bias = torch.cat([lin.bias.detach() for lin in linears]) if all(has_bias) else None
    module.register_buffer(name, weight, persistent=False)
    module.register_buffer(name + "_bias", bias, persistent=False)
    offset = 0
    for lin, n in zip(linears, sizes):
        lin.weight.data = weight[offset : offset + n]
        if bias is not None:
            lin.bias.data = bias[offset : offset + n]
        offset += n
    return sizes


def fused_linear(module: nn.Module, name: str, x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """x [..., in] -> the outputs of the fused projections, in the order they were fused."""
    return nn.functional.linear(x, getattr(module, name), getattr(module, name + "_bias")).split(sizes, dim=-1)
