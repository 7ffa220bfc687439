"""Stage 1's attention-output loss in Triton, forward and backward: mean((s - t)^2) / mean(t^2) in fp32.

The reference (`distill_loss.normalised_mse`) makes three fp32 copies of the [B, L, d] bf16 outputs (s once, t twice), a
difference, two squares and two means forward, and three more elementwise kernels and a cast backward. In the H200
profile of an attention-transfer step (`benchmarks/results/real_model/knobs_v2_3min_cut/profile/`, 24 JetBlocks x 2
micro-batches a step) those came to about 30 ms of 684. Here the forward reads s and t once (per-block fp32 sums of
(s - t)^2 and t^2, added up after) and the backward reads them once and writes ds once.

Same signature as the reference: s, t [...] of one shape (any float dtypes); returns a scalar fp32 tensor. The
target gets no gradient: it is the teacher's output, and a t that requires one is refused.
    loss = S_d / max(S_t, N 1e-8),  S_d = sum (s - t)^2,  S_t = sum t^2;   ds = g 2 (s - t) / max(S_t, N 1e-8)
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"the Triton attention-MSE kernel needs triton: {err}") from err

BLOCK = 4096  # elements a program: 16 fp32 a thread at 8 warps


@triton.jit
def _sums_kernel(s, t, part, N, BLOCK: tl.constexpr):
    """part[i] = (sum over block i of (s - t)^2, sum of t^2), fp32."""
    i = tl.program_id(0)
    o = i.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    b_s = tl.load(s + o, mask=m, other=0.0).to(tl.float32)
    b_t = tl.load(t + o, mask=m, other=0.0).to(tl.float32)
    d = b_s - b_t
    tl.store(part + 2 * i, tl.sum(d * d, 0))
    tl.store(part + 2 * i + 1, tl.sum(b_t * b_t, 0))


@triton.jit
def _grad_kernel(s, t, ds, scale, N, BLOCK: tl.constexpr):
    """ds = scale (s - t), in ds's dtype; scale = 2 g / max(S_t, N 1e-8), one fp32 on the device."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    b_s = tl.load(s + o, mask=m, other=0.0).to(tl.float32)
    b_t = tl.load(t + o, mask=m, other=0.0).to(tl.float32)
    c = tl.load(scale)
    tl.store(ds + o, (c * (b_s - b_t)).to(ds.dtype.element_ty), mask=m)


class _NormalisedMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t):
        s, t = s.contiguous(), t.contiguous()
        n = s.numel()
        if n:  # every block writes its two sums: no memset
            part = torch.empty(triton.cdiv(n, BLOCK), 2, dtype=torch.float32, device=s.device)
            _sums_kernel[(triton.cdiv(n, BLOCK),)](s, t, part, n, BLOCK=BLOCK, num_warps=8)
        else:
            part = torch.zeros(1, 2, dtype=torch.float32, device=s.device)
        sums = part.sum(0)
        # the reference's clamp of mean(t^2) at 1e-8, on the sum: mean = sum / N
        denom = sums[1].clamp(min=1e-8 * n)
        ctx.save_for_backward(s, t, denom)
        return sums[0] / denom

    @staticmethod
    def backward(ctx, g):
        s, t, denom = ctx.saved_tensors
        scale = (2.0 * g.float() / denom).reshape(1)
        ds = torch.empty_like(s)
        if s.numel():
            _grad_kernel[(triton.cdiv(s.numel(), BLOCK),)](s, t, ds, scale, s.numel(), BLOCK=BLOCK, num_warps=8)
        return ds, None


def normalised_mse_triton(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean((s - t)^2) / mean(t^2) in fp32, with autograd for s. s, t [...] of one shape; see the module."""
    if s.shape != t.shape:
        raise ValueError(f"normalised_mse needs s and t of one shape, got {tuple(s.shape)} and {tuple(t.shape)}")
    if t.requires_grad:
        raise ValueError("normalised_mse_triton takes no gradient for the target t (the teacher's output); detach it "
                         "or use the reference, distill_loss.normalised_mse")
    return _NormalisedMSE.apply(s, t)
