"""The JetBlock's output norm in Triton, forward and backward: one pass over x and gate instead of PyTorch's
chain of fp32 elementwise kernels (about 8 full-size fp32 tensors written per layer in eager prefill).

Same signature and shapes as `gated_rmsnorm_ref.py`: x, gate [..., D]; weight [D]; y in x's dtype, fp32 inside.
With r = rsqrt(mean(x^2) + eps), n = x r, s = silu(gate):
    y = w n s;  dw = sum_rows dy n s;  dgate = dy w n silu'(gate);  dx = r (dn - n mean(dn n)), dn = dy w s
The backward recomputes r from x (one row reduction) rather than saving it. gate is read in place where its rows
are heads of evenly spaced tokens (`_gate_rows`: a JetBlock's gate is one of its projections' outputs side by side);
x, y and the gradients are contiguous.
"""

from __future__ import annotations

import math

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

ROWS = 16  # rows per program: [16, 256] fp32 tiles for the 2B shape's dv = 256


@triton.jit
def _rows(x, gate, w, i, n_rows, D, H, SG, eps, BR: tl.constexpr, BD: tl.constexpr):
    """Offsets, mask and the fp32 tiles (x, gate, weight, n = x r, r) of row block i. Row r of gate is head r % H
    of token r // H, its tokens SG elements apart."""
    o_r = i.to(tl.int64) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    m = (o_r < n_rows)[:, None] & m_d[None, :]
    p = o_r[:, None] * D + o_d[None, :]
    b_x = tl.load(x + p, mask=m, other=0.0).to(tl.float32)
    b_g = tl.load(gate + ((o_r // H) * SG + (o_r % H) * D)[:, None] + o_d[None, :], mask=m, other=0.0).to(tl.float32)
    b_w = tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_r = tl.rsqrt(tl.sum(b_x * b_x, 1) / D + eps)
    return p, m, b_x, b_g, b_w, b_x * b_r[:, None], b_r


@triton.jit
def _norm_fwd_kernel(x, gate, w, y, n_rows, D, H, SG, eps, BR: tl.constexpr, BD: tl.constexpr):
    p, m, b_x, b_g, b_w, b_n, _ = _rows(x, gate, w, tl.program_id(0), n_rows, D, H, SG, eps, BR, BD)
    b_y = b_w[None, :] * b_n * (b_g * tl.sigmoid(b_g))
    tl.store(y + p, b_y.to(y.dtype.element_ty), mask=m)


@triton.jit
def _norm_bwd_kernel(x, gate, w, dy, dx, dgate, dw_part, n_rows, D, H, SG, eps, BR: tl.constexpr,
                     BD: tl.constexpr):
    """dx, dgate (contiguous) for a row block; its share of dw into dw_part[program] (summed on the host side)."""
    i = tl.program_id(0)
    p, m, b_x, b_g, b_w, b_n, b_r = _rows(x, gate, w, i, n_rows, D, H, SG, eps, BR, BD)
    b_dy = tl.load(dy + p, mask=m, other=0.0).to(tl.float32)
    b_sg = tl.sigmoid(b_g)
    b_s = b_g * b_sg
    b_dgate = b_dy * b_w[None, :] * b_n * b_sg * (1.0 + b_g * (1.0 - b_sg))
    b_dn = b_dy * b_w[None, :] * b_s
    b_dx = b_r[:, None] * (b_dn - b_n * (tl.sum(b_dn * b_n, 1) / D)[:, None])
    tl.store(dx + p, b_dx.to(dx.dtype.element_ty), mask=m)
    tl.store(dgate + p, b_dgate.to(dgate.dtype.element_ty), mask=m)
    o_d = tl.arange(0, BD)
    tl.store(dw_part + i.to(tl.int64) * D + o_d, tl.sum(b_dy * b_n * b_s, 0), mask=o_d < D)


def _sizes(x):
    """(D, rows) of x [..., D]."""
    D = x.shape[-1]
    return D, x.numel() // D if D else 0


def _check(x, gate, weight):
    D = x.shape[-1]
    if gate.shape != x.shape or weight.shape != (D,):
        raise ValueError(f"gated RMSNorm needs gate of x's shape {tuple(x.shape)} and weight [{D}], got gate "
                         f"{tuple(gate.shape)} and weight {tuple(weight.shape)}")


def _gate_rows(gate: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(gate as [N, H, D] with unit stride along D and heads D apart, H, the stride of its tokens): a view where
    gate [..., H, D] is so laid out, else of a contiguous copy. Where its tokens lie H * D apart too (a contiguous
    gate), (g, 1, D): every row then sits at row * D, and Triton compiles an integer argument of 1 as a constant,
    so the kernel's per-row token and head arithmetic folds away and its loads are as before gate took strides."""
    H, D = (gate.shape[-2], gate.shape[-1]) if gate.dim() > 1 else (1, gate.shape[-1])
    N = math.prod(gate.shape[:-2])
    try:
        g = gate.view(N, H, D)
    except RuntimeError:
        g = gate.contiguous().view(N, H, D)
    if g.stride(2) != 1 or g.stride(1) != D or g.stride(0) < H * D:
        g = g.contiguous()
    if g.stride(0) == H * D:
        return g, 1, D
    return g, H, g.stride(0)


def _forward(x, g, H, SG, weight, eps):
    """y for contiguous x [..., D] and gate as `_gate_rows` gives it (g [N, H, D], token stride SG)."""
    D, n_rows = _sizes(x)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if n_rows:
        _norm_fwd_kernel[(triton.cdiv(n_rows, ROWS),)](x, g, weight, y, n_rows, D, H, SG, eps, BR=ROWS,
                                                       BD=triton.next_power_of_2(D), num_warps=4)
    return y


class _GatedRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, weight, eps):
        _check(x, gate, weight)
        # once, for both passes; gate copied only where `_gate_rows` cannot read it in place
        x, (g, H, SG) = x.contiguous(), _gate_rows(gate)
        ctx.save_for_backward(x, g, weight)
        ctx.eps, ctx.H, ctx.SG, ctx.gate_shape = eps, H, SG, gate.shape
        return _forward(x, g, H, SG, weight, eps)

    @staticmethod
    def backward(ctx, dy):
        x, g, weight = ctx.saved_tensors
        D, n_rows = _sizes(x)
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        dgate = torch.empty(ctx.gate_shape, device=g.device, dtype=g.dtype)
        n_prog = triton.cdiv(n_rows, ROWS)
        dw_part = torch.empty(n_prog, D, device=x.device, dtype=torch.float32)
        if n_rows:
            # 8 warps: at 4 the sm_90 build holds 189 registers a thread, two programs an SM, too few loads in flight
            # (69% of the copy roofline at 64K, H100); 8 warps need 80 (cuobjdump). Not yet timed.
            _norm_bwd_kernel[(n_prog,)](x, g, weight, dy, dx, dgate, dw_part, n_rows, D, ctx.H, ctx.SG, ctx.eps,
                                        BR=ROWS, BD=triton.next_power_of_2(D), num_warps=8)
        return dx, dgate, dw_part.sum(0).to(weight.dtype), None


def gated_rmsnorm_triton(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x times weight times silu(gate), with autograd. x, gate [..., D]; weight [D]; y in x's dtype."""
    if torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad or weight.requires_grad):
        return _GatedRMSNormFunction.apply(x, gate, weight, eps)
    _check(x, gate, weight)
    return _forward(x.contiguous(), *_gate_rows(gate), weight, eps)
