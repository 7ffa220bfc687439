"""Dynamic causal depthwise convolution + SiLU in Triton: forward, backward, one-token decode step.

Same signatures and shapes as `dynamic_conv_ref.py`:
    x [B, T, C], kernels [B, T, C, K], history [N, C, >= K-1] or None, cu_seqlens [N + 1] (then B == 1)
    y_t[c] = silu(sum_{j<K} kernels_t[c, j] * x_{t-K+1+j}[c])
Accumulation is fp32. The backward gives dx and dkernels; `history` (the cached inputs of an earlier
prefill chunk) is treated as a constant and gets no gradient.
"""

from __future__ import annotations

import os

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err


@triton.jit
def _token_bounds(cu_seqlens, seq_idx, o_t, m_t, T, IS_VARLEN: tl.constexpr):
    """Sequence index, first token and end of the sequence of each flattened token (m_t: real tokens)."""
    if IS_VARLEN:
        i_n = tl.load(seq_idx + o_t, mask=m_t, other=0)
        bos = tl.load(cu_seqlens + i_n)
        eos = tl.load(cu_seqlens + i_n + 1)
    else:
        i_n = o_t // T
        bos = i_n * T
        eos = bos + T
    return i_n, bos, eos


@triton.jit
def _elements(i, n_el, C, BLOCK: tl.constexpr):
    """Flat (token, channel) indices of block i, their mask, token and channel (int64: B*T*C passes 2^31 at 16 x 64K
    tokens of the 2B shape)."""
    o = i.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return o, o < n_el, o // C, o % C


@triton.jit
def _kernel_rows(kern, o, m, KW: tl.constexpr, BKW: tl.constexpr):
    """kernels[o, :] as [BLOCK, BKW] fp32 (taps j >= KW read zero) and the tap index [1, BKW]. One element's KW taps
    are adjacent in memory, so this is one vector load per element; per-tap loads at stride KW used a quarter of
    each access (22% of the copy roofline on an H100)."""
    o_j = tl.arange(0, BKW)[None, :]
    b_w = tl.load(kern + o[:, None] * KW + o_j, mask=m[:, None] & (o_j < KW), other=0.0).to(tl.float32)
    return b_w, o_j


@triton.jit
def _tap(b_w, o_j, j: tl.constexpr):
    """Column j of a [BLOCK, BKW] tile (the taps of one element sit in one thread, so this stays in registers)."""
    return tl.sum(tl.where(o_j == j, b_w, 0.0), 1)


@triton.jit
def _conv_input(x, hist, t, c, m, i_n, bos, C, SX, HL, j: tl.constexpr, KW: tl.constexpr, HAS_HIST: tl.constexpr):
    """x[t-KW+1+j, c] in fp32 (x's tokens SX elements apart): from x inside the sequence, from the history before
    it."""
    src = t - (KW - 1) + j
    in_seq = src >= bos
    b_x = tl.load(x + src.to(tl.int64) * SX + c, mask=m & in_seq, other=0.0).to(tl.float32)
    if HAS_HIST:
        # before the start: the last KW-1 cached inputs, most recent at position HL-1
        b_x += tl.load(hist + (i_n * C + c) * HL + (HL - (bos - src)), mask=m & (~in_seq), other=0.0).to(tl.float32)
    return b_x


@triton.jit
def _conv_acc(x, kern, hist, o, t, c, m, i_n, bos, C, SX, HL, KW: tl.constexpr, BKW: tl.constexpr,
              HAS_HIST: tl.constexpr):
    """The pre-activation sum_j kernels[t, c, j] x[t-KW+1+j, c] of each element, fp32."""
    b_w, o_j = _kernel_rows(kern, o, m, KW, BKW)
    b_acc = tl.zeros_like(_tap(b_w, o_j, 0))
    for j in tl.static_range(KW):
        b_acc += _tap(b_w, o_j, j) * _conv_input(x, hist, t, c, m, i_n, bos, C, SX, HL, j, KW, HAS_HIST)
    return b_acc


@triton.jit
def _dz_and_inputs(x, kern, hist, dy, o, t, c, m, i_n, bos, C, SX, HL, KW: tl.constexpr, BKW: tl.constexpr,
                   HAS_HIST: tl.constexpr):
    """The backward's per-element start: kernel rows [BLOCK, BKW], tap index, dz = dy * silu'(acc) fp32 [BLOCK] and
    the inputs under each tap [BLOCK, BKW] (dkernels = dz x those inputs)."""
    b_w, o_j = _kernel_rows(kern, o, m, KW, BKW)
    b_acc = tl.zeros_like(_tap(b_w, o_j, 0))
    b_xs = tl.zeros_like(b_w)
    for j in tl.static_range(KW):
        b_x = _conv_input(x, hist, t, c, m, i_n, bos, C, SX, HL, j, KW, HAS_HIST)
        b_acc += _tap(b_w, o_j, j) * b_x
        b_xs = tl.where(o_j == j, b_x[:, None], b_xs)
    b_s = tl.sigmoid(b_acc)
    b_dz = tl.load(dy + o, mask=m, other=0.0).to(tl.float32) * b_s * (1.0 + b_acc * (1.0 - b_s))
    return b_w, o_j, b_dz, b_xs


@triton.jit
def _conv_fwd_kernel(x, kern, hist, y, cu_seqlens, seq_idx, T, n_el, C, SX, HL,
                     KW: tl.constexpr, BKW: tl.constexpr, BLOCK: tl.constexpr, HAS_HIST: tl.constexpr,
                     IS_VARLEN: tl.constexpr):
    o, m, t, c = _elements(tl.program_id(0), n_el, C, BLOCK)
    i_n, bos, _ = _token_bounds(cu_seqlens, seq_idx, t, m, T, IS_VARLEN)
    b_acc = _conv_acc(x, kern, hist, o, t, c, m, i_n, bos, C, SX, HL, KW, BKW, HAS_HIST)
    tl.store(y + o, (b_acc * tl.sigmoid(b_acc)).to(y.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_dz_kernel(x, kern, hist, dy, dz, dkern, cu_seqlens, seq_idx, T, n_el, C, SX, HL,
                        KW: tl.constexpr, BKW: tl.constexpr, BLOCK: tl.constexpr, HAS_HIST: tl.constexpr,
                        IS_VARLEN: tl.constexpr):
    """dz = dy * silu'(acc) (fp32, kept for dx) and dkernels[t, c, j] = dz[t, c] x[t-KW+1+j, c]."""
    o, m, t, c = _elements(tl.program_id(0), n_el, C, BLOCK)
    i_n, bos, _ = _token_bounds(cu_seqlens, seq_idx, t, m, T, IS_VARLEN)
    b_w, o_j, b_dz, b_xs = _dz_and_inputs(x, kern, hist, dy, o, t, c, m, i_n, bos, C, SX, HL, KW, BKW, HAS_HIST)
    tl.store(dz + o, b_dz, mask=m)
    tl.store(dkern + o[:, None] * KW + o_j, (b_dz[:, None] * b_xs).to(dkern.dtype.element_ty),
             mask=m[:, None] & (o_j < KW))


@triton.jit
def _conv_bwd_dx_kernel(kern, dz, dx, cu_seqlens, seq_idx, T, n_el, C,
                        KW: tl.constexpr, BKW: tl.constexpr, BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """dx[s, c] = sum_j dz[s+KW-1-j, c] kernels[s+KW-1-j, c, j], only over outputs of the same sequence. Each shift
    reads whole kernel rows (one vector load per element) and keeps tap j; the other taps are the same rows'
    loads for the neighbouring shifts, served from cache."""
    o, m, t, c = _elements(tl.program_id(0), n_el, C, BLOCK)
    _, _, eos = _token_bounds(cu_seqlens, seq_idx, t, m, T, IS_VARLEN)
    b_dx = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(KW):
        shift = (KW - 1 - j) * C
        md = m & (t + (KW - 1 - j) < eos)
        b_w, o_j = _kernel_rows(kern, o + shift, md, KW, BKW)
        b_dz = tl.load(dz + o + shift, mask=md, other=0.0)
        b_dx += b_dz * _tap(b_w, o_j, j)
    tl.store(dx + o, b_dx.to(dx.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_fused_kernel(x, kern, hist, dy, dx, dkern, cu_seqlens, seq_idx, T, NTOK, C, SX, HL,
                           KW: tl.constexpr, BKW: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr,
                           HAS_HIST: tl.constexpr, IS_VARLEN: tl.constexpr):
    """dkernels and dx in one pass over BT tokens (flattened over B*T) and BC channels: what the two kernels above
    compute, without dz's fp32 round trip through memory or the second read of the kernels. Tokens are walked in
    order; token u's dz feeds dx of tokens u-KW+1..u, held in a [BC, BKW] ring (column k: token u-KW+1+k) whose
    column 0 is complete after u and is stored. The KW-1 tokens after the block are walked for their share of dx
    only; their dkernels belong to the next block."""
    i_c, i_t = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    o_j = tl.arange(0, BKW)[None, :]
    t0 = i_t * BT
    ring = tl.zeros([BC, BKW], dtype=tl.float32)
    for step in range(BT + KW - 1):
        u = t0 + step
        tv = u + 0 * o_c  # u for each channel: masks from scalars fail the interpreter's loads (Triton 3.9)
        in_range = tv < NTOK
        if IS_VARLEN:
            i_n = tl.load(seq_idx + tl.minimum(u, NTOK - 1))
            bos = tl.load(cu_seqlens + i_n)
        else:
            i_n = u // T
            bos = i_n * T
        m = m_c & in_range
        o = u.to(tl.int64) * C + o_c
        b_w, _, b_dz, b_xs = _dz_and_inputs(x, kern, hist, dy, o, tv, o_c, m, i_n, bos, C, SX, HL, KW, BKW,
                                            HAS_HIST)
        tl.store(dkern + o[:, None] * KW + o_j, (b_dz[:, None] * b_xs).to(dkern.dtype.element_ty),
                 mask=(m & (tv < t0 + BT))[:, None] & (o_j < KW))
        # tap j of u reaches token u-KW+1+j, inside u's sequence only
        ring += tl.where((u - (KW - 1) + o_j >= bos) & (o_j < KW), b_dz[:, None] * b_w, 0.0)
        v = tv - (KW - 1)  # complete now: every token that reaches it (v..v+KW-1) has been walked
        tl.store(dx + v.to(tl.int64) * C + o_c, _tap(ring, o_j, 0).to(dx.dtype.element_ty),
                 mask=m_c & (v >= t0) & (v < t0 + BT) & (v < NTOK))
        # column k takes column k+1: the ring now starts at token v+1
        b_next = tl.zeros([BC, BKW], dtype=tl.float32)
        for k in tl.static_range(KW - 1):
            b_next = tl.where(o_j == k, _tap(ring, o_j, k + 1)[:, None], b_next)
        ring = b_next


@triton.jit
def _conv_step_kernel(x, kern, state, y, C, KW: tl.constexpr, BKW: tl.constexpr, BC: tl.constexpr):
    """Shift x into the [C, KW] state of one batch row, then y = silu(sum_j state[:, j] kernel[:, j])."""
    i_c, i_b = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BC + tl.arange(0, BC)
    o_j = tl.arange(0, BKW)
    m_c = o_c < C
    m = m_c[:, None] & (o_j[None, :] < KW)
    base = (i_b.to(tl.int64) * C + o_c[:, None]) * KW
    # every program reads only its own channels' state before writing them, so the update is in place
    b_old = tl.load(state + base + o_j[None, :] + 1, mask=m & (o_j[None, :] < KW - 1), other=0.0)
    b_x = tl.load(x + i_b.to(tl.int64) * C + o_c, mask=m_c, other=0.0).to(state.dtype.element_ty)
    b_new = tl.where(o_j[None, :] == KW - 1, b_x[:, None], b_old)
    tl.store(state + base + o_j[None, :], b_new, mask=m)
    b_w = tl.load(kern + base + o_j[None, :], mask=m, other=0.0).to(tl.float32)
    b_acc = tl.sum(b_new.to(tl.float32) * b_w, 1)
    tl.store(y + i_b.to(tl.int64) * C + o_c, (b_acc * tl.sigmoid(b_acc)).to(y.dtype.element_ty), mask=m_c)


BLOCK_CONV = 1024  # (token, channel) elements per program, flattened: every load and store is contiguous
# The backward in one kernel (`_conv_bwd_fused_kernel`, tiles of FUSED_BT tokens x FUSED_BC channels) instead of
# two: it skips writing and reading dz in fp32 (8 bytes an element) and the second read of the kernels (2 x KW), of
# the two kernels' 28 bytes an element in bf16 (against 14 at the least). The two kernels took 0.45 + 0.67 ms a call
# at 8 x 2,048 tokens on an H100 (80% and 32% of their copy rooflines; profile of 2026-12-05). On since its card
# test passed and a step was timed with it (with the kept states, benchmarks/results/profiles/switches_h100/);
# JET_NEMOTRON_CONV_FUSED_BWD=0 runs the two kernels. Read at each backward.
FUSED_BWD = os.environ.get("JET_NEMOTRON_CONV_FUSED_BWD", "1") == "1"
FUSED_BC, FUSED_BT = 256, 64


def _token_rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, C] as it is where its tokens are evenly spaced with unit stride along C (a slice of a wider product:
    a JetBlock's v is one of its projections' outputs side by side), else a contiguous copy."""
    B, T, C = x.shape
    if x.stride(2) == 1 and x.stride(1) >= C and (B == 1 or x.stride(0) == T * x.stride(1)):
        return x
    return x.contiguous()


def _layout(x, kernels, history, cu_seqlens):
    """Flattened views (x's tokens evenly spaced, `_token_rows`) and the per-token sequence index when packed."""
    B, T, C = x.shape
    KW = kernels.shape[-1]
    if kernels.shape[:3] != (B, T, C):
        raise ValueError(f"kernels must be {(B, T, C, KW)}, got {tuple(kernels.shape)}")
    seq_idx = None
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens needs a batch of 1 packed sequence, got batch {B}")
        cu_seqlens = cu_seqlens.to(device=x.device, dtype=torch.int64)
        lens = cu_seqlens[1:] - cu_seqlens[:-1]
        seq_idx = torch.repeat_interleave(torch.arange(lens.numel(), device=x.device), lens, output_size=T)
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    HL = 0
    if history is not None:
        if history.shape[0] != N or history.shape[1] != C:
            raise ValueError(f"history must be [{N}, {C}, >= {KW - 1}], got {tuple(history.shape)}")
        if history.shape[-1] < KW - 1:
            raise ValueError(f"conv history holds {history.shape[-1]} steps, the kernel needs {KW - 1}")
        history = history.contiguous()
        HL = history.shape[-1]
    return _token_rows(x), kernels.contiguous(), history, cu_seqlens, seq_idx, HL


class _DynamicConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernels, history, cu_seqlens):
        x, kernels, history, cu, seq_idx, HL = _layout(x, kernels, history, cu_seqlens)
        B, T, C = x.shape
        KW = kernels.shape[-1]
        y = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
        n_el = B * T * C
        _conv_fwd_kernel[(triton.cdiv(n_el, BLOCK_CONV),)](x, kernels, history, y, cu, seq_idx, T, n_el, C, x.stride(1),
                                                           HL, KW=KW, BKW=triton.next_power_of_2(KW), BLOCK=BLOCK_CONV,
                                                           HAS_HIST=history is not None, IS_VARLEN=cu is not None)
        ctx.save_for_backward(x, kernels, history, cu, seq_idx)
        ctx.HL = HL
        return y

    @staticmethod
    def backward(ctx, dy):
        x, kernels, history, cu, seq_idx = ctx.saved_tensors
        B, T, C = x.shape
        KW = kernels.shape[-1]
        dkernels = torch.empty_like(kernels)
        dx = torch.empty(B, T, C, device=x.device, dtype=x.dtype)
        BKW = triton.next_power_of_2(KW)
        if FUSED_BWD:  # read at each call: kernel_speed.py times both ways in one process
            grid = (triton.cdiv(C, FUSED_BC), triton.cdiv(B * T, FUSED_BT))
            _conv_bwd_fused_kernel[grid](x, kernels, history, dy.contiguous(), dx, dkernels, cu, seq_idx, T, B * T, C,
                                         x.stride(1), ctx.HL, KW=KW, BKW=BKW, BC=FUSED_BC, BT=FUSED_BT,
                                         HAS_HIST=history is not None, IS_VARLEN=cu is not None, num_warps=4)
            return dx, dkernels, None, None
        n_el = B * T * C
        grid = (triton.cdiv(n_el, BLOCK_CONV),)
        dz = torch.empty(B, T, C, device=x.device, dtype=torch.float32)
        # 8 warps: at 4 the sm_90 builds hold 96 (dz) and 114 (dx) registers a thread against the forward's 62, and
        # fewer programs fit an SM (fwd+bwd at 44-46% of the copy roofline on an H100, the forward at 95%); at 8
        # they hold 64 and 59 (cuobjdump). Not yet timed.
        _conv_bwd_dz_kernel[grid](x, kernels, history, dy.contiguous(), dz, dkernels, cu, seq_idx, T, n_el, C,
                                  x.stride(1), ctx.HL, KW=KW, BKW=BKW, BLOCK=BLOCK_CONV, HAS_HIST=history is not None,
                                  IS_VARLEN=cu is not None, num_warps=8)
        _conv_bwd_dx_kernel[grid](kernels, dz, dx, cu, seq_idx, T, n_el, C, KW=KW, BKW=BKW, BLOCK=BLOCK_CONV,
                                  IS_VARLEN=cu is not None, num_warps=8)
        return dx, dkernels, None, None


def dynamic_conv_triton(x: torch.Tensor, kernels: torch.Tensor, history: torch.Tensor | None = None,
                        cu_seqlens: torch.LongTensor | None = None) -> torch.Tensor:
    """Causal dynamic convolution + SiLU with autograd (dx, dkernels; history is a constant).

    x [B, T, C]; kernels [B, T, C, K]; history [N, C, >= K-1]; cu_seqlens [N + 1]. Returns y [B, T, C]."""
    return _DynamicConvFunction.apply(x, kernels, history, cu_seqlens)


def dynamic_conv_step_triton(x: torch.Tensor, kernel: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
    """One decode step; shifts x into conv_state in place (no autograd).

    x [B, C]; kernel [B, C, K]; conv_state [B, C, K] (most recent last). Returns y [B, C] in x's dtype."""
    B, C = x.shape
    KW = kernel.shape[-1]
    if kernel.shape != (B, C, KW) or conv_state.shape != (B, C, KW):
        raise ValueError(f"kernel and conv_state must be {(B, C, KW)}, got {tuple(kernel.shape)} "
                         f"and {tuple(conv_state.shape)}")
    s = conv_state if conv_state.is_contiguous() else conv_state.contiguous()
    y = torch.empty(B, C, device=x.device, dtype=x.dtype)
    BC = 128
    _conv_step_kernel[(triton.cdiv(C, BC), B)](x.contiguous(), kernel.contiguous(), s, y, C, KW=KW,
                                               BKW=triton.next_power_of_2(KW), BC=BC)
    if s is not conv_state:
        conv_state.copy_(s)
    return y
