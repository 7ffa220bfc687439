"""Rotary position embedding applied to queries and keys in plain PyTorch: the exact reference and the CPU path.

    x_embed = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]   (halves of the head dim)

Shapes (the same for every backend, see `ops.py`): q [B, Hq, L, D], k [B, Hk, L, D] (strided views are fine);
cos, sin [B, L, D] or [1, L, D]. Returns (q_embed, k_embed) in q's and k's dtypes, with eager PyTorch's rounding in low
precision: each product rounded, then their sum (Qwen2 / Qwen3's own `apply_rotary_pos_emb`, for a frozen teacher:
`convert/teacher_kernels.py`). Forward only.
"""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_embed, k_embed). Shapes in the module docstring."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
