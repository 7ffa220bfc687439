"""The MLP's gated activation in plain PyTorch: the exact reference and the CPU path.

    y = silu(gate) * up

Shapes (the same for every backend, see `ops.py`): gate, up [..., I] (strided views are fine). Returns y [..., I]
in gate's dtype; the arithmetic is fp32, rounded once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up. Shapes in the module docstring."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)
