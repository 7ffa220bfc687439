"""Fused recurrent gated delta rule: one program walks the tokens of one sequence and head for a BV slice of
the state, which stays in fp32 registers. Serves short prefills (forward only; the backward is the chunked one)
and, with T = 1 and the state aliased in and out, the decode step (`gated_delta_rule_triton_step.py`).
"""

from __future__ import annotations

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

from .gated_delta_rule_triton_launch import RECURRENT_CONFIG, pow2_block
from .gated_delta_rule_triton_tiles import _seq_bounds


@triton.jit(do_not_specialize=["T"])
def _recurrent_kernel(q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T,
                      H, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      USE_L2: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                      IS_VARLEN: tl.constexpr):
    """Token loop for one sequence, head and BV slice of the state; h0 and ht may alias (in-place step)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(L):
        row = (bos + t) * H + i_h
        b_q = tl.load(q + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + row * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_g = tl.load(g + row).to(tl.float32)
        b_b = tl.load(beta + row).to(tl.float32)
        if USE_L2:
            b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, 0) + 1e-6)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, 0) + 1e-6)
        b_h *= tl.exp(b_g)
        b_v = (b_v - tl.sum(b_h * b_k[:, None], 0)) * b_b
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], 0) * scale
        tl.store(o + row * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + p_state, b_h.to(ht.dtype.element_ty), mask=m_kv)


def launch_recurrent(q, k, v, g, beta, o, h0, ht, cu, scale, T, N, use_l2):
    """Run the token loop over N sequences of [*, T, H, *] rows; the launch follows the state's dtype."""
    H, K = q.shape[-2:]
    V = v.shape[-1]
    BK = pow2_block(K)
    state = ht if ht is not None else h0
    BV, num_warps = RECURRENT_CONFIG[state.dtype if state is not None else torch.float32]
    _recurrent_kernel[(triton.cdiv(V, BV), N * H)](q, k, v, g, beta, o, h0, ht, cu, scale, T, H=H, K=K, V=V,
                                                  BK=BK, BV=BV, USE_L2=use_l2, HAS_H0=h0 is not None,
                                                  STORE_HT=ht is not None, IS_VARLEN=cu is not None,
                                                  num_warps=num_warps)


def recurrent_fwd(q, k, v, g, beta, scale, h0, want_ht, meta, use_l2: bool):
    """o [B, T, H, V] and, if `want_ht`, the final state [N, H, K, V] fp32; inputs as `prep_inputs` leaves them."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty_like(v)
    ht = torch.empty(meta.N, H, K, V, device=q.device, dtype=torch.float32) if want_ht else None
    launch_recurrent(q, k, v, g, beta, o, h0, ht, meta.cu, scale, T, meta.N, use_l2)
    return o, ht
