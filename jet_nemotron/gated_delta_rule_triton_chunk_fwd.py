"""Chunked gated delta rule, forward: four kernels (chunk BT = 64, per sequence and head).

With G the within-chunk cumulative sum of g,
Gamma[t, s] = exp(G_t - G_s) for s <= t, and q already L2-normalised and scaled:
  A   = strict_lower(beta_t Gamma[t, s] k_t.k_s)    T = (I + A)^-1          (`_prepare_kernel`)
  w   = T (beta exp(G) k)    u = T (beta v)                                   (`_wu_kernel`)
  v'  = u - w S              S <- exp(G_L) S + (k exp(G_L - G))^T v'          (`_fwd_h_kernel`, sequential)
  o   = exp(G) q S + (q k^T * Gamma) v'                                       (`_fwd_o_kernel`)
The q/k L2 norm is fused: every kernel that reads q or k loads whole rows (BK >= K) and normalises them in
registers. The one normalised tensor in memory is k for the sequential state pass, written by `_wu_kernel`,
because a norm on that pass's critical path cost it 1.4x. The backward (`gated_delta_rule_triton_chunk_bwd.py`)
reruns `prepare` (unless the forward's G and Ai are kept) and `wu_and_states` (unless its w, h and v' are kept).
"""

from __future__ import annotations

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

from . import gated_delta_rule_triton_launch as launch
from .gated_delta_rule_triton_launch import (
    CHUNK_BV,
    STATE_PASS_FWD,
    ChunkMeta,
    dot_precision,
    launch_pipelined,
    pow2_block,
)
from .gated_delta_rule_triton_tiles import (
    BT,
    _chunk_coords,
    _chunk_rows,
    _l2norm_rows,
    _load_G,
    _seq_bounds,
    _seq_chunks,
    _state_tile,
    _tile_rows,
)


@triton.jit
def _inv_unit_lower16(b_a, BC: tl.constexpr):
    """(I + A)^-1 for a strictly lower [BC, BC] block by forward substitution, row by row.

    Stable for any A, unlike the doubling series prod(I + A^(2^i)) whose terms grow combinatorially."""
    o_r = tl.arange(0, BC)
    b_x = tl.where(o_r[:, None] == o_r[None, :], 1.0, 0.0)
    for r in range(1, BC):
        b_ar = tl.sum(tl.where(o_r[:, None] == r, b_a, 0.0), 0)  # row r of A; zero at columns >= r
        b_xr = tl.sum(b_ar[:, None] * b_x, 0)  # rows < r of X are final
        b_x = tl.where(o_r[:, None] == r, b_x - b_xr[None, :], b_x)
    return b_x


@triton.jit
def _load_sub(k, beta, g, bos, L, i_t, i_h, c: tl.constexpr, H, K: tl.constexpr,
              BC: tl.constexpr, BK: tl.constexpr, USE_L2: tl.constexpr):
    """Rows c*BC .. c*BC+BC-1 of chunk i_t: normalised k [BC, BK] (input dtype), beta and g [BC] (fp32)."""
    o_t = i_t * 64 + c * BC + tl.arange(0, BC)
    m_t = o_t < L
    o_k = tl.arange(0, BK)
    r0, _ = _tile_rows(bos, i_t, i_h, H, 64)
    p_k = k + r0 * K + ((c * BC + tl.arange(0, BC)) * H)[:, None] * K + o_k[None, :]
    b_k = tl.load(p_k, mask=m_t[:, None] & (o_k[None, :] < K), other=0.0).to(tl.float32)
    b_k = _l2norm_rows(b_k, USE_L2).to(k.dtype.element_ty)
    b_b = tl.load(beta + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_g = tl.load(g + (bos + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    return b_k, b_b, b_g, o_t, m_t


@triton.jit
def _a_block(b_ki, b_bi, b_Gi, b_kj, b_Gj, DIAG: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr):
    """Block (i, j) of A = beta_t Gamma[t, s] k_t.k_s; strictly lower on the diagonal."""
    b_d = b_Gi[:, None] - b_Gj[None, :]
    b_a = tl.dot(b_ki, tl.trans(b_kj), input_precision=PREC) * b_bi[:, None]
    if DIAG:
        o_r = tl.arange(0, BC)
        m = o_r[:, None] > o_r[None, :]
        b_a = tl.where(m, b_a * tl.exp(tl.where(m, b_d, 0.0)), 0.0)  # mask before exp: G_t - G_s > 0 above
    else:
        b_a = b_a * tl.exp(b_d)
    return b_a


@triton.jit
def _store_row(p, b_0, b_1, b_2, b_3, m_t):
    """One row of 16x16 blocks of Ai: columns 0-15, 16-31, 32-47, 48-63 from p, rows masked by m_t."""
    DT = p.dtype.element_ty
    tl.store(p, b_0.to(DT), mask=m_t[:, None])
    tl.store(p + 16, b_1.to(DT), mask=m_t[:, None])
    tl.store(p + 32, b_2.to(DT), mask=m_t[:, None])
    tl.store(p + 48, b_3.to(DT), mask=m_t[:, None])


@triton.jit(do_not_specialize=["T", "NT"])
def _prepare_kernel(k, beta, g, G, Ai, cu_seqlens, chunk_indices, chunk_offsets, T, NT,
                    H, K: tl.constexpr, BK: tl.constexpr,
                    USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """Per chunk: G = cumsum(g) and Ai = (I + A)^-1 [BT, BT] by 16x16 diagonal inverses and block merges.

    With D_i the inverse of diagonal block i: T_ij = -D_i sum_{m=j}^{i-1} A_im T_mj for i > j."""
    BC: tl.constexpr = 16
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t, _ = _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN)
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    b_k0, b_b0, b_g0, o_t0, m_t0 = _load_sub(k, beta, g, bos, L, i_t, i_h, 0, H, K, BC, BK, USE_L2)
    b_k1, b_b1, b_g1, o_t1, m_t1 = _load_sub(k, beta, g, bos, L, i_t, i_h, 1, H, K, BC, BK, USE_L2)
    b_k2, b_b2, b_g2, o_t2, m_t2 = _load_sub(k, beta, g, bos, L, i_t, i_h, 2, H, K, BC, BK, USE_L2)
    b_k3, b_b3, b_g3, o_t3, m_t3 = _load_sub(k, beta, g, bos, L, i_t, i_h, 3, H, K, BC, BK, USE_L2)
    b_G0 = tl.cumsum(b_g0, 0)
    b_G1 = tl.cumsum(b_g1, 0) + tl.sum(b_g0, 0)
    b_G2 = tl.cumsum(b_g2, 0) + tl.sum(b_g0, 0) + tl.sum(b_g1, 0)
    b_G3 = tl.cumsum(b_g3, 0) + tl.sum(b_g0, 0) + tl.sum(b_g1, 0) + tl.sum(b_g2, 0)
    tl.store(G + (bos + o_t0) * H + i_h, b_G0, mask=m_t0)
    tl.store(G + (bos + o_t1) * H + i_h, b_G1, mask=m_t1)
    tl.store(G + (bos + o_t2) * H + i_h, b_G2, mask=m_t2)
    tl.store(G + (bos + o_t3) * H + i_h, b_G3, mask=m_t3)

    # diagonal inverses
    b_D0 = _inv_unit_lower16(_a_block(b_k0, b_b0, b_G0, b_k0, b_G0, True, BC, PREC), BC)
    b_D1 = _inv_unit_lower16(_a_block(b_k1, b_b1, b_G1, b_k1, b_G1, True, BC, PREC), BC)
    b_D2 = _inv_unit_lower16(_a_block(b_k2, b_b2, b_G2, b_k2, b_G2, True, BC, PREC), BC)
    b_D3 = _inv_unit_lower16(_a_block(b_k3, b_b3, b_G3, b_k3, b_G3, True, BC, PREC), BC)
    b_A10 = _a_block(b_k1, b_b1, b_G1, b_k0, b_G0, False, BC, PREC)
    b_A20 = _a_block(b_k2, b_b2, b_G2, b_k0, b_G0, False, BC, PREC)
    b_A21 = _a_block(b_k2, b_b2, b_G2, b_k1, b_G1, False, BC, PREC)
    b_A30 = _a_block(b_k3, b_b3, b_G3, b_k0, b_G0, False, BC, PREC)
    b_A31 = _a_block(b_k3, b_b3, b_G3, b_k1, b_G1, False, BC, PREC)
    b_A32 = _a_block(b_k3, b_b3, b_G3, b_k2, b_G2, False, BC, PREC)
    # block merges in exact fp32: T entries can be large and these dots are tiny
    b_T10 = -tl.dot(b_D1, tl.dot(b_A10, b_D0, input_precision="ieee"), input_precision="ieee")
    b_T21 = -tl.dot(b_D2, tl.dot(b_A21, b_D1, input_precision="ieee"), input_precision="ieee")
    b_T32 = -tl.dot(b_D3, tl.dot(b_A32, b_D2, input_precision="ieee"), input_precision="ieee")
    b_T20 = -tl.dot(b_D2, tl.dot(b_A20, b_D0, input_precision="ieee")
                    + tl.dot(b_A21, b_T10, input_precision="ieee"), input_precision="ieee")
    b_T31 = -tl.dot(b_D3, tl.dot(b_A31, b_D1, input_precision="ieee")
                    + tl.dot(b_A32, b_T21, input_precision="ieee"), input_precision="ieee")
    b_T30 = -tl.dot(b_D3, tl.dot(b_A30, b_D0, input_precision="ieee")
                    + tl.dot(b_A31, b_T10, input_precision="ieee")
                    + tl.dot(b_A32, b_T20, input_precision="ieee"), input_precision="ieee")

    # write the 4x4 blocks of Ai [BT, BT], zeros above the diagonal so consumers can load the full tile
    o_c = tl.arange(0, BC)
    b_z = tl.zeros([BC, BC], dtype=tl.float32)
    r0, _ = _tile_rows(bos, i_t, i_h, H, 64)
    Ai += r0 * 64
    p0 = Ai + (o_c * H)[:, None] * 64 + o_c[None, :]
    p1 = Ai + ((BC + o_c) * H)[:, None] * 64 + o_c[None, :]
    p2 = Ai + ((2 * BC + o_c) * H)[:, None] * 64 + o_c[None, :]
    p3 = Ai + ((3 * BC + o_c) * H)[:, None] * 64 + o_c[None, :]
    _store_row(p0, b_D0, b_z, b_z, b_z, m_t0)
    _store_row(p1, b_T10, b_D1, b_z, b_z, m_t1)
    _store_row(p2, b_T20, b_T21, b_D2, b_z, m_t2)
    _store_row(p3, b_T30, b_T31, b_T32, b_D3, m_t3)


@triton.jit(do_not_specialize=["T", "NT"])
def _wu_kernel(k, v, beta, G, Ai, w, u, kn, cu_seqlens, chunk_indices, chunk_offsets, T, NT,
               H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """w = Ai (beta exp(G) k) [BT, K] and u = Ai (beta v) [BT, V] for one chunk; with USE_L2 also the normalised
    k, for the sequential state pass (a norm inside its loop made that pass 1.4x slower, 2B shapes at 64K, H100)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, _, bos, L, o_t, m_t, row = _chunk_rows(cu_seqlens, chunk_indices, chunk_offsets, i_c, i_h, T, NT,
                                                  H, BT, IS_VARLEN)
    r0, rel = _tile_rows(bos, i_t, i_h, H, BT)
    k += r0 * K
    kn += r0 * K
    w += r0 * K
    v += r0 * V
    u += r0 * V
    Ai += r0 * BT
    DT = k.dtype.element_ty
    o_k = tl.arange(0, BK)
    b_ai = tl.load(Ai + rel[:, None] * BT + tl.arange(0, BT)[None, :], mask=m_t[:, None], other=0.0).to(DT)
    b_b = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)
    b_G, _ = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    m_k = m_t[:, None] & (o_k[None, :] < K)
    b_k = _l2norm_rows(tl.load(k + rel[:, None] * K + o_k[None, :], mask=m_k, other=0.0).to(tl.float32), USE_L2)
    if USE_L2:
        tl.store(kn + rel[:, None] * K + o_k[None, :], b_k.to(kn.dtype.element_ty), mask=m_k)
    b_w = tl.dot(b_ai, (b_k * (b_b * tl.exp(b_G))[:, None]).to(DT), input_precision=PREC)
    tl.store(w + rel[:, None] * K + o_k[None, :], b_w.to(w.dtype.element_ty), mask=m_k)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = m_t[:, None] & (o_v[None, :] < V)
        b_v = tl.load(v + rel[:, None] * V + o_v[None, :], mask=m_v, other=0.0).to(tl.float32)
        b_u = tl.dot(b_ai, (b_v * b_b[:, None]).to(DT), input_precision=PREC)
        tl.store(u + rel[:, None] * V + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_v)


@triton.jit(do_not_specialize=["T"])
def _fwd_h_kernel(k, w, u, G, h, v_new, h0, ht, cu_seqlens, chunk_offsets, T,
                  H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """Sequential over the chunks of one sequence and head, for a BV slice of the state.

    k is already L2-normalised (`_wu_kernel`). Stores h[chunk] (the state entering it) and v' = u - w S; carries
    S [BK, BV] in fp32 registers."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_h = i_nh % H
    bos, L, NT, boh = _seq_chunks(cu_seqlens, chunk_offsets, i_nh // H, T, BT, IS_VARLEN)
    DT = k.dtype.element_ty
    o_k, o_v, m_kv, p_state = _state_tile(i_v, i_nh, K, V, BK, BV)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.0)
    for i_t in range(NT):
        tl.store(h + ((boh + i_t) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :], b_h.to(h.dtype.element_ty),
                 mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < L
        row = (bos + o_t) * H + i_h
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_w = tl.load(w + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_v = tl.load(u + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_v -= tl.dot(b_w, b_h.to(DT), input_precision=PREC)
        tl.store(v_new + row[:, None] * V + o_v[None, :], b_v.to(v_new.dtype.element_ty), mask=m_tv)
        b_G, b_Gl = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
        b_kt = tl.load(k + row[None, :] * K + o_k[:, None], mask=(o_k[:, None] < K) & m_t[None, :], other=0.0)
        b_v = tl.where(m_t[:, None], b_v * tl.exp(b_Gl - b_G)[:, None], 0.0)
        b_h = b_h * tl.exp(b_Gl) + tl.dot(b_kt.to(DT), b_v.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


@triton.jit(do_not_specialize=["T", "NT"])
def _fwd_o_kernel(q, k, v_new, h, G, o, cu_seqlens, chunk_indices, chunk_offsets, scale, T, NT,
                  H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """o = exp(G) q S + (q k^T * Gamma) v' for one chunk, walking V in BV slices: q, k and q k^T * Gamma once a chunk.
    One program a slice, each recomputing them, made the chunked forward 1.08x slower (H100, 2B shapes, 8 x 2,048
    tokens, bf16: 0.917 against 0.847 ms; benchmarks/results/profiles/jetblock_kernels_h100/).

    PREC is "ieee" for fp32 inputs. Under a strong decay each output is mostly its own q.k v' term, and the
    decay's gradient is the small rest: TF32's 5e-4 on these products swamped it (A_log gradients 20% off in a
    tiny fp32 model, found with TF32 emulated on the interpreter; with these three products in IEEE and TF32
    everywhere else the worst gradient error fell from 2e-1 to 1.3e-2). bf16 inputs are unaffected."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, i_ch, bos, L, o_t, m_t, row = _chunk_rows(cu_seqlens, chunk_indices, chunk_offsets, i_c, i_h, T, NT,
                                                  H, BT, IS_VARLEN)
    r0, rel = _tile_rows(bos, i_t, i_h, H, BT)
    q += r0 * K
    k += r0 * K
    v_new += r0 * V
    o += r0 * V
    DT = q.dtype.element_ty
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    b_q = _l2norm_rows(tl.load(q + rel[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_k = _l2norm_rows(tl.load(k + rel[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_q = (b_q * scale).to(DT)
    b_k = b_k.to(DT)
    b_G, _ = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    m_ts = o_t[:, None] >= o_t[None, :]
    b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_a = tl.where(m_ts, b_a * tl.exp(tl.where(m_ts, b_G[:, None] - b_G[None, :], 0.0)), 0.0).to(DT)
    p_h = h + (i_ch.to(tl.int64) * H + i_h) * K * V
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=(o_k[:, None] < K) & (o_v[None, :] < V), other=0.0)
        b_o = tl.dot(b_q, b_h, input_precision=PREC) * tl.exp(b_G)[:, None]
        b_v = tl.load(v_new + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_o += tl.dot(b_a, b_v, input_precision=PREC)
        tl.store(o + rel[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


# ---------------------------------------------------------------------------------------------------- host side


def prepare(k, beta, g, meta: ChunkMeta, use_l2: bool):
    """G = the within-chunk cumulative sum of g [B, T, H] fp32 and Ai = (I + A)^-1 per chunk [B, T, H, BT]."""
    B, T, H, K = k.shape
    G = torch.empty(B, T, H, device=k.device, dtype=torch.float32)
    Ai = torch.empty(B, T, H, BT, device=k.device, dtype=k.dtype)
    _prepare_kernel[(meta.total_chunks, H)](k, beta, g, G, Ai, *meta.args(), T, meta.NT, H=H, K=K, BK=pow2_block(K),
                                            USE_L2=use_l2, IS_VARLEN=meta.varlen, PREC=dot_precision(k.dtype),
                                            num_warps=launch.CHUNK_WARPS["prepare"])
    return G, Ai


def wu_and_states(k, v, beta, G, Ai, h0, want_ht, meta: ChunkMeta, use_l2: bool):
    """w [B, T, H, K], the state entering each chunk h [chunks, H, K, V], v' = u - w S [B, T, H, V] and, if
    `want_ht`, the final state [N, H, K, V] fp32."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    BK = pow2_block(K)
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    kn = torch.empty_like(k) if use_l2 else k
    _wu_kernel[(meta.total_chunks, H)](k, v, beta, G, Ai, w, u, kn, *meta.args(), T, meta.NT, H=H, K=K, V=V, BT=BT,
                                      BK=BK, BV=CHUNK_BV, USE_L2=use_l2, IS_VARLEN=meta.varlen,
                                      PREC=dot_precision(k.dtype), num_warps=launch.CHUNK_WARPS["wu"])
    h = torch.empty(meta.total_chunks, H, K, V, device=k.device, dtype=k.dtype)
    v_new = torch.empty_like(u)
    ht = torch.empty(meta.N, H, K, V, device=k.device, dtype=torch.float32) if want_ht else None
    BV = STATE_PASS_FWD["BV"]
    launch_pipelined(_fwd_h_kernel, (triton.cdiv(V, BV), meta.N * H), kn, w, u, G, h, v_new, h0, ht, meta.cu,
                     meta.chunk_offsets, T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_H0=h0 is not None,
                     STORE_HT=want_ht, IS_VARLEN=meta.varlen, PREC=dot_precision(k.dtype),
                     stages=STATE_PASS_FWD["stages"], num_warps=STATE_PASS_FWD["num_warps"])
    return w, h, v_new, ht


def chunk_fwd(q, k, v, g, beta, scale, h0, want_ht, meta: ChunkMeta, use_l2: bool):
    """Forward on contiguous [B, T, H, *] inputs; returns o, ht, what the backward keeps (G, Ai) and what it may keep
    instead of recomputing, (w, h, v')."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    G, Ai = prepare(k, beta, g, meta, use_l2)
    w, h, v_new, ht = wu_and_states(k, v, beta, G, Ai, h0, want_ht, meta, use_l2)
    o = torch.empty_like(v)
    _fwd_o_kernel[(meta.total_chunks, H)](
        q, k, v_new, h, G, o, *meta.args(), scale, T, meta.NT, H=H, K=K, V=V, BT=BT, BK=pow2_block(K), BV=CHUNK_BV,
        USE_L2=use_l2, IS_VARLEN=meta.varlen, PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=launch.CHUNK_WARPS["fwd_o"])
    return o, ht, G, Ai, (w, h, v_new)
