"""The MLP's gated activation in Triton, forward and backward: one pass each instead of PyTorch's silu, multiply
and their three backward kernels, and no saved silu(gate) (the backward recomputes it from gate).

Same signature and shapes as `swiglu_ref.py`: gate, up [..., I], each with unit stride along I (the halves of one
product, as `fused_projections.linears_as_one` gives them, are such views); y in gate's dtype, fp32 inside.
With s = sigmoid(gate):
    y = gate s up;  dup = dy gate s;  dgate = dy up s (1 + gate (1 - s))
`act_rounded` rounds gate s to y's dtype before the product (eager bf16's two roundings, for a frozen teacher); its
backward is the one above.

`swiglu_packed_triton(gate_up)` takes the one product's output [..., 2I] itself (gate its first half, up its second)
and returns its gradient as one [..., 2I] tensor. Given the halves as views instead, autograd's backward of the split
that made them concatenates dgate and dup into a new tensor: in a stage-2 step of the real 1.5B model (frozen MLPs, 4
rows a forward) that was 112 copies of [4, 2048, 17920] bf16, about 180 us each on an H100.
"""

from __future__ import annotations

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

from .swiglu_ref import halves

BLOCK = 1024  # elements of one row per program


@triton.jit
def _swiglu_fwd_kernel(gate, up, y, I, s_gate, s_up, BLOCK: tl.constexpr, ACT_ROUNDED: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = o < I
    b_g = tl.load(gate + row * s_gate + o, mask=m, other=0.0).to(tl.float32)
    b_u = tl.load(up + row * s_up + o, mask=m, other=0.0).to(tl.float32)
    b_a = b_g * tl.sigmoid(b_g)
    if ACT_ROUNDED:
        b_a = b_a.to(y.dtype.element_ty).to(tl.float32)
        b_u = b_u.to(y.dtype.element_ty).to(tl.float32)
    tl.store(y + row * I + o, (b_a * b_u).to(y.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd_kernel(gate, up, dy, dgate, dup, I, s_gate, s_up, s_d, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = o < I
    b_g = tl.load(gate + row * s_gate + o, mask=m, other=0.0).to(tl.float32)
    b_u = tl.load(up + row * s_up + o, mask=m, other=0.0).to(tl.float32)
    b_dy = tl.load(dy + row * I + o, mask=m, other=0.0).to(tl.float32)
    b_s = tl.sigmoid(b_g)
    tl.store(dup + row * s_d + o, (b_dy * b_g * b_s).to(dup.dtype.element_ty), mask=m)
    tl.store(dgate + row * s_d + o, (b_dy * b_u * b_s * (1.0 + b_g * (1.0 - b_s))).to(dgate.dtype.element_ty), mask=m)


def _rows(gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gate, up [..., I] -> [rows, I] views with unit stride along I (copies only where that is not so)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu needs gate and up of one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    I = gate.shape[-1]

    def rows(t):
        t = t if t.stride(-1) == 1 else t.contiguous()
        try:
            return t.view(-1, I)  # keeps the row stride of a half of a wider product
        except RuntimeError:
            return t.reshape(-1, I).contiguous()

    return rows(gate), rows(up)


def _grid(n_rows: int, I: int) -> tuple[int, int]:
    return n_rows, triton.cdiv(I, BLOCK)


def _forward(ctx, gate: torch.Tensor, up: torch.Tensor, act_rounded: bool) -> torch.Tensor:
    g, u = _rows(gate, up)
    ctx.save_for_backward(g, u)
    ctx.shape = gate.shape
    y = torch.empty(gate.shape, device=gate.device, dtype=gate.dtype)
    if g.numel():
        _swiglu_fwd_kernel[_grid(*g.shape)](g, u, y, g.shape[1], g.stride(0), u.stride(0), BLOCK=BLOCK,
                                            ACT_ROUNDED=act_rounded)
    return y


def _backward(ctx, dy: torch.Tensor, dgate: torch.Tensor, dup: torch.Tensor) -> None:
    """Write the gradients into dgate, dup: [rows, I] views sharing one row stride."""
    g, u = ctx.saved_tensors
    dy = dy.contiguous()
    if g.numel():
        _swiglu_bwd_kernel[_grid(*g.shape)](g, u, dy, dgate, dup, g.shape[1], g.stride(0), u.stride(0),
                                            dgate.stride(0), BLOCK=BLOCK)


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, act_rounded):
        return _forward(ctx, gate, up, act_rounded)

    @staticmethod
    def backward(ctx, dy):
        g = ctx.saved_tensors[0]
        dgate = torch.empty(ctx.shape, device=g.device, dtype=g.dtype)
        dup = torch.empty(ctx.shape, device=g.device, dtype=g.dtype)
        _backward(ctx, dy, dgate.view(-1, g.shape[1]), dup.view(-1, g.shape[1]))
        return dgate, dup, None


class _SwiGLUPackedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up, act_rounded):
        return _forward(ctx, *halves(gate_up), act_rounded)

    @staticmethod
    def backward(ctx, dy):
        g = ctx.saved_tensors[0]
        d = torch.empty(*ctx.shape[:-1], 2 * ctx.shape[-1], device=g.device, dtype=g.dtype).view(-1, 2 * g.shape[1])
        _backward(ctx, dy, *d.split(g.shape[1], dim=-1))
        return d.view(*ctx.shape[:-1], -1), None


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor, act_rounded: bool = False) -> torch.Tensor:
    """silu(gate) * up, with autograd. gate, up [..., I]; y [..., I] in gate's dtype."""
    return _SwiGLUFunction.apply(gate, up, act_rounded)


def swiglu_packed_triton(gate_up: torch.Tensor, act_rounded: bool = False) -> torch.Tensor:
    """silu(gate) * up for gate, up = the halves of gate_up [..., 2I], with autograd; y [..., I] in its dtype, its
    gradient one [..., 2I] tensor."""
    return _SwiGLUPackedFunction.apply(gate_up, act_rounded)
