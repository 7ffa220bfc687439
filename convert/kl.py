"""Token-chunked KL(teacher || student) from final hidden states, never holding [tokens, vocab] logits.

For a 150K vocabulary and 8K tokens the fp32 logits alone are 4.9 GB per model. We take the final hidden
states [N, d] of both models and their output heads [V, d], and for each chunk of `chunk` tokens compute both
logit blocks [chunk, V], the KL, and drop them: peak extra memory is a few [chunk, V] fp32 blocks.

Two ways to get the gradients, the same function:
- the reference (`fused=False`): each chunk runs under activation checkpointing and autograd; backward recomputes
  both chunks' logits (the teacher's too) and softmaxes, then takes the gradients: six [chunk, d] x [d, V]
  products a chunk.
- fused (default): the gradient of the KL with respect to the student's logits is known in closed form,
  T / N * (softmax_s - softmax_t), so each chunk's forward also takes its gradients with respect to the student's
  hidden states and head (summed over chunks in fp32) and keeps those instead: four products a chunk, no
  recomputation, and backward only scales them. Under autocast the products run in its dtype as autocast runs them.

`top1` > 0 sharpens the target: KL(q || p_s) with q = (1 - top1) p_t + top1 onehot(argmax t), the teacher's
distribution with `top1` of its mass moved onto its first choice (ties: the lowest index, as torch.argmax). The
student's optimum is then q, whose first choice leads the runner-up by (1 - top1) (p1 - p2) + top1 where the teacher's
leads by p1 - p2: a margin, so that greedy decoding keeps the teacher's first choice where the teacher is unsure,
which is where the 15-minute students parted from the teacher's HumanEval answers
(`benchmarks/results/real_model/humaneval_from_openings/`). The gradient in the student's logits is closed too,
p_s - q. top1 = 0 is the plain KL, computed as before.

`focus` > 0 weighs each token's KL by w = 1 + focus (1 - max p_t), the teacher's own uncertainty at that token:
w = 1 where the teacher is sure, up to 1 + focus where its first choice holds little mass. The loss is the mean over
tokens of w KL (w a constant of the teacher's, no gradient), so the gradient in a token's logits is w (p_s - q). The
15-minute students parted from the teacher's passing HumanEval answers at tokens where the teacher's own first
choice held a median p of 0.43 (`humaneval_from_openings/`), tokens the plain mean weighs like any other. AdamW
does not see the loss's scale, the gradient clip does: a focus f raises the gradient norm by at most 1 + f.
focus = 0 is the plain mean.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .triton_device import check_triton_device


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 log-softmax of [n, V] logits / T. At T = 1 there is no division: an H200 profile of a stage-2 step spent
    47 ms of 1,848 dividing fp32 logits by 1 (the fp32 copy stays: log_softmax's dtype argument makes one too)."""
    if temperature == 1.0:
        return F.log_softmax(logits, dim=-1, dtype=torch.float32)
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _sharpened(log_p_t: torch.Tensor, t_logits: torch.Tensor, top1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The target q = (1 - top1) p_t + top1 onehot(argmax t_logits) [n, V] fp32 and q log q (0 where q is 0)."""
    q = log_p_t.exp().mul_(1.0 - top1)
    q.scatter_add_(-1, t_logits.argmax(-1, keepdim=True), q.new_full((q.shape[0], 1), top1))
    return q, torch.where(q > 0, q * q.log(), 0.0)


def _focus_weights(log_p_t: torch.Tensor, focus: float) -> torch.Tensor:
    """w = 1 + focus (1 - max p_t) per row [n] fp32, from the teacher's fp32 log-probabilities [n, V]."""
    return 1.0 + focus * (1.0 - log_p_t.amax(-1).exp())


def kl_rows(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float,
            top1: float = 0.0, focus: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused KL's work on one chunk: s_logits, t_logits [n, V] -> (w KL(q || p_s) per row [n] fp32,
    w (p_s - q) [n, V] in s_logits' dtype), p = softmax(logits / T) in fp32, q = p_t sharpened by `top1` (module
    docstring; at 0, q = p_t), w the teacher's uncertainty weight by `focus` (at 0, w = 1). The reference of
    `kl_rows_triton.kl_rows_triton`."""
    log_p_s = _log_probs(s_logits, temperature)
    log_p_t = _log_probs(t_logits, temperature)
    if top1:
        q, q_log_q = _sharpened(log_p_t, t_logits, top1)
        kl = (q_log_q - q * log_p_s).sum(-1)
    else:
        q = log_p_t.exp()
        kl = (q * (log_p_t - log_p_s)).sum(-1)
    w = _focus_weights(log_p_t, focus) if focus else None
    del log_p_t
    g = log_p_s.exp_().sub_(q)
    if w is not None:
        kl, g = kl * w, g.mul_(w[:, None])
    return kl, g.to(s_logits.dtype)


def _chunk_kl_sum(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                  temperature: float, top1: float = 0.0, focus: float = 0.0) -> torch.Tensor:
    """Sum over the chunk's tokens of KL(q || p_s) times the teacher's uncertainty weight by `focus` (1 at 0),
    q = p_t sharpened by `top1`; h [n, d], w [V, d]. fp32 softmax."""
    log_p_s = _log_probs(h_s @ w_s.t(), temperature)
    with torch.no_grad():
        t_logits = h_t @ w_t.t()
        log_p_t = _log_probs(t_logits, temperature)
        q, q_log_q = _sharpened(log_p_t, t_logits, top1) if top1 else (log_p_t.exp(), None)
        weight = _focus_weights(log_p_t, focus) if focus else None
    kl = (q * (log_p_t - log_p_s)).sum(-1) if q_log_q is None else (q_log_q - q * log_p_s).sum(-1)
    return kl.sum() if weight is None else (weight * kl).sum()


def chunked_kl(h_student: torch.Tensor, w_student: torch.Tensor, h_teacher: torch.Tensor, w_teacher: torch.Tensor,
               chunk: int = 1024, temperature: float = 1.0, fused: bool = True, kernel: bool = False,
               top1: float = 0.0, focus: float = 0.0) -> torch.Tensor:
    """Mean over tokens of KL(softmax(h_t W_t^T / T) || softmax(h_s W_s^T / T)), times T^2 (Hinton scaling); with
    `top1` in (0, 1) the teacher's side is sharpened towards its argmax by that share, with `focus` > 0 each token's
    KL is weighed by the teacher's uncertainty there (module docstring).

    h_student [N, d] (or [B, L, d]), w_student [V, d]; same for the teacher (no gradient is taken through it).
    Returns a scalar fp32 tensor. Matches `F.kl_div(log_softmax(s), log_softmax(t), log_target=True,
    reduction="batchmean")` on full logits (tested), forward and backward, fused or not. `kernel` (fused only) runs
    each chunk's softmax work in Triton (`kl_rows_triton.py`), on CUDA or in Triton's interpreter.
    """
    h_s, h_t = h_student.reshape(-1, h_student.shape[-1]), h_teacher.reshape(-1, h_teacher.shape[-1]).detach()
    if h_s.shape[0] != h_t.shape[0]:
        raise ValueError(f"student has {h_s.shape[0]} tokens, teacher {h_t.shape[0]}")
    if not 0 <= top1 < 1:
        raise ValueError(f"top1 is the share of the target moved onto the teacher's first choice, in [0, 1); "
                         f"got {top1}")
    if not (focus >= 0 and math.isfinite(focus)):
        raise ValueError(f"focus weighs a token's KL by 1 + focus (1 - the teacher's top probability), a finite "
                         f"number >= 0; got {focus}")
    w_t = w_teacher.detach()
    dev = h_s.device.type
    if torch.is_autocast_enabled(dev):
        # autocast would cast a teacher head held in fp32 to bf16 again for every chunk: once here instead. The
        # student's head keeps its per-chunk cast, so its gradient still sums over chunks in fp32 (one cast here
        # would sum the chunks' gradients in bf16)
        w_t = w_t.to(torch.get_autocast_dtype(dev))
    if fused and torch.is_grad_enabled() and (h_s.requires_grad or w_student.requires_grad):
        rows = functools.partial(rows_fn(kernel, h_s.device), top1=top1, focus=focus)
        return _FusedKL.apply(h_s, w_student, h_t, w_t, chunk, temperature, rows)
    total = h_s.new_zeros((), dtype=torch.float32)
    for i in range(0, h_s.shape[0], chunk):
        hs, ht = h_s[i : i + chunk], h_t[i : i + chunk]
        if torch.is_grad_enabled() and (hs.requires_grad or w_student.requires_grad):
            total = total + checkpoint(_chunk_kl_sum, hs, w_student, ht, w_t, temperature, top1, focus,
                                       use_reentrant=False)
        else:
            total = total + _chunk_kl_sum(hs, w_student, ht, w_t, temperature, top1, focus)
    return total * (temperature ** 2) / h_s.shape[0]


class _FusedKL(torch.autograd.Function):
    """`chunked_kl` with each chunk's gradients taken in its forward (module docstring). h_s [N, d], w_s [V, d]."""

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, chunk: int, temperature: float, rows=kl_rows):
        dev = h_s.device.type
        # the products run in autocast's dtype as autocast runs them (the reference's); the head is cast to it once
        # for all chunks, since no autograd sums its gradient here: the chunks' gradients add up in fp32 below
        low = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(h_s.dtype,
                                                                                                         w_s.dtype)
        n = h_s.shape[0]
        grad_h = torch.empty_like(h_s) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=h_s.device)
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            w_low, w_t = w_s.to(low), w_t.to(low)
            for i in range(0, n, chunk):
                hs = h_s[i: i + chunk].to(low)
                # g: d(sum of the chunk's KL) / d(logits / T), p_s - q [n, V]
                kl, g = rows(hs @ w_low.t(), h_t[i: i + chunk].to(low) @ w_t.t(), temperature)
                total += kl.sum()
                if grad_h is not None:
                    grad_h[i: i + chunk] = g @ w_low
                if grad_w is not None:
                    _add_product(grad_w, g.t(), hs)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.scale = temperature / n  # d(logits / T) / d(logits) = 1 / T, times the loss's T^2 / N
        ctx.w_dtype = w_s.dtype
        return total * (temperature ** 2) / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        s = grad_out * ctx.scale
        return (None if grad_h is None else grad_h * s.to(grad_h.dtype),
                None if grad_w is None else (grad_w * s).to(ctx.w_dtype), None, None, None, None, None)


def _add_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc [m, n] fp32 += a [m, k] @ b [k, n]. With bf16 / fp16 factors on CUDA, cuBLAS adds the product into the fp32
    sum inside the GEMM (`out_dtype`): the head's [V, d] product is neither rounded to bf16 nor copied to fp32 and added
    apart, once a KL chunk (34 of each a stage-2 step on the H200, about 60 ms of 1,522). The CPU has no such kernel:
    there the product is rounded to its factors' dtype, then added."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc += (a @ b).to(acc.dtype)


def rows_fn(kernel: bool, device: torch.device):
    """`kl_rows`, or with `kernel` its Triton twin: on CUDA, or on the CPU in Triton's interpreter (tests). Asked for
    where neither holds, it is an error, not a quiet fallback to the reference."""
    if not kernel:
        return kl_rows
    check_triton_device("the Triton KL kernel (kernel=True, DistillConfig.kl_kernel)", device)
    from .kl_rows_triton import kl_rows_triton

    return kl_rows_triton
