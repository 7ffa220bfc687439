"""Rotary position embedding of queries and keys in Triton: one pass over each instead of eager PyTorch's chain
(two products, a negation and a concatenation for rotate_half, a sum: about 16 ms of an H100 stage-1 distillation
step for the frozen teacher's 28 layers at 8 x 2,048 tokens, `benchmarks/results/real_model/knobs_v5_3min_h100/`).

Same signature and shapes as `rope_ref.py`: q [B, Hq, L, D], k [B, Hk, L, D] with unit stride along D (the
transposed head views of a projection are such); cos, sin [B, L, D] or [1, L, D] (one table for the batch, as
transformers' default position ids give) with unit stride along D. Outputs keep the inputs' strides. With halves
x1, x2 of a head and c, s of cos and sin:
    out1 = r(r(x1 c1) + r(-x2 s1));  out2 = r(r(x2 c2) + r(x1 s2))
r() rounds to the input's dtype: eager low precision's three roundings, bit for bit (a product of two bf16 or fp16
values is exact in fp32, and so is their negation). The launch turns off Triton's fp fusion: with it, the compiler
dropped the first product's rounding into an FMA on an H100 (out = fma(x1, c1, r(-x2 s1)): a fifth of the elements
one bf16 step off eager, caught by the card test, 2026-12-05). Forward only: the teacher runs without gradients.
"""

from __future__ import annotations

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

BLOCK_L = 32  # positions of one head per program


@triton.jit
def _rope_kernel(x, y, cos, sin, H, L, sx_b, sx_h, sx_l, sy_b, sy_h, sy_l, sc_b, sc_l,
                 HALF: tl.constexpr, BLOCK_L: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    o_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    o_d = tl.arange(0, HALF)
    m = (o_l < L)[:, None]
    px = x + b * sx_b + h * sx_h + o_l[:, None] * sx_l + o_d[None, :]
    pc = b * sc_b + o_l[:, None] * sc_l + o_d[None, :]
    x1 = tl.load(px, mask=m, other=0.0)
    x2 = tl.load(px + HALF, mask=m, other=0.0)
    c1, c2 = tl.load(cos + pc, mask=m, other=0.0), tl.load(cos + pc + HALF, mask=m, other=0.0)
    s1, s2 = tl.load(sin + pc, mask=m, other=0.0), tl.load(sin + pc + HALF, mask=m, other=0.0)
    ty = y.dtype.element_ty
    # each product rounded to the dtype, then the sum: eager's roundings
    a1 = (x1.to(tl.float32) * c1.to(tl.float32)).to(ty).to(tl.float32)
    b1 = (-x2.to(tl.float32) * s1.to(tl.float32)).to(ty).to(tl.float32)
    a2 = (x2.to(tl.float32) * c2.to(tl.float32)).to(ty).to(tl.float32)
    b2 = (x1.to(tl.float32) * s2.to(tl.float32)).to(ty).to(tl.float32)
    py = y + b * sy_b + h * sy_h + o_l[:, None] * sy_l + o_d[None, :]
    tl.store(py, (a1 + b1).to(ty), mask=m)
    tl.store(py + HALF, (a2 + b2).to(ty), mask=m)


def _one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    B, H, L, D = x.shape
    y = torch.empty_strided(x.shape, x.stride(), device=x.device, dtype=x.dtype)
    if x.numel():
        _rope_kernel[(B * H, triton.cdiv(L, BLOCK_L))](
            x, y, cos, sin, H, L, x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
            cos.stride(0), cos.stride(1), HALF=D // 2, BLOCK_L=BLOCK_L,
            enable_fp_fusion=False)  # eager's roundings: no FMA may skip one (see the module's docstring)
    return y


def rope_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_embed, k_embed). Shapes in the module docstring."""
    D = q.shape[-1]
    if q.ndim != 4 or k.ndim != 4 or k.shape[-1] != D or cos.shape != sin.shape or cos.shape[-1] != D:
        raise ValueError(f"rope needs q [B, Hq, L, D], k [B, Hk, L, D], cos and sin [B, L, D]; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")
    if D % 2 or D & (D - 1):
        raise ValueError(f"rope's Triton kernel needs a power-of-two head dim, got {D}")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError("rope_triton is forward only (a frozen teacher's); it got tensors that need a gradient")
    if q.dtype != cos.dtype or k.dtype != cos.dtype:
        raise ValueError(f"rope needs q, k, cos and sin in one dtype, got {q.dtype}, {k.dtype}, {cos.dtype}")
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2] or cos.shape[1] != q.shape[2] or cos.shape[0] not in (
            1, q.shape[0]):
        raise ValueError(f"rope needs q, k, cos and sin of one batch (cos and sin may have 1) and one length; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}")
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (cos, sin))
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    # one position table for the whole batch (transformers' default position ids are [1, L]): stride 0 over it
    cos, sin = cos.expand(q.shape[0], -1, -1), sin.expand(q.shape[0], -1, -1)
    return _one(q, cos, sin), _one(k, cos, sin)
