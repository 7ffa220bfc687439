"""The JetBlock's output norm in plain PyTorch: the exact reference and the CPU path.

    y = weight * x / sqrt(mean(x^2) + eps) * silu(gate)        over the last dimension (dv, one head)

Shapes (the same for every backend, see `ops.py`): x, gate [..., D]; weight [D]. Returns y [..., D] in x's dtype;
the arithmetic is fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gated_rmsnorm_ref(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x times weight times silu(gate). Shapes in the module docstring."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * x * F.silu(gate.float())).to(dtype)
