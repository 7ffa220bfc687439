"""Dynamic causal depthwise convolution in plain PyTorch: the exact reference and the CPU path.

Every token t brings its own kernel of width K for every channel c (made by the JetBlock's kernel
generator from the layer input); the output is
    y_t[c] = silu(sum_{j<K} kernel_t[c, j] * x_{t-K+1+j}[c])
with zeros (or the cached history) before the start; j = K-1 weighs the current token.

Shapes (the same for every backend, see `ops.py`):
    x           [B, T, C]     raw values (v_proj outputs)
    kernels     [B, T, C, K]
    history     [N, C, H]     previous raw inputs, most recent last (H >= K-1; only the last K-1 are read)
    cu_seqlens  [N + 1]       offsets of packed sequences (then B must be 1); the convolution restarts at each
Returns y [B, T, C] in x's dtype; accumulation is fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dynamic_conv_ref(x: torch.Tensor, kernels: torch.Tensor, history: torch.Tensor | None = None,
                     cu_seqlens: torch.LongTensor | None = None) -> torch.Tensor:
    """Causal dynamic convolution followed by SiLU. Shapes in the module docstring."""
    if cu_seqlens is not None:
        if x.shape[0] != 1:
            raise ValueError(f"cu_seqlens needs a batch of 1 packed sequence, got batch {x.shape[0]}")
        bounds = cu_seqlens.tolist()
        outs = []
        for i in range(len(bounds) - 1):
            s, e = bounds[i], bounds[i + 1]
            h = None if history is None else history[i : i + 1]
            outs.append(dynamic_conv_ref(x[:, s:e], kernels[:, s:e], h))
        return torch.cat(outs, dim=1)
    B, T, C = x.shape
    K = kernels.shape[-1]
    if history is None:
        past = x.new_zeros(B, K - 1, C, dtype=torch.float32)
    else:
        if history.shape[-1] < K - 1:
            raise ValueError(f"conv history holds {history.shape[-1]} steps, the kernel needs {K - 1}")
        past = history[..., history.shape[-1] - (K - 1):].transpose(1, 2).float()
    xp = torch.cat([past, x.float()], dim=1)  # [B, K-1+T, C]
    windows = xp.unfold(1, K, 1)  # [B, T, C, K]; windows[:, t, :, j] = x_{t-K+1+j}
    y = (windows * kernels.float()).sum(-1)
    return F.silu(y).to(x.dtype)


def dynamic_conv_step_ref(x: torch.Tensor, kernel: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
    """One decode step; shifts `x` into `conv_state` in place.

    x [B, C]; kernel [B, C, K]; conv_state [B, C, K] (the last K raw inputs, most recent last).
    Returns y [B, C] in x's dtype.
    """
    new_state = torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1)
    conv_state.copy_(new_state)
    y = (new_state.float() * kernel.float()).sum(-1)
    return F.silu(y).to(x.dtype)
