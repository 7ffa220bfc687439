"""Gated delta rule in Triton: chunked forward/backward, fused recurrent forward, one-token decode step.

Same signatures and shapes as `gated_delta_rule_ref.py` (q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H];
states [N, H, K, V] fp32; `cu_seqlens` [N + 1] packs N sequences into a batch of 1). Accumulation is fp32;
the state and the log decay are fp32; the intermediates w, u, v_new, h are stored in the inputs' dtype. fp32 inputs
multiply in IEEE fp32 unless torch allows TF32 (`_dot_precision`).

Chunked algorithm (chunk BT = 64, per sequence and head), with G the within-chunk cumulative sum of g,
Gamma[t, s] = exp(G_t - G_s) for s <= t, and q already L2-normalised and scaled:
  A   = strict_lower(beta_t Gamma[t, s] k_t.k_s)    T = (I + A)^-1          (`_prepare_kernel`)
  w   = T (beta exp(G) k)    u = T (beta v)                                   (`_wu_kernel`)
  v'  = u - w S              S <- exp(G_L) S + (k exp(G_L - G))^T v'          (`_fwd_h_kernel`, sequential)
  o   = exp(G) q S + (q k^T * Gamma) v'                                       (`_fwd_o_kernel`)
The backward recomputes w, u, S and v' and runs three kernels: dv_local = (q k^T * Gamma)^T do (parallel),
the reverse state recursion dS (sequential, also finishing dv'), and one per-chunk kernel that gives
dq, dk, dv, dbeta and dg (the last through a reverse cumulative sum of dG within the chunk).

The q/k L2 norm is fused: every kernel that reads q or k loads whole rows (BK >= K) and normalises them in
registers; the backward applies the norm's Jacobian at the end. The one normalised tensor in memory is k for the
sequential state pass, written by `_wu_kernel`, because a norm on that pass's critical path cost it 1.4x.

Gradients of `fused_recurrent_gated_delta_rule_triton` come from the chunked backward (same function).
"""

from __future__ import annotations

import os

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

BT = 64  # chunk length; also the row count of the per-chunk matrices
# Route the backward's transposes of computed tiles through memory (see `_trans_tile`); "0"/"1" forces it.
SAFE_TRANS = os.environ.get("JET_NEMOTRON_SAFE_TRANS", "0") == "1"
EPS = 1e-6  # inside rsqrt(sum x^2 + eps), as the reference


# ----------------------------------------------------------------------------------------------------------
# small jitted helpers


@triton.jit
def _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    """First token and length of sequence i_n in the flattened [B*T] token axis."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos - bos


@triton.jit
def _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN: tl.constexpr):
    """Sequence, chunk within it, and the chunk's row in the per-chunk state tensor h."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_c)
        i_t = tl.load(chunk_indices + 2 * i_c + 1)
        i_ch = tl.load(chunk_offsets + i_n) + i_t
    else:
        i_n = i_c // NT
        i_t = i_c % NT
        i_ch = i_c
    return i_n, i_t, i_ch


@triton.jit
def _seq_chunks(cu_seqlens, chunk_offsets, i_n, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """For the sequential kernels: first token, length, chunk count and first row in h of sequence i_n."""
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    NT = tl.cdiv(L, BT)
    if IS_VARLEN:
        boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        boh = i_n.to(tl.int64) * NT
    return bos, L, NT, boh


@triton.jit
def _state_tile(i_v, i_nh, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets, mask and flat index of the [BK, BV] slice i_v of state i_nh in an [N*H, K, V] tensor."""
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    return o_k, o_v, m_kv, i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]


@triton.jit
def _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT: tl.constexpr):
    """Cumulative decay of a chunk's rows and of its last valid row; padding rows repeat the last value,
    so exp(G_t - G_s) stays <= 1 there (a zero would overflow exp and turn 0 * inf into NaN)."""
    b_Gl = tl.load(G + (bos + tl.minimum(i_t * BT + BT, L) - 1) * H + i_h)
    b_G = tl.where(m_t, tl.load(G + row, mask=m_t, other=0.0), b_Gl)
    return b_G, b_Gl


@triton.jit
def _l2norm_rows(b_x, USE_L2: tl.constexpr):
    """Normalise each row of a [rows, BK] fp32 block (padding columns are zero, so they do not count)."""
    if USE_L2:
        b_x = b_x * tl.rsqrt(tl.sum(b_x * b_x, 1) + 1e-6)[:, None]
    return b_x


@triton.jit
def _l2norm_cols(b_x, USE_L2: tl.constexpr):
    """Same as `_l2norm_rows` for a transposed [BK, cols] block."""
    if USE_L2:
        b_x = b_x * tl.rsqrt(tl.sum(b_x * b_x, 0) + 1e-6)[None, :]
    return b_x


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


# ----------------------------------------------------------------------------------------------------------
# forward kernels


@triton.jit
def _load_sub(k, beta, g, bos, L, i_t, i_h, c: tl.constexpr, H, K: tl.constexpr,
              BC: tl.constexpr, BK: tl.constexpr, USE_L2: tl.constexpr):
    """Rows c*BC .. c*BC+BC-1 of chunk i_t: normalised k [BC, BK] (input dtype), beta and g [BC] (fp32)."""
    o_t = i_t * 64 + c * BC + tl.arange(0, BC)
    m_t = o_t < L
    o_k = tl.arange(0, BK)
    p_k = k + ((bos + o_t) * H + i_h)[:, None] * K + o_k[None, :]
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
    DT = Ai.dtype.element_ty
    o_c = tl.arange(0, BC)
    b_z = tl.zeros([BC, BC], dtype=tl.float32)
    p0 = Ai + ((bos + o_t0) * H + i_h)[:, None] * 64 + o_c[None, :]
    p1 = Ai + ((bos + o_t1) * H + i_h)[:, None] * 64 + o_c[None, :]
    p2 = Ai + ((bos + o_t2) * H + i_h)[:, None] * 64 + o_c[None, :]
    p3 = Ai + ((bos + o_t3) * H + i_h)[:, None] * 64 + o_c[None, :]
    tl.store(p0, b_D0.to(DT), mask=m_t0[:, None])
    tl.store(p0 + 16, b_z.to(DT), mask=m_t0[:, None])
    tl.store(p0 + 32, b_z.to(DT), mask=m_t0[:, None])
    tl.store(p0 + 48, b_z.to(DT), mask=m_t0[:, None])
    tl.store(p1, b_T10.to(DT), mask=m_t1[:, None])
    tl.store(p1 + 16, b_D1.to(DT), mask=m_t1[:, None])
    tl.store(p1 + 32, b_z.to(DT), mask=m_t1[:, None])
    tl.store(p1 + 48, b_z.to(DT), mask=m_t1[:, None])
    tl.store(p2, b_T20.to(DT), mask=m_t2[:, None])
    tl.store(p2 + 16, b_T21.to(DT), mask=m_t2[:, None])
    tl.store(p2 + 32, b_D2.to(DT), mask=m_t2[:, None])
    tl.store(p2 + 48, b_z.to(DT), mask=m_t2[:, None])
    tl.store(p3, b_T30.to(DT), mask=m_t3[:, None])
    tl.store(p3 + 16, b_T31.to(DT), mask=m_t3[:, None])
    tl.store(p3 + 32, b_T32.to(DT), mask=m_t3[:, None])
    tl.store(p3 + 48, b_D3.to(DT), mask=m_t3[:, None])


@triton.jit(do_not_specialize=["T", "NT"])
def _wu_kernel(k, v, beta, G, Ai, w, u, kn, cu_seqlens, chunk_indices, chunk_offsets, T, NT,
               H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """w = Ai (beta exp(G) k) [BT, K] and u = Ai (beta v) [BT, V] for one chunk; with USE_L2 also the normalised
    k, for the sequential state pass (a norm inside its loop made that pass 1.4x slower, 2B shapes at 64K, H100)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t, _ = _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN)
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    DT = k.dtype.element_ty
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < L
    row = (bos + o_t) * H + i_h
    o_k = tl.arange(0, BK)
    b_ai = tl.load(Ai + row[:, None] * BT + tl.arange(0, BT)[None, :], mask=m_t[:, None], other=0.0).to(DT)
    b_b = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)
    b_G, _ = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    m_k = m_t[:, None] & (o_k[None, :] < K)
    b_k = _l2norm_rows(tl.load(k + row[:, None] * K + o_k[None, :], mask=m_k, other=0.0).to(tl.float32), USE_L2)
    if USE_L2:
        tl.store(kn + row[:, None] * K + o_k[None, :], b_k.to(kn.dtype.element_ty), mask=m_k)
    b_w = tl.dot(b_ai, (b_k * (b_b * tl.exp(b_G))[:, None]).to(DT), input_precision=PREC)
    tl.store(w + row[:, None] * K + o_k[None, :], b_w.to(w.dtype.element_ty), mask=m_k)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = m_t[:, None] & (o_v[None, :] < V)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_v, other=0.0).to(tl.float32)
        b_u = tl.dot(b_ai, (b_v * b_b[:, None]).to(DT), input_precision=PREC)
        tl.store(u + row[:, None] * V + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_v)


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
    """o = exp(G) q S + (q k^T * Gamma) v' for one chunk and BV slice.

    PREC is "ieee" for fp32 inputs. Under a strong decay each output is mostly its own q.k v' term, and the
    decay's gradient is the small rest: TF32's 5e-4 on these products swamped it (A_log gradients 20% off in a
    tiny fp32 model, found with TF32 emulated on the interpreter; with these three products in IEEE and TF32
    everywhere else the worst gradient error fell from 2e-1 to 1.3e-2). bf16 inputs are unaffected."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t, i_ch = _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN)
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    DT = q.dtype.element_ty
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < L
    row = (bos + o_t) * H + i_h
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    b_q = _l2norm_rows(tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_k = _l2norm_rows(tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_q = (b_q * scale).to(DT)
    b_k = b_k.to(DT)
    b_G, _ = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    b_h = tl.load(h + (i_ch.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=(o_k[:, None] < K) & (o_v[None, :] < V), other=0.0)
    b_o = tl.dot(b_q, b_h, input_precision=PREC) * tl.exp(b_G)[:, None]
    m_ts = o_t[:, None] >= o_t[None, :]
    b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_a = tl.where(m_ts, b_a * tl.exp(tl.where(m_ts, b_G[:, None] - b_G[None, :], 0.0)), 0.0)
    b_v = tl.load(v_new + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_o += tl.dot(b_a.to(DT), b_v, input_precision=PREC)
    tl.store(o + row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------------------
# backward kernels


@triton.jit(do_not_specialize=["T", "NT"])
def _bwd_dv_local_kernel(q, k, G, do, dv, cu_seqlens, chunk_indices, chunk_offsets, scale, T, NT,
                         H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """The in-chunk part of dv': (q k^T * Gamma)^T do."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t, _ = _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN)
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    DT = q.dtype.element_ty
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < L
    row = (bos + o_t) * H + i_h
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    b_q = _l2norm_rows(tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_k = _l2norm_rows(tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_G, _ = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    # [s, t] = k_s.q_t Gamma[t, s] for t >= s
    m_st = o_t[:, None] <= o_t[None, :]
    b_at = tl.dot(b_k.to(DT), tl.trans((b_q * scale).to(DT)), input_precision=PREC)
    b_at = tl.where(m_st, b_at * tl.exp(tl.where(m_st, b_G[None, :] - b_G[:, None], 0.0)), 0.0)
    b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_dv = tl.dot(b_at.to(DT), b_do.to(DT), input_precision=PREC)
    tl.store(dv + row[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit(do_not_specialize=["T"])
def _bwd_dh_kernel(q, k, w, G, do, dv_local, dv2, dh, dht, dh0, cu_seqlens, chunk_offsets, scale, T,
                   H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, USE_L2: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """Reverse state recursion over the chunks of one sequence and head, for a BV slice.

    With dS the gradient of the state leaving the chunk: stores dh[chunk] = dS, finishes
    dv' = dv_local + (k exp(G_L - G)) dS, then dS <- exp(G_L) dS + (exp(G) q)^T do - w^T dv'."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_h = i_nh % H
    bos, L, NT, boh = _seq_chunks(cu_seqlens, chunk_offsets, i_nh // H, T, BT, IS_VARLEN)
    DT = q.dtype.element_ty
    o_k, o_v, m_kv, p_state = _state_tile(i_v, i_nh, K, V, BK, BV)
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += tl.load(dht + p_state, mask=m_kv, other=0.0)
    for j in range(NT):
        i_t = NT - 1 - j
        tl.store(dh + ((boh + i_t) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                 b_dh.to(dh.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < L
        row = (bos + o_t) * H + i_h
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_G, b_Gl = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
        b_k = _l2norm_rows(tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32),
                           USE_L2)
        b_k = tl.where(m_t[:, None], b_k * tl.exp(b_Gl - b_G)[:, None], 0.0)
        b_dv = tl.load(dv_local + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_dv += tl.dot(b_k.to(DT), b_dh.to(DT), input_precision=PREC)
        tl.store(dv2 + row[:, None] * V + o_v[None, :], b_dv.to(dv2.dtype.element_ty), mask=m_tv)
        b_qt = _l2norm_cols(tl.load(q + row[None, :] * K + o_k[:, None], mask=(o_k[:, None] < K) & m_t[None, :], other=0.0).to(tl.float32),
                            USE_L2)
        b_qt = b_qt * (scale * tl.exp(b_G))[None, :]
        b_wt = tl.load(w + row[None, :] * K + o_k[:, None], mask=(o_k[:, None] < K) & m_t[None, :], other=0.0)
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
        b_dh = (b_dh * tl.exp(b_Gl) + tl.dot(b_qt.to(DT), b_do, input_precision=PREC)
                - tl.dot(b_wt, b_dv.to(DT), input_precision=PREC))
    if STORE_DH0:
        tl.store(dh0 + p_state, b_dh, mask=m_kv)


@triton.jit
def _trans_tile(b_x, scratch, i_prog, BT: tl.constexpr, SAFE_TRANS: tl.constexpr):
    """Transpose of a computed [BT, BT] fp32 tile. With SAFE_TRANS the tile goes through a scratch buffer:
    Triton 3.4-3.7.0 on Hopper can miscompile tl.trans of a dot result fed to another dot (fla #640)."""
    if SAFE_TRANS:
        o_r = tl.arange(0, BT)
        p_scratch = scratch + i_prog.to(tl.int64) * BT * BT
        tl.debug_barrier()  # an earlier reader of the scratch tile must be done before it is overwritten
        tl.store(p_scratch + o_r[:, None] * BT + o_r[None, :], b_x)
        tl.debug_barrier()
        b_xt = tl.load(p_scratch + o_r[None, :] * BT + o_r[:, None])
    else:
        b_xt = tl.trans(b_x)
    return b_xt


@triton.jit(do_not_specialize=["T", "NT"])
def _bwd_chunk_kernel(q, k, v, beta, G, Ai, h, dh, v_new, do, dv2, dq, dk, dv, dbeta, dg, scratch,
                      cu_seqlens, chunk_indices, chunk_offsets, scale, T, NT,
                      H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr,
                      SAFE_TRANS: tl.constexpr, DOT_BF16: tl.constexpr, PREC: tl.constexpr):
    """All per-chunk gradients once dh and dv' are known: dq, dk, dv, dbeta, dg (see the module docstring).

    S = h[chunk] (state in), dS = dh[chunk] (gradient of the state out), q~ = scale * q:
      dq~ = exp(G) do S^T + (do v'^T * Gamma) k       dk += (do v'^T * Gamma)^T q~ + exp(G_L - G) v' dS^T
      dw  = -dv' S^T; then through the WY form: dk, dbeta, dv, dG from dw and du = dv'.
    dG collects every place G appears; dg is its reverse cumulative sum within the chunk, and the
    gradient of G_L (the whole chunk's decay) is added at the last row so the sum carries it to every row."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t, i_ch = _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN)
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    DT = q.dtype.element_ty
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < L
    row = (bos + o_t) * H + i_h
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    b_qr = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_kr = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_qn = _l2norm_rows(b_qr, USE_L2)
    b_kn = _l2norm_rows(b_kr, USE_L2)
    b_q = b_qn * scale
    b_b = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)
    i_last = tl.minimum(i_t * BT + BT, L) - 1
    b_G, b_Gl = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    b_ai = tl.load(Ai + row[:, None] * BT + tl.arange(0, BT)[None, :], mask=m_t[:, None], other=0.0).to(DT)
    b_ait = tl.trans(b_ai)

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do S^T
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # v' dS^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # dv' S^T
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)  # do v'^T
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)  # du (beta v)^T, dw's part added below
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dgl = tl.zeros([BK, BV], dtype=tl.float32)  # S * dS, summed at the end
    p_h = h + (i_ch.to(tl.int64) * H + i_h) * K * V
    p_dh = dh + (i_ch.to(tl.int64) * H + i_h) * K * V
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_vn = tl.load(v_new + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
        b_du = tl.load(dv2 + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dks += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw += tl.dot(b_du, tl.trans(b_h), input_precision=PREC)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dgl += b_h.to(tl.float32) * b_dh.to(tl.float32)
        b_dT += tl.dot(b_du, tl.trans((b_v * b_b[:, None]).to(DT)), input_precision=PREC)
        b_dvb = tl.dot(b_ait, b_du, input_precision=PREC)  # Ai^T du: gradient of beta v
        tl.store(dv + row[:, None] * V + o_v[None, :], (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dvb * b_v, 1)

    b_eG = tl.exp(b_G)
    m_ts = o_t[:, None] >= o_t[None, :]
    b_gam = tl.where(m_ts, tl.exp(tl.where(m_ts, b_G[:, None] - b_G[None, :], 0.0)), 0.0)
    # output, inter-chunk part
    b_dq = b_dq * b_eG[:, None]
    b_dG = tl.sum(b_dq * b_q, 1)
    # output, intra-chunk part
    # Operands of the products below: fp32 when BK <= 64; bf16 when BK = 128 (DOT_BF16), because on Hopper
    # each operand is staged in shared memory and fp32 [BT, 128] operands overflow the 227 KB of an SM
    # (measured 245 KB for bf16 inputs, 295 KB for fp32). Accumulation stays fp32.
    if DOT_BF16:
        DT = tl.bfloat16
    else:
        DT = tl.float32
    b_ait = b_ait.to(DT)
    b_kd = b_kn.to(DT)
    b_dsg = b_ds * b_gam
    b_dq += tl.dot(b_dsg.to(DT), b_kd, input_precision=PREC)
    i_prog = i_c * H + i_h  # this program's scratch tile
    b_dk = tl.dot(_trans_tile(b_dsg, scratch, i_prog, BT, SAFE_TRANS).to(DT), b_q.to(DT), input_precision=PREC)
    b_p = b_dsg * tl.dot(b_q.to(DT), tl.trans(b_kd), input_precision=PREC)
    b_dG += tl.sum(b_p, 1) - tl.sum(b_p, 0)
    # state update S' = exp(G_L) S + (k exp(G_L - G))^T v'
    b_dks = tl.where(m_t[:, None], b_dks * tl.exp(b_Gl - b_G)[:, None], 0.0)
    b_dk += b_dks
    b_kdks = tl.sum(b_kn * b_dks, 1)
    b_dG -= b_kdks
    b_dGl = tl.exp(b_Gl) * tl.sum(tl.sum(b_dgl, 1), 0) + tl.sum(b_kdks, 0)
    # WY form: w = Ai (beta exp(G) k), u = Ai (beta v), Ai = (I + A)^-1
    b_dw = -b_dw
    b_bg = b_b * b_eG
    b_dT += tl.dot(b_dw.to(DT), tl.trans((b_kn * b_bg[:, None]).to(DT)), input_precision=PREC)
    b_dkb = tl.dot(b_ait, b_dw.to(DT), input_precision=PREC)  # gradient of beta exp(G) k
    b_dk += b_dkb * b_bg[:, None]
    b_tmp = tl.sum(b_dkb * b_kn, 1)
    b_db += b_tmp * b_eG
    b_dG += b_tmp * b_bg
    m_strict = o_t[:, None] > o_t[None, :]
    b_dA = -tl.dot(tl.dot(b_ait, b_dT.to(DT), input_precision=PREC).to(DT), b_ait, input_precision=PREC)
    b_dA = tl.where(m_strict, b_dA * b_gam, 0.0)  # dA * Gamma, strictly lower
    b_kk = tl.dot(b_kd, tl.trans(b_kd), input_precision=PREC)
    b_db += tl.sum(b_dA * b_kk, 1)
    b_z = b_dA * b_b[:, None]
    b_dk += tl.dot((b_z + _trans_tile(b_z, scratch, i_prog, BT, SAFE_TRANS)).to(DT), b_kd, input_precision=PREC)
    b_za = b_z * b_kk  # dA * A
    b_dG += tl.sum(b_za, 1) - tl.sum(b_za, 0)
    b_dG += tl.where(o_t == i_last, b_dGl, 0.0)
    b_dG = tl.where(m_t, b_dG, 0.0)
    b_dg = tl.sum(b_dG, 0) - tl.cumsum(b_dG, 0) + b_dG  # reverse cumulative sum
    # through the L2 norm: dx = (dxn - xn (xn.dxn)) / ||x||
    b_dq = b_dq * scale
    if USE_L2:
        b_dq = (b_dq - b_qn * tl.sum(b_dq * b_qn, 1)[:, None]) * tl.rsqrt(tl.sum(b_qr * b_qr, 1) + 1e-6)[:, None]
        b_dk = (b_dk - b_kn * tl.sum(b_dk * b_kn, 1)[:, None]) * tl.rsqrt(tl.sum(b_kr * b_kr, 1) + 1e-6)[:, None]
    tl.store(dq + row[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + row[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + row, b_db.to(dbeta.dtype.element_ty), mask=m_t)
    tl.store(dg + row, b_dg.to(dg.dtype.element_ty), mask=m_t)


# ----------------------------------------------------------------------------------------------------------
# recurrent forward and decode step


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


# ----------------------------------------------------------------------------------------------------------
# host side


def _dot_precision(dtype: torch.dtype) -> str:
    """How the kernels multiply fp32 tiles: IEEE, unless TF32 is allowed for fp32 matmuls
    (`torch.backends.cuda.matmul.allow_tf32` or `torch.set_float32_matmul_precision("high")`), as PyTorch's own
    matmuls do. Triton's own default is TF32, which put fp32 training gradients 3x further from the exact ones than
    the reference path's under TF32 (A_log 2.7e-2 against 8.4e-3, H100). bf16 tiles are unaffected (wgmma either
    way), so bf16 inputs keep "tf32" and their speed."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"


def _pow2(n: int) -> int:
    # at least 32: with a 16-wide K block the backward kernels read out of bounds on Hopper with Triton 3.6
    # (illegal address at K = 16 on an H200, with or without SAFE_TRANS; K = 16 padded to 32 matches the reference)
    return max(32, triton.next_power_of_2(n))


def _launch_pipelined(kernel, grid, *args, stages: int = 2, **kwargs):
    """Launch with `stages` software-pipeline stages, or fewer where the stages' shared-memory buffers do not fit
    (fp32 BK = 128 tiles of q, k and w in the state loops need more than a Hopper SM's 227 KB at 3 stages)."""
    for n in range(stages, 0, -1):
        try:
            return kernel[grid](*args, num_stages=n, **kwargs)
        except OutOfResources:
            if n == 1:
                raise


class _Meta:
    """Flattened-token bookkeeping shared by forward and backward: N sequences, chunk tables when packed."""

    def __init__(self, B: int, T: int, cu_seqlens: torch.Tensor | None, device):
        self.varlen = cu_seqlens is not None
        self.T = T  # per-sequence length when not packed; unused otherwise
        if self.varlen:
            if B != 1:
                raise ValueError(f"cu_seqlens needs a batch of 1 packed sequence, got batch {B}")
            bounds = cu_seqlens.tolist()  # one host sync per call, as the chunk table is host-built
            self.N = len(bounds) - 1
            n_chunks = [triton.cdiv(bounds[i + 1] - bounds[i], BT) for i in range(self.N)]
            idx = [(i, j) for i in range(self.N) for j in range(n_chunks[i])]
            offsets = [0]
            for c in n_chunks:
                offsets.append(offsets[-1] + c)
            self.cu = cu_seqlens.to(device=device, dtype=torch.int32)
            self.chunk_indices = torch.tensor(idx or [(0, 0)], dtype=torch.int32, device=device).flatten()
            self.chunk_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
            self.NT = 0  # unused when packed
            self.total_chunks = len(idx)
        else:
            self.N = B
            self.cu = self.chunk_indices = self.chunk_offsets = None
            self.NT = triton.cdiv(T, BT)
            self.total_chunks = B * self.NT

    def args(self):
        return self.cu, self.chunk_indices, self.chunk_offsets


def _check(q, k, v, g, beta, initial_state, N):
    B, T, H, K = q.shape
    V = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (B, T, H) or g.shape != (B, T, H) or beta.shape != (B, T, H):
        raise ValueError(f"shapes disagree: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} "
                         f"g {tuple(g.shape)} beta {tuple(beta.shape)}")
    if K > 256:
        raise ValueError(f"head dim K={K} > 256 is not supported by the Triton kernels")
    if initial_state is not None and initial_state.shape != (N, H, K, V):
        raise ValueError(f"initial_state must be {(N, H, K, V)}, got {tuple(initial_state.shape)}")


def _chunk_fwd(q, k, v, g, beta, scale, h0, want_ht, meta: _Meta, use_l2):
    """Forward on contiguous [B, T, H, *] inputs; returns o, ht and what the backward keeps (G, Ai)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, NC = _pow2(K), meta.total_chunks
    G = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
    Ai = torch.empty(B, T, H, BT, device=q.device, dtype=q.dtype)
    _prepare_kernel[(NC, H)](k, beta, g, G, Ai, *meta.args(), T, meta.NT, H=H, K=K, BK=BK,
                             USE_L2=use_l2, IS_VARLEN=meta.varlen, PREC=_dot_precision(q.dtype), num_warps=4)
    w, u, kn = _recompute_wu(q, k, v, beta, G, Ai, meta, use_l2)
    h, v_new, ht = _state_pass(kn, w, u, G, h0, want_ht, meta)
    del kn
    o = torch.empty_like(v)
    BV = 64
    _fwd_o_kernel[(triton.cdiv(V, BV), NC, H)](q, k, v_new, h, G, o, *meta.args(), scale, T, meta.NT, H=H, K=K,
                                              V=V, BT=BT, BK=BK, BV=BV, USE_L2=use_l2, IS_VARLEN=meta.varlen,
                                              PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4)
    return o, ht, G, Ai


def _recompute_wu(q, k, v, beta, G, Ai, meta, use_l2):
    """w [B, T, H, K], u [B, T, H, V] and the L2-normalised k (k itself without the norm)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    kn = torch.empty_like(k) if use_l2 else k
    _wu_kernel[(meta.total_chunks, H)](k, v, beta, G, Ai, w, u, kn, *meta.args(), T, meta.NT, H=H, K=K, V=V, BT=BT,
                                      BK=_pow2(K), BV=64, USE_L2=use_l2, IS_VARLEN=meta.varlen,
                                      PREC=_dot_precision(k.dtype), num_warps=4)
    return w, u, kn


def _state_pass(k, w, u, G, h0, want_ht, meta):
    """h [chunks, H, K, V] (state entering each chunk), v' [B, T, H, V] and the final state; k already normalised."""
    B, T, H, K = k.shape
    V = u.shape[-1]
    h = torch.empty(meta.total_chunks, H, K, V, device=k.device, dtype=k.dtype)
    v_new = torch.empty_like(u)
    ht = torch.empty(meta.N, H, K, V, device=k.device, dtype=torch.float32) if want_ht else None
    # the sequential pass has only N*H*V/BV programs: small slices keep more SMs busy. BV 32, 4 warps, 3 stages:
    # fastest of BV 16-64 x 2-8 warps x 1-3 stages (2B shapes, 64K, bf16, H100: 1.34 ms; 2 stages 1.6x slower)
    BV = 32
    _launch_pipelined(_fwd_h_kernel, (triton.cdiv(V, BV), meta.N * H), k, w, u, G, h, v_new, h0, ht, meta.cu,
                      meta.chunk_offsets, T, H=H, K=K, V=V, BT=BT, BK=_pow2(K), BV=BV,
                      HAS_H0=h0 is not None, STORE_HT=want_ht, IS_VARLEN=meta.varlen, PREC=_dot_precision(k.dtype),
                      stages=3, num_warps=4)
    return h, v_new, ht


def _chunk_bwd(q, k, v, g, beta, scale, h0, do, dht, meta: _Meta, use_l2, G=None, Ai=None):
    """Gradients for q, k, v, g, beta and the initial state; recomputes w, u, h and v'."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, NC = _pow2(K), meta.total_chunks
    if G is None:
        G = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
        Ai = torch.empty(B, T, H, BT, device=q.device, dtype=q.dtype)
        _prepare_kernel[(NC, H)](k, beta, g, G, Ai, *meta.args(), T, meta.NT, H=H, K=K, BK=BK,
                                 USE_L2=use_l2, IS_VARLEN=meta.varlen, PREC=_dot_precision(q.dtype), num_warps=4)
    w, u, kn = _recompute_wu(q, k, v, beta, G, Ai, meta, use_l2)
    h, v_new, _ = _state_pass(kn, w, u, G, h0, False, meta)
    del kn
    do = do.contiguous()
    dv_local = torch.empty_like(v)
    BV = 64
    _bwd_dv_local_kernel[(triton.cdiv(V, BV), NC, H)](q, k, G, do, dv_local, *meta.args(), scale, T, meta.NT,
                                                     H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_L2=use_l2,
                                                     IS_VARLEN=meta.varlen, PREC=_dot_precision(q.dtype),
                                                     num_warps=4)
    dh = torch.empty_like(h)
    dv2 = torch.empty_like(v)
    dh0 = torch.empty(meta.N, H, K, V, device=q.device, dtype=torch.float32) if h0 is not None else None
    # BV 32, 8 warps, 3 stages: fastest of BV 16-64 x 2-8 warps x 1-3 stages (2B shapes, 64K, bf16, H100: 3.53 ms;
    # 4 warps and 2 stages 4.90 ms)
    BVs = 32
    _launch_pipelined(_bwd_dh_kernel, (triton.cdiv(V, BVs), meta.N * H), q, k, w, G, do, dv_local, dv2, dh,
                      None if dht is None else dht.contiguous(), dh0, meta.cu, meta.chunk_offsets, scale, T,
                      H=H, K=K, V=V, BT=BT, BK=BK, BV=BVs, USE_L2=use_l2, HAS_DHT=dht is not None,
                      STORE_DH0=h0 is not None, IS_VARLEN=meta.varlen, PREC=_dot_precision(q.dtype),
                      stages=3, num_warps=8)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    dg = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
    scratch = torch.empty(NC * H, BT, BT, device=q.device, dtype=torch.float32) if SAFE_TRANS else None
    _launch_pipelined(_bwd_chunk_kernel, (NC, H), q, k, v, beta, G, Ai, h, dh, v_new, do, dv2, dq, dk, dv, dbeta,
                      dg, scratch, *meta.args(), scale, T, meta.NT, H=H, K=K, V=V, BT=BT, BK=BK,
                      BV=32 if q.dtype == torch.float32 else 64,  # fp32 tiles: half the columns fit
                      USE_L2=use_l2, IS_VARLEN=meta.varlen, SAFE_TRANS=SAFE_TRANS,
                      DOT_BF16=BK > 64 and q.is_cuda, PREC=_dot_precision(q.dtype), num_warps=8)
    return dq, dk, dv, dg, dbeta, dh0


def _prep_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens):
    B, T, H, K = q.shape
    meta = _Meta(B, T, cu_seqlens, q.device)
    _check(q, k, v, g, beta, initial_state, meta.N)
    scale = K ** -0.5 if scale is None else float(scale)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    return (q.contiguous(), k.contiguous(), v.contiguous(), g.float().contiguous(), beta.contiguous(),
            scale, h0, meta)


class _ChunkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_l2):
        g_dtype, s_dtype = g.dtype, None if initial_state is None else initial_state.dtype
        q, k, v, g, beta, scale, h0, meta = _prep_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
        o, ht, G, Ai = _chunk_fwd(q, k, v, g, beta, scale, h0, output_final_state, meta, use_l2)
        ctx.save_for_backward(q, k, v, g, beta, h0, G, Ai)
        ctx.meta, ctx.scale, ctx.use_l2, ctx.dtypes = meta, scale, use_l2, (g_dtype, s_dtype)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0, G, Ai = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = _chunk_bwd(q, k, v, g, beta, ctx.scale, h0, do, dht, ctx.meta, ctx.use_l2,
                                                G, Ai)
        g_dtype, s_dtype = ctx.dtypes
        dh0 = None if dh0 is None else dh0.to(s_dtype)
        return dq, dk, dv, dg.to(g_dtype), dbeta, None, dh0, None, None, None


class _RecurrentFunction(torch.autograd.Function):
    """Recurrent forward; the backward is the chunked one (the same function, computed by chunks)."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_l2):
        g_dtype, s_dtype = g.dtype, None if initial_state is None else initial_state.dtype
        q, k, v, g, beta, scale, h0, meta = _prep_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
        B, T, H, K = q.shape
        V = v.shape[-1]
        o = torch.empty_like(v)
        ht = torch.empty(meta.N, H, K, V, device=q.device, dtype=torch.float32) if output_final_state else None
        _launch_recurrent(q, k, v, g, beta, o, h0, ht, meta.cu, scale, T, meta.N, use_l2)
        ctx.save_for_backward(q, k, v, g, beta, h0)
        ctx.meta, ctx.scale, ctx.use_l2, ctx.dtypes = meta, scale, use_l2, (g_dtype, s_dtype)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0 = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = _chunk_bwd(q, k, v, g, beta, ctx.scale, h0, do, dht, ctx.meta, ctx.use_l2)
        g_dtype, s_dtype = ctx.dtypes
        dh0 = None if dh0 is None else dh0.to(s_dtype)
        return dq, dk, dv, dg.to(g_dtype), dbeta, None, dh0, None, None, None


# (BV, num_warps) of the token loop by the dtype the state is read and written in. Each program holds a [BK, BV]
# fp32 slice of the state in registers; N*H*V/BV programs fill the GPU at decode batch sizes. From a sweep of BV
# 16..128 x 1..8 warps per state dtype at B = 256 and 2048 on an H200 (benchmarks/kernels.py --only step_variants):
# fp32 BV 16 x 1 warp, 81% / 84% of the copy roofline (BV 32 x 2, the earlier choice from an H100 sweep where the
# two tied: 77% / 79%); bf16 BV 32 x 1 warp, 55% / 58%, the best of all 16 configs (BV 64 x 4: 51% / 54%). A bf16
# state halves the bytes but not the per-program latency, so it gains 1.4x, not 2x.
RECURRENT_CONFIG = {torch.float32: (16, 1), torch.bfloat16: (32, 1)}


def _launch_recurrent(q, k, v, g, beta, o, h0, ht, cu, scale, T, N, use_l2):
    H, K = q.shape[-2:]
    V = v.shape[-1]
    BK = _pow2(K)
    state = ht if ht is not None else h0
    BV, num_warps = RECURRENT_CONFIG[state.dtype if state is not None else torch.float32]
    _recurrent_kernel[(triton.cdiv(V, BV), N * H)](q, k, v, g, beta, o, h0, ht, cu, scale, T, H=H, K=K, V=V,
                                                  BK=BK, BV=BV, USE_L2=use_l2, HAS_H0=h0 is not None,
                                                  STORE_HT=ht is not None, IS_VARLEN=cu is not None,
                                                  num_warps=num_warps)


def chunk_gated_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    use_qk_l2norm_in_kernel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule (chunk 64) with autograd. Shapes as `chunk_gated_delta_rule_ref`.

    q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H]; initial_state [N, H, K, V] fp32;
    cu_seqlens [N + 1] (B == 1). Returns o [B, T, H, V] (v's dtype) and the final state [N, H, K, V] fp32."""
    return _ChunkFunction.apply(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                use_qk_l2norm_in_kernel)


def fused_recurrent_gated_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    use_qk_l2norm_in_kernel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token forward in one kernel, for short inputs. Shapes as `recurrent_gated_delta_rule_ref`.

    Differentiable: the backward runs the chunked backward, which computes the same function."""
    return _RecurrentFunction.apply(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                    use_qk_l2norm_in_kernel)


def gated_delta_rule_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = True,
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
    _launch_recurrent(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(), o, s, s,
                      None, scale, 1, B, use_qk_l2norm_in_kernel)
    if s is not state:
        state.copy_(s)
    return o
