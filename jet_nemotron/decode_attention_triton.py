"""One-token grouped-query attention against a KV cache in Triton (split-KV "flash decoding").

Same signature and shapes as `decode_attention_ref.py`: q [B, Hq, D]; k, v [B, Hkv, L, D]; mask [B, L] bool or
None. Why a kernel: decoding at long context is a read of the whole cache, and the PyTorch path (a batched
[G, D] x [D, L] product per KV head, then softmax and a second product) makes extra passes over an fp32 score
tensor. Here each program reads its keys and values once, keeps an online softmax in registers and skips key
blocks that the mask rules out entirely (the unwritten tail of a static cache costs nothing).

Pass 1: grid (B * Hkv, S): split s of the keys of one KV head, all G = Hq / Hkv query heads of that group at once
(padded to GP >= 16 rows for tl.dot), writes its running max m, sum l and unnormalised output [GP, D] (fp32).
Pass 2: grid (B * Hkv): merges the S partial results. S is chosen so that B * Hkv * S fills the GPU.
"""

from __future__ import annotations

import functools

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

BLOCK_N = 64  # keys per inner step


@triton.jit
def _split_kernel(q, k, v, mask, m_part, l_part, o_part, scale, L, S, BPS,
                  s_kb, s_kh, s_kl, s_vb, s_vh, s_vl,
                  Hkv, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BD: tl.constexpr,
                  BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr):
    i_bh, i_s = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // Hkv, i_bh % Hkv
    o_g, o_d = tl.arange(0, GP), tl.arange(0, BD)
    m_g, m_d = o_g < G, o_d < D
    p_q = q + (i_b.to(tl.int64) * Hkv * G + i_h * G + o_g)[:, None] * D + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.0)
    b_q = (b_q.to(tl.float32) * scale).to(q.dtype.element_ty)
    b_m = tl.full([GP], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([GP], dtype=tl.float32)
    b_o = tl.zeros([GP, BD], dtype=tl.float32)
    k_base = k + i_b.to(tl.int64) * s_kb + i_h * s_kh
    v_base = v + i_b.to(tl.int64) * s_vb + i_h * s_vh
    for j in range(BPS):
        o_n = (i_s * BPS + j) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_n = o_n < L
        if HAS_MASK:
            m_n = m_n & (tl.load(mask + i_b.to(tl.int64) * L + o_n, mask=m_n, other=0) != 0)
        if tl.max(m_n.to(tl.int32), 0) > 0:  # a block the mask rules out is never read
            m_nd = m_n[:, None] & m_d[None, :]
            b_k = tl.load(k_base + o_n[:, None].to(tl.int64) * s_kl + o_d[None, :], mask=m_nd, other=0.0)
            if IEEE:
                b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
            else:
                b_s = tl.dot(b_q, tl.trans(b_k))
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))  # [GP, BLOCK_N]
            b_mn = tl.maximum(b_m, tl.max(b_s, 1))  # finite: the block has a valid key
            b_p = tl.exp(b_s - b_mn[:, None])
            b_a = tl.exp(b_m - b_mn)
            b_l = b_l * b_a + tl.sum(b_p, 1)
            b_v = tl.load(v_base + o_n[:, None].to(tl.int64) * s_vl + o_d[None, :], mask=m_nd, other=0.0)
            if IEEE:
                b_o = b_o * b_a[:, None] + tl.dot(b_p, b_v.to(tl.float32), input_precision="ieee")
            else:
                b_o = b_o * b_a[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
            b_m = b_mn
    row = (i_bh.to(tl.int64) * S + i_s) * GP + o_g
    tl.store(m_part + row, b_m)
    tl.store(l_part + row, b_l)
    tl.store(o_part + row[:, None] * BD + o_d[None, :], b_o)


@triton.jit
def _merge_kernel(m_part, l_part, o_part, o, S, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                  BD: tl.constexpr):
    i_bh = tl.program_id(0)
    o_g, o_d = tl.arange(0, GP), tl.arange(0, BD)
    b_m = tl.full([GP], float("-inf"), dtype=tl.float32)
    for s in range(S):
        b_m = tl.maximum(b_m, tl.load(m_part + (i_bh.to(tl.int64) * S + s) * GP + o_g))
    b_ref = tl.where(b_m == float("-inf"), 0.0, b_m)  # a row with no valid key: every split weighs 0
    b_l = tl.zeros([GP], dtype=tl.float32)
    b_o = tl.zeros([GP, BD], dtype=tl.float32)
    for s in range(S):
        row = (i_bh.to(tl.int64) * S + s) * GP + o_g
        b_w = tl.exp(tl.load(m_part + row) - b_ref)
        b_l += b_w * tl.load(l_part + row)
        b_o += b_w[:, None] * tl.load(o_part + row[:, None] * BD + o_d[None, :])
    b_o = b_o / tl.where(b_l > 0, b_l, 1.0)[:, None]
    p_o = o + (i_bh.to(tl.int64) * G + o_g)[:, None] * D + o_d[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=(o_g[:, None] < G) & (o_d[None, :] < D))


@functools.lru_cache(maxsize=None)
def _programs_wanted(device: torch.device) -> int:
    """Enough programs to keep every SM streaming (4 per SM); the interpreter has no SMs."""
    if device.type != "cuda":
        return 8
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def decode_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                            scale: float | None = None) -> torch.Tensor:
    """Split-KV decode attention. Shapes as `decode_attention_ref`; k and v need a unit stride on D."""
    B, Hq, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k and v must be [B, Hkv, L, D] with B={B}, D={D}: got {tuple(k.shape)}, {tuple(v.shape)}")
    if k.stride(3) != 1 or v.stride(3) != 1:
        raise ValueError("k and v need a unit stride on their last (head) dimension")
    if mask is not None:
        if tuple(mask.shape) != (B, L):
            raise ValueError(f"mask must be [B, L] = {(B, L)}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool).contiguous()
    G = Hq // Hkv
    GP, BD = max(16, triton.next_power_of_2(G)), max(16, triton.next_power_of_2(D))
    n_blocks = max(1, triton.cdiv(L, BLOCK_N))
    S = min(n_blocks, max(1, triton.cdiv(_programs_wanted(q.device), B * Hkv)))
    BPS = triton.cdiv(n_blocks, S)
    S = triton.cdiv(n_blocks, BPS)
    q = q.contiguous()
    m_part = torch.empty(B * Hkv, S, GP, device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    o_part = torch.empty(B * Hkv, S, GP, BD, device=q.device, dtype=torch.float32)
    o = torch.empty_like(q)
    _split_kernel[(B * Hkv, S)](q, k, v, mask if mask is not None else q, m_part, l_part, o_part,
                                float(D**-0.5 if scale is None else scale), L, S, BPS,
                                *k.stride()[:3], *v.stride()[:3], Hkv, G=G, GP=GP, D=D, BD=BD, BLOCK_N=BLOCK_N,
                                HAS_MASK=mask is not None, IEEE=q.dtype == torch.float32, num_warps=4)
    _merge_kernel[(B * Hkv,)](m_part, l_part, o_part, o, S, G=G, GP=GP, D=D, BD=BD, num_warps=4)
    return o
