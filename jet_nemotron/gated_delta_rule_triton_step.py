"""The decode step: one token for a batch, the state updated in place by the recurrent kernel (T = 1)."""

from __future__ import annotations

import torch

from .gated_delta_rule_triton_recurrent import launch_recurrent


def gated_delta_rule_step_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, scale: float | None = None, use_qk_l2norm_in_kernel: bool = True,
) -> torch.Tensor:
    """One decode token for a batch, state updated in place (no autograd).

    q, k [B, H, K]; v [B, H, V]; g, beta [B, H]; state [B, H, K, V] fp32 or bf16 (read and written in its own
    dtype, updated in fp32). Returns o [B, H, V]."""
    B, H, K = q.shape
    V = v.shape[-1]
    if state.shape != (B, H, K, V) or state.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"state must be fp32 or bf16 {(B, H, K, V)}, got {state.dtype} {tuple(state.shape)}")
    scale = K ** -0.5 if scale is None else float(scale)
    # a [B, H, D] token is a [B, 1, H, D] sequence of length 1; the kernel reads the state before writing it
    s = state if state.is_contiguous() else state.contiguous()
    o = torch.empty_like(v, memory_format=torch.contiguous_format)
    launch_recurrent(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(), o, s, s,
                     None, scale, 1, B, use_qk_l2norm_in_kernel)
    if s is not state:
        state.copy_(s)
    return o
