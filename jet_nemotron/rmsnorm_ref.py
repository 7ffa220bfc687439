"""The decoder's RMSNorm in plain PyTorch: the exact reference and the CPU path (Qwen2's arithmetic).

    y = weight * round(x / sqrt(mean(x^2) + eps))        over the last dimension, the norm in fp32, rounded to x's
                                                          dtype before the weight (as Qwen2RMSNorm does)

Shapes (the same for every backend, see `ops.py`): x [..., D]; weight [D]. Returns y [..., D] in the promotion of
weight's and x's dtypes (fp32 weights on a bf16 x give fp32, as in Qwen2).
"""

from __future__ import annotations

import torch


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight times the RMS-normalised x. Shapes in the module docstring."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)
