"""Chunked gated delta rule, backward. It recomputes w, u, S and v' (`gated_delta_rule_triton_chunk_fwd`), unless
the forward kept them (`launch.KEEP_STATES`), and runs three kernels: dv_local = (q k^T * Gamma)^T do (parallel),
the reverse state recursion dS (sequential, also finishing dv'), and one per-chunk kernel that gives dq, dk, dv,
dbeta and dg (the last through a reverse cumulative sum of dG within the chunk). The q/k L2 norm's Jacobian is
applied in that kernel as each of dq and dk is complete.
"""

from __future__ import annotations

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

from . import gated_delta_rule_triton_launch as launch
from .gated_delta_rule_triton_chunk_fwd import prepare, wu_and_states
from .gated_delta_rule_triton_launch import (
    CHUNK_BV,
    STATE_PASS_BWD,
    ChunkMeta,
    dot_precision,
    launch_pipelined,
    pow2_block,
)
from .gated_delta_rule_triton_tiles import (
    BT,
    _chunk_rows,
    _l2_factor_rows,
    _l2norm_cols,
    _l2norm_rows,
    _load_G,
    _seq_chunks,
    _state_tile,
    _tile_rows,
)


@triton.jit(do_not_specialize=["T", "NT"])
def _bwd_dv_local_kernel(q, k, G, do, dv, cu_seqlens, chunk_indices, chunk_offsets, scale, T, NT,
                         H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """The in-chunk part of dv': (q k^T * Gamma)^T do."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, _, bos, L, o_t, m_t, row = _chunk_rows(cu_seqlens, chunk_indices, chunk_offsets, i_c, i_h, T, NT,
                                                  H, BT, IS_VARLEN)
    r0, rel = _tile_rows(bos, i_t, i_h, H, BT)
    q += r0 * K
    k += r0 * K
    do += r0 * V
    dv += r0 * V
    DT = q.dtype.element_ty
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    m_tv = m_t[:, None] & (o_v[None, :] < V)
    b_q = _l2norm_rows(tl.load(q + rel[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_k = _l2norm_rows(tl.load(k + rel[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32), USE_L2)
    b_G, _ = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    # [s, t] = k_s.q_t Gamma[t, s] for t >= s
    m_st = o_t[:, None] <= o_t[None, :]
    b_at = tl.dot(b_k.to(DT), tl.trans((b_q * scale).to(DT)), input_precision=PREC)
    b_at = tl.where(m_st, b_at * tl.exp(tl.where(m_st, b_G[None, :] - b_G[:, None], 0.0)), 0.0)
    b_do = tl.load(do + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
    b_dv = tl.dot(b_at.to(DT), b_do.to(DT), input_precision=PREC)
    tl.store(dv + rel[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


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
        r0, rel = _tile_rows(bos, i_t, i_h, H, BT)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_kt = (o_k[:, None] < K) & m_t[None, :]
        b_G, b_Gl = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
        b_k = _l2norm_rows(tl.load(k + r0 * K + rel[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
                           .to(tl.float32), USE_L2)
        b_k = tl.where(m_t[:, None], b_k * tl.exp(b_Gl - b_G)[:, None], 0.0)
        b_dv = tl.load(dv_local + r0 * V + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_dv += tl.dot(b_k.to(DT), b_dh.to(DT), input_precision=PREC)
        tl.store(dv2 + r0 * V + rel[:, None] * V + o_v[None, :], b_dv.to(dv2.dtype.element_ty), mask=m_tv)
        b_qt = _l2norm_cols(tl.load(q + r0 * K + rel[None, :] * K + o_k[:, None], mask=m_kt, other=0.0)
                            .to(tl.float32), USE_L2)
        b_qt = b_qt * (scale * tl.exp(b_G))[None, :]
        b_wt = tl.load(w + r0 * K + rel[None, :] * K + o_k[:, None], mask=m_kt, other=0.0)
        b_do = tl.load(do + r0 * V + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
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


@triton.jit
def _load_qk(q, k, row, o_k, m_tk, scale, K: tl.constexpr, USE_L2: tl.constexpr):
    """A chunk's q and k rows [BT, BK] in fp32, L2-normalised with USE_L2 (as `_l2norm_rows`), q's also times scale,
    and the norms' factors [BT] (`_l2_factor_rows`) that their Jacobian needs, so the raw rows need not be kept."""
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    r_q = _l2_factor_rows(b_q)
    r_k = _l2_factor_rows(b_k)
    if USE_L2:
        b_q = b_q * r_q[:, None]
        b_k = b_k * r_k[:, None]
    return b_q, b_k, b_q * scale, r_q, r_k


@triton.jit(do_not_specialize=["T", "NT"])
def _bwd_chunk_kernel(q, k, v, beta, G, Ai, h, dh, v_new, do, dv2, dq, dk, dv, dbeta, dg, scratch,
                      cu_seqlens, chunk_indices, chunk_offsets, scale, T, NT,
                      H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, USE_L2: tl.constexpr, IS_VARLEN: tl.constexpr,
                      SAFE_TRANS: tl.constexpr, DOT_BF16: tl.constexpr, PREC: tl.constexpr,
                      SUM_SDS: tl.constexpr):
    """All per-chunk gradients once dh and dv' are known: dq, dk, dv, dbeta, dg (see the module docstring).

    S = h[chunk] (state in), dS = dh[chunk] (gradient of the state out), q~ = scale * q:
      dq~ = exp(G) do S^T + (do v'^T * Gamma) k       dk += (do v'^T * Gamma)^T q~ + exp(G_L - G) v' dS^T
      dw  = -dv' S^T; then through the WY form: dk, dbeta, dv, dG from dw and du = dv'.
    dG collects every place G appears; dg is its reverse cumulative sum within the chunk, and the
    gradient of G_L (the whole chunk's decay) is added at the last row so the sum carries it to every row.
    SUM_SDS: sum(S * dS) is reduced slice by slice to a scalar, instead of kept as a [BK, BV] fp32 tile to the end
    (one tile fewer held across the loop, beside four others of [BT, BK] and [BT, BT]).
    q and k are loaded after the V loop, which needs neither: held across it, their three fp32 [BT, BK] tiles made the
    whole chunked backward 1.10x slower (H100, 2B shapes, 8 x 2,048 tokens, bf16: 3.01 against 2.73 ms;
    benchmarks/results/profiles/jetblock_kernels_h100/)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, i_ch, bos, L, o_t, m_t, row = _chunk_rows(cu_seqlens, chunk_indices, chunk_offsets, i_c, i_h, T, NT,
                                                  H, BT, IS_VARLEN)
    r0, rel = _tile_rows(bos, i_t, i_h, H, BT)
    q += r0 * K
    k += r0 * K
    dq += r0 * K
    dk += r0 * K
    v += r0 * V
    v_new += r0 * V
    do += r0 * V
    dv2 += r0 * V
    dv += r0 * V
    Ai += r0 * BT
    DT = q.dtype.element_ty
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k[None, :] < K)
    b_b = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)
    i_last = tl.minimum(i_t * BT + BT, L) - 1
    b_G, b_Gl = _load_G(G, row, m_t, bos, L, i_t, i_h, H, BT)
    b_ai = tl.load(Ai + rel[:, None] * BT + tl.arange(0, BT)[None, :], mask=m_t[:, None], other=0.0).to(DT)
    b_ait = tl.trans(b_ai)

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do S^T
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # v' dS^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # dv' S^T
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)  # do v'^T
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)  # du (beta v)^T, dw's part added below
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dgl = tl.zeros([BK, BV], dtype=tl.float32)  # S * dS, summed at the end (SUM_SDS: unused)
    b_sds = tl.zeros([1], dtype=tl.float32)  # sum(S * dS) so far (SUM_SDS)
    p_h = h + (i_ch.to(tl.int64) * H + i_h) * K * V
    p_dh = dh + (i_ch.to(tl.int64) * H + i_h) * K * V
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_vn = tl.load(v_new + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_do = tl.load(do + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
        b_du = tl.load(dv2 + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_v = tl.load(v + rel[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dw += tl.dot(b_du, tl.trans(b_h), input_precision=PREC)
        b_dks += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        if SUM_SDS:
            b_sds += tl.sum(tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 1), 0)
        else:
            b_dgl += b_h.to(tl.float32) * b_dh.to(tl.float32)
        b_dT += tl.dot(b_du, tl.trans((b_v * b_b[:, None]).to(DT)), input_precision=PREC)
        b_dvb = tl.dot(b_ait, b_du, input_precision=PREC)  # Ai^T du: gradient of beta v
        tl.store(dv + rel[:, None] * V + o_v[None, :], (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_db += tl.sum(b_dvb * b_v, 1)

    b_qn, b_kn, b_q, r_q, r_k = _load_qk(q, k, rel, o_k, m_tk, scale, K, USE_L2)
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
    # dq is complete here: finished and stored now, its tile and q's are free for the WY part below (spilled stack
    # a thread 2,136 -> 2,008 B, sm_90, Triton 3.6; `benchmarks/kernel_registers.py`)
    b_dq = b_dq * scale
    if USE_L2:
        b_dq = (b_dq - b_qn * tl.sum(b_dq * b_qn, 1)[:, None]) * r_q[:, None]
    tl.store(dq + rel[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_tk)
    # state update S' = exp(G_L) S + (k exp(G_L - G))^T v'
    b_dks = tl.where(m_t[:, None], b_dks * tl.exp(b_Gl - b_G)[:, None], 0.0)
    b_dk += b_dks
    b_kdks = tl.sum(b_kn * b_dks, 1)
    b_dG -= b_kdks
    if SUM_SDS:
        b_dGl = tl.exp(b_Gl) * tl.sum(b_sds, 0) + tl.sum(b_kdks, 0)
    else:
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
    if USE_L2:
        b_dk = (b_dk - b_kn * tl.sum(b_dk * b_kn, 1)[:, None]) * r_k[:, None]
    tl.store(dk + rel[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + row, b_db.to(dbeta.dtype.element_ty), mask=m_t)
    tl.store(dg + row, b_dg.to(dg.dtype.element_ty), mask=m_t)


# ---------------------------------------------------------------------------------------------------- host side


def chunk_bwd(q, k, v, g, beta, scale, h0, do, dht, meta: ChunkMeta, use_l2: bool, G=None, Ai=None, states=None):
    """Gradients for q, k, v, g, beta and the initial state. Recomputes G and Ai if not given, and w, h and v' unless
    `states` holds the forward's (w [B, T, H, K], h [chunks, H, K, V], v' [B, T, H, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, NC = pow2_block(K), meta.total_chunks
    if G is None:
        G, Ai = prepare(k, beta, g, meta, use_l2)
    if states is None:
        w, h, v_new, _ = wu_and_states(k, v, beta, G, Ai, h0, False, meta, use_l2)
    else:
        w, h, v_new = states
    do = do.contiguous()
    dv_local = torch.empty_like(v)
    _bwd_dv_local_kernel[(triton.cdiv(V, CHUNK_BV), NC, H)](q, k, G, do, dv_local, *meta.args(), scale, T, meta.NT,
                                                           H=H, K=K, V=V, BT=BT, BK=BK, BV=CHUNK_BV, USE_L2=use_l2,
                                                           IS_VARLEN=meta.varlen, PREC=dot_precision(q.dtype),
                                                           num_warps=launch.CHUNK_WARPS["dv_local"])
    dh = torch.empty_like(h)
    dv2 = torch.empty_like(v)
    dh0 = torch.empty(meta.N, H, K, V, device=q.device, dtype=torch.float32) if h0 is not None else None
    BV = STATE_PASS_BWD["BV"]
    launch_pipelined(_bwd_dh_kernel, (triton.cdiv(V, BV), meta.N * H), q, k, w, G, do, dv_local, dv2, dh,
                     None if dht is None else dht.contiguous(), dh0, meta.cu, meta.chunk_offsets, scale, T,
                     H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_L2=use_l2, HAS_DHT=dht is not None,
                     STORE_DH0=h0 is not None, IS_VARLEN=meta.varlen, PREC=dot_precision(q.dtype),
                     stages=STATE_PASS_BWD["stages"], num_warps=STATE_PASS_BWD["num_warps"])
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    dg = torch.empty(B, T, H, device=q.device, dtype=torch.float32)
    safe_trans = launch.SAFE_TRANS  # read at call time: benchmarks/kernel_speed.py flips it to compare
    scratch = torch.empty(NC * H, BT, BT, device=q.device, dtype=torch.float32) if safe_trans else None
    cfg = launch.CHUNK_BWD["fp32" if q.dtype == torch.float32 else "16-bit"]  # at call time too (the sweep)
    launch_pipelined(_bwd_chunk_kernel, (NC, H), q, k, v, beta, G, Ai, h, dh, v_new, do, dv2, dq, dk, dv, dbeta,
                     dg, scratch, *meta.args(), scale, T, meta.NT, H=H, K=K, V=V, BT=BT, BK=BK, BV=cfg["BV"],
                     USE_L2=use_l2, IS_VARLEN=meta.varlen, SAFE_TRANS=safe_trans,
                     DOT_BF16=launch.dot_bf16(BK, q.is_cuda), PREC=dot_precision(q.dtype), SUM_SDS=cfg["sum_sds"],
                     stages=cfg["stages"], num_warps=cfg["num_warps"])
    return dq, dk, dv, dg, dbeta, dh0
