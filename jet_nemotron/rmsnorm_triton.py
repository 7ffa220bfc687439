"""The decoder's RMSNorm in Triton, forward and backward, for training: one pass each way instead of PyTorch's
chain of fp32 elementwise kernels (about 90 ms of a 1.5B stage-2 step on the H200, 2026-12-04 profile).

Same signature, shapes and rounding as `rmsnorm_ref.py`: x [..., D]; weight [D]; y in the promotion of their
dtypes. With r = rsqrt(mean(x^2) + eps), n = x r rounded to x's dtype:
    y = w n;  dw = sum_rows dy n;  dx = r (dn - (x r) mean(dn x r)), dn = dy w
The backward recomputes r from x rather than saving it.
"""

from __future__ import annotations

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err


def _tile(D: int) -> tuple[int, int]:
    """(rows a program, padded D): about 4K fp32 values a tile, so D = 1,536 takes 2 rows a program."""
    BD = triton.next_power_of_2(D)
    return max(1, min(16, 4096 // BD)), BD


@triton.jit
def _rows(x, w, i, n_rows, D, eps, BR: tl.constexpr, BD: tl.constexpr):
    """Offsets, mask, the fp32 tiles of x and weight, x r and r of row block i."""
    o_r = i.to(tl.int64) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    m = (o_r < n_rows)[:, None] & m_d[None, :]
    p = o_r[:, None] * D + o_d[None, :]
    b_x = tl.load(x + p, mask=m, other=0.0).to(tl.float32)
    b_w = tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_r = tl.rsqrt(tl.sum(b_x * b_x, 1) / D + eps)
    return p, m, b_x, b_w, b_x * b_r[:, None], b_r


@triton.jit
def _rmsnorm_fwd_kernel(x, w, y, n_rows, D, eps, BR: tl.constexpr, BD: tl.constexpr):
    p, m, b_x, b_w, b_n, _ = _rows(x, w, tl.program_id(0), n_rows, D, eps, BR, BD)
    b_n = b_n.to(x.dtype.element_ty).to(tl.float32)  # rounded to x's dtype before the weight, as the reference
    tl.store(y + p, (b_w[None, :] * b_n).to(y.dtype.element_ty), mask=m)


@triton.jit
def _rmsnorm_bwd_kernel(x, w, dy, dx, dw_part, n_rows, D, eps, BR: tl.constexpr, BD: tl.constexpr,
                        HAS_DW: tl.constexpr):
    """dx for a row block; with HAS_DW (a trained weight) its share of dw into dw_part[program], summed after."""
    i = tl.program_id(0)
    p, m, b_x, b_w, b_n, b_r = _rows(x, w, i, n_rows, D, eps, BR, BD)
    b_dy = tl.load(dy + p, mask=m, other=0.0).to(tl.float32)
    b_dn = b_dy * b_w[None, :]
    b_dx = b_r[:, None] * (b_dn - b_n * (tl.sum(b_dn * b_n, 1) / D)[:, None])
    tl.store(dx + p, b_dx.to(dx.dtype.element_ty), mask=m)
    if HAS_DW:
        o_d = tl.arange(0, BD)
        b_nr = b_n.to(x.dtype.element_ty).to(tl.float32)
        tl.store(dw_part + i.to(tl.int64) * D + o_d, tl.sum(b_dy * b_nr, 0), mask=o_d < D)


def _check(x, weight):
    D = x.shape[-1]
    if weight.shape != (D,):
        raise ValueError(f"RMSNorm of x {tuple(x.shape)} needs weight [{D}], got {tuple(weight.shape)}")
    return D, x.numel() // D if D else 0


def _forward(x, weight, eps):
    """y for a contiguous x."""
    D, n_rows = _check(x, weight)
    y = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    if n_rows:
        BR, BD = _tile(D)
        _rmsnorm_fwd_kernel[(triton.cdiv(n_rows, BR),)](x, weight, y, n_rows, D, eps, BR=BR, BD=BD, num_warps=8)
    return y


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return _forward(x, weight, eps)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        D, n_rows = _check(x, weight)
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        BR, BD = _tile(D)
        n_prog = triton.cdiv(n_rows, BR)
        has_dw = ctx.needs_input_grad[1]  # a frozen weight (stage 1's norms): no partial sums written or summed
        dw_part = torch.empty(n_prog if has_dw else 0, D, device=x.device, dtype=torch.float32)
        if n_rows:
            _rmsnorm_bwd_kernel[(n_prog,)](x, weight, dy, dx, dw_part, n_rows, D, ctx.eps, BR=BR, BD=BD,
                                           HAS_DW=has_dw, num_warps=8)
        return dx, dw_part.sum(0).to(weight.dtype) if has_dw else None, None


def rmsnorm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight times the RMS-normalised x, with autograd. x [..., D]; weight [D]; y in their promoted dtype."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNormFunction.apply(x, weight, eps)
    return _forward(x.contiguous(), weight, eps)
