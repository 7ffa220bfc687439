"""Tile helpers (`@triton.jit`, inlined) shared by every gated-delta-rule kernel.

Layout: tokens are flattened to rows `(bos + t) * H + h` of [B*T, H, *] tensors; a packed batch (`cu_seqlens`)
walks chunk tables built on the host (`gated_delta_rule_triton_launch.ChunkMeta`). BT = 64 is the chunk length.
"""

from __future__ import annotations

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

BT = 64  # chunk length; also the row count of the per-chunk matrices


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
def _chunk_rows(cu_seqlens, chunk_indices, chunk_offsets, i_c, i_h, T, NT, H, BT: tl.constexpr,
                IS_VARLEN: tl.constexpr):
    """The prologue of a per-chunk kernel: chunk i_t of its sequence, its row in h, the sequence's first token and
    length, and the chunk's token offsets o_t [BT], their mask and their flat rows (bos + o_t) * H + i_h."""
    i_n, i_t, i_ch = _chunk_coords(chunk_indices, chunk_offsets, i_c, NT, IS_VARLEN)
    bos, L = _seq_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < L
    return i_t, i_ch, bos, L, o_t, m_t, (bos + o_t) * H + i_h


@triton.jit
def _tile_rows(bos, i_t, i_h, H, BT: tl.constexpr):
    """Chunk i_t's first flat row (bos + i_t * BT) * H + i_h, an int64 scalar that a kernel adds to its base pointers,
    and each of the chunk's rows relative to it, int32 [BT]. A tile's offsets from the shifted base stay int32: taken
    from the int64 rows instead, every element of a [BT, BK] tile carried a 64-bit offset, which alone cost the
    per-chunk backward about 450 bytes a thread of spilled registers (sm_90, Triton 3.6, 2B shapes)."""
    return (bos + i_t * BT) * H + i_h, tl.arange(0, BT) * H


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
def _l2_factor_rows(b_x):
    """rsqrt(|x|^2 + eps) of each row of a [rows, BK] fp32 block [rows]: the L2 norm's factor (padding columns are
    zero, so they do not count), which the backward also needs for the norm's Jacobian."""
    return tl.rsqrt(tl.sum(b_x * b_x, 1) + 1e-6)


@triton.jit
def _l2norm_rows(b_x, USE_L2: tl.constexpr):
    """Normalise each row of a [rows, BK] fp32 block by `_l2_factor_rows`."""
    if USE_L2:
        b_x = b_x * _l2_factor_rows(b_x)[:, None]
    return b_x


@triton.jit
def _l2norm_cols(b_x, USE_L2: tl.constexpr):
    """Same as `_l2norm_rows` for a transposed [BK, cols] block."""
    if USE_L2:
        b_x = b_x * tl.rsqrt(tl.sum(b_x * b_x, 0) + 1e-6)[None, :]
    return b_x
