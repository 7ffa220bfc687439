"""Shape checks of a forward call's inputs, so a wrong shape fails with its name instead of deep inside a matmul.

Only static properties are read (ndim, sizes, dtype), never tensor values: the checks cost nothing, add no
device sync and trace under torch.compile as guards.
"""

from __future__ import annotations

import torch


def check_forward_inputs(config, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None) -> None:
    """input_ids [B, T] integer, or inputs_embeds [B, T, hidden]; attention_mask [B, >= T] (2-D) or 4-D with T
    query rows; position_ids [B or 1, T] or [T]. Raises ValueError naming the argument and both shapes."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        B, T = input_ids.shape
    else:
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must be [batch, seq_len, {config.hidden_size}], got shape "
                             f"{tuple(inputs_embeds.shape)}")
        B, T = inputs_embeds.shape[:2]
    if isinstance(attention_mask, torch.Tensor):
        m = tuple(attention_mask.shape)
        if attention_mask.ndim == 2:
            if m[0] != B or m[1] < T:
                raise ValueError(f"attention_mask must be [batch {B}, past + seq_len >= {T}] for inputs of shape "
                                 f"({B}, {T}), got {m}")
        elif attention_mask.ndim == 4:
            if m[0] not in (1, B) or m[2] != T:
                raise ValueError(f"a 4-D attention_mask must be [batch {B} or 1, heads, {T}, keys] for inputs of "
                                 f"shape ({B}, {T}), got {m}")
        else:
            raise ValueError(f"attention_mask must be 2-D [batch, keys] or 4-D, got shape {m}")
    if position_ids is not None:
        p = tuple(position_ids.shape)
        if position_ids.ndim not in (1, 2) or p[-1] != T or (position_ids.ndim == 2 and p[0] not in (1, B)):
            raise ValueError(f"position_ids must be [batch {B} or 1, {T}] for inputs of shape ({B}, {T}), got {p} "
                             "(generate derives them from attention_mask: is it [batch, past + seq_len]?)")
