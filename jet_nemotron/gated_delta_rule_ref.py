"""Gated delta rule in plain PyTorch: the exact reference and the CPU path.

Recurrence per head, state S of shape [K, V] in fp32:
    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T
    o_t = S_t^T (q_t * scale)
q and k are L2-normalised per head first when `use_qk_l2norm_in_kernel` is set.

Shapes (the same for every backend, see `ops.py`):
    q, k          [B, T, H, K]
    v             [B, T, H, V]
    g             [B, T, H]   log-space decay (<= 0), fp32
    beta          [B, T, H]   write strength in (0, 1)
    initial_state [N, H, K, V] fp32, N = B, or the number of sequences when `cu_seqlens` is given
    cu_seqlens    [N + 1] int64 offsets of packed sequences (then B must be 1)
Returns o [B, T, H, V] in v's dtype and the final state [N, H, K, V] fp32 (or None).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension, in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta, scale, use_qk_l2norm_in_kernel):
    """Upcast to fp32 and move heads before time: [B, H, T, D]."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q.float().transpose(1, 2) * scale
    k = k.float().transpose(1, 2)
    v = v.float().transpose(1, 2)
    g = g.float().transpose(1, 2)
    beta = beta.float().transpose(1, 2)
    return q, k, v, g, beta


def _split_varlen(fn, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel, **kw):
    """Run `fn` on each packed sequence of a [1, T_total, ...] batch and concatenate."""
    if q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a batch of 1 packed sequence, got batch {q.shape[0]}")
    n = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape[0] != n:
        raise ValueError(f"initial_state has {initial_state.shape[0]} rows, cu_seqlens describes {n} sequences")
    outs, states = [], []
    bounds = cu_seqlens.tolist()
    for i in range(n):
        s, e = bounds[i], bounds[i + 1]
        h0 = None if initial_state is None else initial_state[i : i + 1]
        o, ht = fn(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e], scale, h0, output_final_state,
                   None, use_qk_l2norm_in_kernel, **kw)
        outs.append(o)
        states.append(ht)
    o = torch.cat(outs, dim=1)
    return o, (torch.cat(states, dim=0) if output_final_state else None)


def recurrent_gated_delta_rule_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None, use_qk_l2norm_in_kernel: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token gated delta rule (the definition). Shapes in the module docstring."""
    if cu_seqlens is not None:
        return _split_varlen(recurrent_gated_delta_rule_ref, q, k, v, g, beta, scale, initial_state,
                             output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, scale, use_qk_l2norm_in_kernel)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    o = q.new_empty(B, H, T, V)
    for t in range(T):
        S = S * g[:, :, t].exp()[..., None, None]
        # what the state currently predicts for k_t: S^T k_t  [B, H, V]
        pred = torch.einsum("bhkv,bhk->bhv", S, k[:, :, t])
        delta = (v[:, :, t] - pred) * beta[:, :, t, None]
        S = S + k[:, :, t, :, None] * delta[:, :, None, :]
        o[:, :, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, :, t])
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


def chunk_gated_delta_rule_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None, use_qk_l2norm_in_kernel: bool = True, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule (WY representation); same function as the recurrent form.

    Within a chunk with cumulative log decay G_t and Gamma[t, s] = exp(G_t - G_s) (s <= t), the values
    written to the state are U = (I + L)^-1 (beta*V - beta*exp(G)*K S_0) with
    L[t, s] = beta_t Gamma[t, s] k_t.k_s for s < t, so one triangular solve per chunk replaces the
    token loop; the output is exp(G) Q S_0 + (Q K^T * Gamma) U.
    """
    if cu_seqlens is not None:
        return _split_varlen(chunk_gated_delta_rule_ref, q, k, v, g, beta, scale, initial_state,
                             output_final_state, cu_seqlens, use_qk_l2norm_in_kernel, chunk_size=chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, scale, use_qk_l2norm_in_kernel)
    C = chunk_size
    pad = (-T) % C
    if pad:
        # zero k, v, beta and g leave the state untouched, so padding the tail is exact
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (T + pad) // C
    q, k, v = (x.reshape(B, H, n, C, -1) for x in (q, k, v))
    g, beta = (x.reshape(B, H, n, C) for x in (g, beta))

    G = g.cumsum(-1)  # [B, H, n, C]
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # mask before exp: G_t - G_s > 0 above the diagonal would overflow
    gamma = (G[..., :, None] - G[..., None, :]).masked_fill(~incl, float("-inf")).exp()  # [B, H, n, C, C]
    strict = torch.ones(C, C, dtype=q.dtype, device=q.device).tril(-1)
    L = beta[..., :, None] * (k @ k.transpose(-1, -2)) * gamma * strict
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    Tinv = torch.linalg.solve_triangular(eye + L, eye.expand_as(L), upper=False, unitriangular=True)
    w_v = Tinv @ (beta[..., None] * v)  # [B, H, n, C, V]
    w_k = Tinv @ ((beta * G.exp())[..., None] * k)  # [B, H, n, C, K]
    qk = (q @ k.transpose(-1, -2)) * gamma  # [B, H, n, C, C]
    q_decayed = q * G.exp()[..., None]
    k_to_end = k * (G[..., -1:] - G).exp()[..., None]  # decay from each token to the chunk's end

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    o = q.new_empty(B, H, n, C, V)
    for i in range(n):
        u = w_v[:, :, i] - w_k[:, :, i] @ S  # [B, H, C, V]
        o[:, :, i] = q_decayed[:, :, i] @ S + qk[:, :, i] @ u
        S = S * G[:, :, i, -1].exp()[..., None, None] + k_to_end[:, :, i].transpose(-1, -2) @ u
    o = o.reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2).to(out_dtype), (S if output_final_state else None)


def gated_delta_rule_step_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor, scale: float | None = None, use_qk_l2norm_in_kernel: bool = True,
) -> torch.Tensor:
    """One decode step for a batch; updates `state` in place.

    q, k [B, H, K]; v [B, H, V]; g, beta [B, H]; state [B, H, K, V] fp32. Returns o [B, H, V].
    """
    o, new_state = recurrent_gated_delta_rule_ref(
        q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], scale, state, True, None,
        use_qk_l2norm_in_kernel)
    state.copy_(new_state)
    return o[:, 0]
