"""The fused KL's per-chunk softmax work in Triton: one kernel over a chunk's two logit blocks instead of PyTorch's
fp32 chain (the two log-softmaxes, their fp32 copies, exp, subtract, multiply, sum; about 120 ms of a 1,622 ms
stage-2 step on the H200, `benchmarks/results/real_model/teacher_answers/profile/`).

Same signature and results as `kl.kl_rows`: s_logits, t_logits [n, V] (bf16 or fp32), T and top1 give KL(q || p_s)
per row [n] (fp32) and g = p_s - q [n, V] in s_logits' dtype, p = softmax(logits / T), q = p_t or, with top1 > 0,
p_t with that share moved onto the teacher's argmax (`kl.py`), both times w = 1 + focus (1 - max p_t), the
teacher's uncertainty weight; fp32 inside. One program a row reads both rows twice (an online log-sum-exp, then the
KL and g) and writes g once: about 6 V bytes of bf16 a row against the reference's dozen fp32 passes. A focus takes
the teacher's max from its log-sum-exp pass, so it reads nothing more; at focus 0 the kernel compiles without it.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"the Triton KL kernel needs triton: {err}") from err

BLOCK = 4096  # vocabulary entries a program holds at once: 16 fp32 a thread at 8 warps


@triton.jit
def _lse(x, base, V, inv_t, BV: tl.constexpr):
    """(log(sum(exp(x[base : base + V] * inv_t))), max(x[base : base + V] * inv_t)): online per lane over blocks of
    BV, then across the lanes (the flash-attention form; a lane that never held an entry, V < BV, stays at -inf and
    adds nothing). The max comes free with the sum: a focus needs it, the default path drops it."""
    o = tl.arange(0, BV)
    m = tl.full([BV], float("-inf"), tl.float32)
    acc = tl.zeros([BV], tl.float32)
    for start in range(0, V, BV):
        idx = start + o
        b = tl.load(x + base + idx, mask=idx < V, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, b)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # an empty lane: exp(-inf) = 0, no -inf - -inf
        acc = acc * tl.exp(m - shift) + tl.exp(b - shift)
        m = m_new
    top = tl.max(m, 0)
    return top + tl.log(tl.sum(acc * tl.exp(m - top), 0)), top


@triton.jit
def _argmax(x, base, V, BV: tl.constexpr):
    """The first index of x[base : base + V]'s largest entry (torch.argmax's), read unscaled: a lane keeps its first
    strict maximum, then the lowest index among the lanes that hold the row's."""
    o = tl.arange(0, BV)
    m = tl.full([BV], float("-inf"), tl.float32)
    at = tl.full([BV], V, tl.int32)
    for start in range(0, V, BV):
        idx = start + o
        b = tl.load(x + base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        at = tl.where(b > m, idx, at)
        m = tl.maximum(m, b)
    return tl.min(tl.where(m == tl.max(m, 0), at, V), 0)


@triton.jit
def _kl_rows_kernel(s, t, kl, g, V, inv_t, top1, focus, BV: tl.constexpr, SHARPEN: tl.constexpr,
                    FOCUS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * V
    lse_s, _ = _lse(s, base, V, inv_t, BV)
    lse_t, top_t = _lse(t, base, V, inv_t, BV)
    if FOCUS:  # the teacher's top probability: exp(its largest logit / T - its log-sum-exp)
        w = 1.0 + focus * (1.0 - tl.exp(top_t - lse_t))
    if SHARPEN:
        first = _argmax(t, base, V, BV)
    o = tl.arange(0, BV)
    acc = tl.zeros((BV,), tl.float32)
    for start in range(0, V, BV):
        idx = start + o
        m = idx < V
        lp_s = tl.load(s + base + idx, mask=m, other=0.0).to(tl.float32) * inv_t - lse_s
        lp_t = tl.load(t + base + idx, mask=m, other=0.0).to(tl.float32) * inv_t - lse_t
        if SHARPEN:
            q = tl.exp(lp_t) * (1.0 - top1) + tl.where(idx == first, top1, 0.0)
            acc += tl.where(m & (q > 0), q * (tl.log(q) - lp_s), 0.0)
        else:
            q = tl.exp(lp_t)
            acc += tl.where(m, q * (lp_t - lp_s), 0.0)
        d = tl.exp(lp_s) - q
        if FOCUS:
            d = d * w
        tl.store(g + base + idx, d.to(g.dtype.element_ty), mask=m)
    if FOCUS:
        acc = acc * w
    tl.store(kl + row, tl.sum(acc, 0))


def kl_rows_triton(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float, top1: float = 0.0,
                   focus: float = 0.0, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(w KL(q || softmax(s / T)) per row [n] fp32, w (softmax(s / T) - q) [n, V]), q = softmax(t / T) sharpened
    by `top1`, w the teacher's uncertainty weight by `focus`; see module."""
    if s_logits.dim() != 2 or s_logits.shape != t_logits.shape:
        raise ValueError(f"kl_rows needs two [n, V] logit blocks of one shape, got {tuple(s_logits.shape)} and "
                         f"{tuple(t_logits.shape)}")
    s, t = s_logits.contiguous(), t_logits.contiguous()
    n, V = s.shape
    kl = torch.empty(n, dtype=torch.float32, device=s.device)
    g = torch.empty_like(s)
    if n:
        _kl_rows_kernel[(n,)](s, t, kl, g, V, 1.0 / temperature, float(top1), float(focus), BV=block,
                              SHARPEN=bool(top1), FOCUS=bool(focus), num_warps=8)
    return kl, g
