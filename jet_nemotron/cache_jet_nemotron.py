"""The hybrid cache: growing KV only for full-attention layers, at most the window for sliding layers, and a
fixed-size state for JetBlocks (fp32 recurrent state [B, H, dk, dv] + the last conv_size raw values [B, H*dv, K]).

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
