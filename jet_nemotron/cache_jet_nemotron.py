"""The hybrid cache: growing KV only for full-attention layers, at most the window for sliding layers, and a
fixed-size state for JetBlocks (recurrent state [B, H, dk, dv], fp32 unless `recurrent_state_dtype` says bfloat16,
+ the last conv_size raw values [B, H*dv, K]).

It is transformers' own per-layer cache machinery (`DynamicCache` / `StaticCache` built from
`config.layer_types`), so `generate()`, beam-search reordering, masks and `torch.compile` work unchanged;
what we add is the accounting of bytes per layer kind.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, StaticCache


def _layer_tensors(layer) -> list[torch.Tensor]:
    tensors = [getattr(layer, name, None) for name in ("keys", "values")]
    for name in ("conv_states", "recurrent_states"):
        tensors += list((getattr(layer, name, None) or {}).values())
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def cache_nbytes_per_layer_type(cache: Cache, layer_types: list[str]) -> dict[str, int]:
    """Bytes actually held by `cache`, summed per layer kind ("full_attention", "sliding_attention",
    "linear_attention"), plus "total". Counts the tensors themselves, not their preallocated slack."""
    if len(cache.layers) != len(layer_types):
        raise ValueError(f"cache has {len(cache.layers)} layers, the model {len(layer_types)}")
    out = dict.fromkeys(sorted(set(layer_types)), 0)
    for layer, kind in zip(cache.layers, layer_types):
        out[kind] += sum(t.numel() * t.element_size() for t in _layer_tensors(layer))
    out["total"] = sum(out.values())
    return out


def cache_nbytes_estimate(config, context: int, kv_bytes: int = 2) -> int:
    """Bytes of cache one sequence of `context` tokens holds, from the config alone; for Jet-Nemotron configs and
    for plain Qwen2 / Qwen3 ones (every layer full attention). `kv_bytes` is the KV dtype's size (2 = bf16):
        full attention  2 (K and V) * n_kv * head_dim * kv_bytes * context
        sliding window  2 * n_kv * head_dim * kv_bytes * min(context, window)
        JetBlock        H * dk * dv * 4 (fp32 state; 2 with recurrent_state_dtype "bfloat16")
                        +  H * dv * conv_size * kv_bytes (last raw conv inputs)
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_key_value_heads * head_dim * kv_bytes
    if config.model_type != "jet_nemotron":
        return config.num_hidden_layers * per_token * context
    total = 0
    for kind in config.layer_types:
        if kind == "full_attention":
            total += per_token * context
        elif kind == "sliding_attention":
            total += per_token * min(context, config.sliding_window)
        else:
            d = config.jet_dims()
            state_bytes = getattr(torch, getattr(config, "recurrent_state_dtype", "float32")).itemsize
            total += d.num_heads * d.head_k_dim * d.head_v_dim * state_bytes + d.value_dim * d.conv_size * kv_bytes
    return total


class JetNemotronCache(DynamicCache):
    """Dynamic hybrid cache for Jet-Nemotron (the default of `generate`)."""

    def __init__(self, config, **kwargs):
        super().__init__(config=config, **kwargs)
        self.layer_types = list(config.get_text_config(decoder=True).layer_types)

    def nbytes_per_layer_type(self) -> dict[str, int]:
        """Bytes held per layer kind and in total."""
        return cache_nbytes_per_layer_type(self, self.layer_types)


class JetNemotronStaticCache(StaticCache):
    """Preallocated hybrid cache for compiled / CUDA-graph decoding (`cache_implementation="static"`)."""

    def __init__(self, config, max_cache_len: int, **kwargs):
        super().__init__(config=config, max_cache_len=max_cache_len, **kwargs)
        self.layer_types = list(config.get_text_config(decoder=True).layer_types)

    def nbytes_per_layer_type(self) -> dict[str, int]:
        """Bytes held (preallocated) per layer kind and in total."""
        return cache_nbytes_per_layer_type(self, self.layer_types)
