"""The frozen teacher's MLP projections in FP8 while it distils: inference only, the teacher's weights never train.

A distillation step runs the teacher's forward on every row (about 29% of a stage-2 step's FLOPs for the 1.5B Qwen,
more of an attention-transfer step), and 88% of that forward is its MLPs' three products. Hopper multiplies e4m3
FP8 at twice bf16's rate. Each MLP weight [N, K] is rounded once to e4m3 with one fp32 scale per output row (its
largest entry maps to 448, e4m3's largest); each input [M, K] is rounded per token the same way when it arrives;
`torch._scaled_mm` multiplies the two with fp32 accumulation and both scales applied, into bf16.

`fp8_linear` runs that product on CUDA; `fp8_linear_ref` is the same arithmetic in PyTorch (the rounded factors
multiplied back out in fp32), which the CPU runs and the tests hold the kernel to. The rounding is the point to
check before a card is spent on it: `benchmarks/teacher_fp8_error.py` measures the real teacher's KL to itself with
FP8 MLPs (CPU, the reference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .teacher_kernels import copy_sharing_tensors

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x / scale rounded to float8_e4m3fn [M, K], scale [M, 1] fp32), scale = amax of the row / 448 (an
    all-zero row keeps scale 1, so it stays zero rather than dividing by zero)."""
    amax = x.abs().amax(-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def _rowwise(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
             product: Callable) -> torch.Tensor:
    """x [..., K] rounded per row, `product`(x_q [M, K], x_scale [M, 1], w_q, w_scale) -> [M, N], in x's dtype (+ bias),
    [..., N]: what the kernel and its reference share."""
    x_q, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    out = product(x_q, x_scale, w_q, w_scale).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], w_q.shape[0])


def fp8_linear_ref(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ (w_q * w_scale)^T [K, N] with x rounded per row to e4m3 as it arrives; w_q [N, K] float8_e4m3fn,
    w_scale [N, 1] fp32; -> [..., N] in x's dtype (+ bias). fp32 products of the rounded factors: the arithmetic of
    `fp8_linear`'s kernel, in PyTorch."""
    return _rowwise(x, w_q, w_scale, bias, lambda xq, xs, wq, ws: (xq.float() * xs) @ (wq.float() * ws).t())


def fp8_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """`fp8_linear_ref` on CUDA through `torch._scaled_mm` (row-wise scales, fp32 accumulation, bf16 out)."""
    return _rowwise(x, w_q, w_scale, bias, lambda xq, xs, wq, ws: torch._scaled_mm(
        xq, wq.t(), scale_a=xs, scale_b=ws.reshape(1, -1), out_dtype=torch.bfloat16))


class Fp8Linear(nn.Module):
    """A frozen nn.Linear with its weight held in e4m3 and one fp32 scale a row; x [..., K] -> [..., N]. On CUDA the
    product is `fp8_linear`, elsewhere `fp8_linear_ref` (the same rounding)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w_q, w_scale = quantize_rows(linear.weight.detach())
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = fp8_linear if x.is_cuda else fp8_linear_ref
        return fn(x, self.w_q, self.w_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 with row scales"


MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def check_fp8_device(device: torch.device) -> None:
    """Refuse a CUDA card without e4m3 products (before Ada / Hopper, compute capability 8.9), naming it, before any
    step rather than at the teacher's first forward. The CPU runs the reference (the same rounding, no faster)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"teacher_fp8 (--teacher-fp8): {torch.cuda.get_device_name(device)} has no FP8 products "
                         f"(compute capability {torch.cuda.get_device_capability(device)}, 8.9 or newer needed)")


def with_fp8_mlps(model: nn.Module, projections: tuple[str, ...] = MLP_PROJECTIONS,
                  linear: Callable[[nn.Linear], nn.Module] = Fp8Linear) -> tuple[nn.Module, int]:
    """(a copy of `model` whose MLPs' `projections` (of gate / up / down) are `linear`(the projection), `Fp8Linear` by
    default, how many were swapped). The copy shares every other parameter and buffer with `model`; `model` keeps its
    own projections (the caller's teacher evaluates as it was). An MLP is a module holding all three projections as
    nn.Linear. `linear` lets a measurement swap in another rounding (`benchmarks/teacher_fp8_error.py --blocks`)."""
    if not projections or set(projections) - set(MLP_PROJECTIONS):
        raise ValueError(f"FP8 projections are some of {MLP_PROJECTIONS}, got {projections}")
    out = copy_sharing_tensors(model)
    n = 0
    for m in list(out.modules()):
        if all(isinstance(getattr(m, p, None), nn.Linear) for p in MLP_PROJECTIONS):
            for p in projections:
                setattr(m, p, linear(getattr(m, p)))
                n += 1
    return out, n
