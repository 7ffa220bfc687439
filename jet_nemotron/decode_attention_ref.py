"""One-token attention against a (static) KV cache, grouped-query: the PyTorch reference.

    q [B, Hq, D]; k, v [B, Hkv, L, D] (transformers' cache layout); mask [B, L] bool (True = attend) or None;
    returns o [B, Hq, D] in q's dtype. Query head h reads KV head h // (Hq // Hkv). A row with no key to attend
    gets zeros (not NaN). Computed in fp32.
"""

from __future__ import annotations

import torch


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                         scale: float | None = None) -> torch.Tensor:
    B, Hq, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if mask is not None and tuple(mask.shape) != (B, L):
        raise ValueError(f"mask must be [B, L] = {(B, L)}, got {tuple(mask.shape)}")
    scale = D**-0.5 if scale is None else scale
    qg = q.float().view(B, Hkv, Hq // Hkv, D)
    s = (qg @ k.float().transpose(-1, -2)) * scale  # [B, Hkv, G, L]
    if mask is not None:
        s = s.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a fully masked row: softmax of all -inf is NaN, we want zeros
    return (p @ v.float()).reshape(B, Hq, D).to(q.dtype)
