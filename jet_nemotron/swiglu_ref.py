"""The MLP's gated activation in plain PyTorch: the exact reference and the CPU path.

    y = silu(gate) * up

Shapes (the same for every backend, see `ops.py`): gate, up [..., I] (strided views are fine). Returns y [..., I]
in gate's dtype; the arithmetic is fp32, rounded once. With `act_rounded`, silu(gate) is rounded to gate's dtype
before the product, as eager PyTorch's `act(gate) * up` does in bf16: a frozen teacher keeps its own arithmetic
(`convert/teacher_kernels.py`). `swiglu_packed_ref(gate_up)`: gate and up are the halves of gate_up [..., 2I].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor, act_rounded: bool = False) -> torch.Tensor:
    """silu(gate) * up. Shapes in the module docstring."""
    if act_rounded:
        return F.silu(gate) * up.to(gate.dtype)
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def halves(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up [..., 2I] -> its halves gate, up [..., I] (views)."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"swiglu_packed needs gate and up side by side, an even last size; got {tuple(gate_up.shape)}")
    return gate_up.chunk(2, dim=-1)


def swiglu_packed_ref(gate_up: torch.Tensor, act_rounded: bool = False) -> torch.Tensor:
    """silu(gate) * up for gate, up = the halves of gate_up [..., 2I]; y [..., I]."""
    return swiglu_ref(*halves(gate_up), act_rounded=act_rounded)
