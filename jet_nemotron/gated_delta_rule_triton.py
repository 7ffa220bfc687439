"""Gated delta rule in Triton: the public entry points, with autograd.

Same signatures and shapes as `gated_delta_rule_ref.py` (q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H];
states [N, H, K, V] fp32; `cu_seqlens` [N + 1] packs N sequences into a batch of 1). Accumulation is fp32;
the state and the log decay are fp32; the intermediates w, u, v_new, h are stored in the inputs' dtype. fp32 inputs
multiply in IEEE fp32 unless torch allows TF32 (`dot_precision`).

The kernels live in one flat file per family (remote code needs a flat folder):
    gated_delta_rule_triton_tiles.py      tile helpers shared by all kernels (`@triton.jit`, inlined)
    gated_delta_rule_triton_launch.py     input checks, chunk tables, fp32 tile precision, tuned launch configs
    gated_delta_rule_triton_chunk_fwd.py  chunked forward (prepare, w/u, sequential state pass, output)
    gated_delta_rule_triton_chunk_bwd.py  chunked backward (dv_local, reverse state pass, per-chunk gradients)
    gated_delta_rule_triton_recurrent.py  token-loop forward, for short inputs and the decode step
    gated_delta_rule_triton_step.py       one decode token, state in place
Both forwards share one backward, the chunked one: it computes the same function.
"""

from __future__ import annotations

import torch

from . import gated_delta_rule_triton_launch as launch
from .gated_delta_rule_triton_chunk_bwd import chunk_bwd
from .gated_delta_rule_triton_chunk_fwd import chunk_fwd
from .gated_delta_rule_triton_launch import prep_inputs
from .gated_delta_rule_triton_recurrent import recurrent_fwd
from .gated_delta_rule_triton_step import gated_delta_rule_step_triton


class _GatedDeltaRuleFunction(torch.autograd.Function):
    """Chunked or recurrent forward (`recurrent`); one backward, the chunked one. The chunked forward keeps its G
    and Ai for the backward, and with `launch.KEEP_STATES` its w, h and v' too; the recurrent one has none, so the
    backward recomputes them."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_l2, recurrent):
        g_dtype, s_dtype = g.dtype, None if initial_state is None else initial_state.dtype
        q, k, v, g, beta, scale, h0, meta = prep_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
        states = (None, None, None)
        if recurrent:
            o, ht = recurrent_fwd(q, k, v, g, beta, scale, h0, output_final_state, meta, use_l2)
            G = Ai = None
        else:
            o, ht, G, Ai, kept = chunk_fwd(q, k, v, g, beta, scale, h0, output_final_state, meta, use_l2)
            if launch.KEEP_STATES and any(ctx.needs_input_grad):  # read at each call: profile_distill sets it
                states = kept
        ctx.save_for_backward(q, k, v, g, beta, h0, G, Ai, *states)
        ctx.meta, ctx.scale, ctx.use_l2, ctx.dtypes = meta, scale, use_l2, (g_dtype, s_dtype)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0, G, Ai, w, h, v_new = ctx.saved_tensors
        states = None if h is None else (w, h, v_new)
        dq, dk, dv, dg, dbeta, dh0 = chunk_bwd(q, k, v, g, beta, ctx.scale, h0, do, dht, ctx.meta, ctx.use_l2, G, Ai,
                                               states)
        g_dtype, s_dtype = ctx.dtypes
        dh0 = None if dh0 is None else dh0.to(s_dtype)
        return dq, dk, dv, dg.to(g_dtype), dbeta, None, dh0, None, None, None, None


def chunk_gated_delta_rule_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None, use_qk_l2norm_in_kernel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule (chunk 64) with autograd. Shapes as `chunk_gated_delta_rule_ref`.

    q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H]; initial_state [N, H, K, V] fp32;
    cu_seqlens [N + 1] (B == 1). Returns o [B, T, H, V] (v's dtype) and the final state [N, H, K, V] fp32."""
    return _GatedDeltaRuleFunction.apply(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                         use_qk_l2norm_in_kernel, False)


def fused_recurrent_gated_delta_rule_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None, use_qk_l2norm_in_kernel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token forward in one kernel, for short inputs. Shapes as `recurrent_gated_delta_rule_ref`.

    Differentiable: the backward runs the chunked backward, which computes the same function."""
    return _GatedDeltaRuleFunction.apply(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                         use_qk_l2norm_in_kernel, True)


__all__ = ["chunk_gated_delta_rule_triton", "fused_recurrent_gated_delta_rule_triton", "gated_delta_rule_step_triton"]
