"""The hybrid cache: growing KV only for full-attention layers, at most the window for sliding layers, and a
fixed-size state for JetBlocks (recurrent state [B, H, dk, dv], fp32 unless `recurrent_state_dtype` says bfloat16,
+ the last conv_size raw values [B, H*dv, K]).

It is transformers' own per-layer cache machinery (`DynamicCache` / `StaticCache` built from
`config.layer_types`), so `generate()`, beam-search reordering, masks and `torch.compile` work unchanged;
what we add is the accounting of bytes per layer kind.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, StaticCache, StaticSlidingWindowLayer


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


class _LayerKindIndex:
    """Mask sizes and sequence length asked of a JetBlock layer answered by a layer that has them.

    transformers 5.17 sizes the full-attention mask at `is_sliding.index(False)`, the first layer that is not
    sliding, which is a JetBlock when one comes first; it then falls back to the first attention layer of any kind
    (a sliding one, when a window comes before the first full-attention layer: the mask got the window's length,
    1,152 against 2,056 keys on the H200) or raises when that index is not 0. 5.24 skips linear layers itself. A
    JetBlock index here means the first full-attention layer (else the first sliding one), on every release."""

    def _set_layer_types(self, layer_types) -> None:
        self.layer_types = list(layer_types)
        # found once, not at every mask and every decode step
        self._jet_answered_by = next((self.layer_types.index(kind) for kind in ("full_attention", "sliding_attention")
                                      if kind in self.layer_types), None)

    def _attention_index(self, layer_idx: int) -> int:
        if (self._jet_answered_by is None or layer_idx >= len(self.layer_types)
                or self.layer_types[layer_idx] != "linear_attention"):
            return layer_idx  # JetBlocks only: transformers' own answer (an error naming the layer)
        return self._jet_answered_by

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return super().get_mask_sizes(query_length, self._attention_index(layer_idx))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(self._attention_index(layer_idx))


class JetNemotronCache(_LayerKindIndex, DynamicCache):
    """Dynamic hybrid cache for Jet-Nemotron (the default of `generate`)."""

    def __init__(self, config, **kwargs):
        self._set_layer_types(config.get_text_config(decoder=True).layer_types)
        super().__init__(config=config, **kwargs)

    def nbytes_per_layer_type(self) -> dict[str, int]:
        """Bytes held per layer kind and in total."""
        return cache_nbytes_per_layer_type(self, self.layer_types)


class StaticRingWindowLayer(StaticSlidingWindowLayer):
    """A sliding-window layer whose window is a ring: the token at position p sits in slot p % window.

    transformers' `StaticSlidingWindowLayer` keeps its window in position order, so once full every one-token step
    rolls the whole window by one and copies it back, for K and V: four window-sized moves each, where one slot
    changes. In Jet-Nemotron's decoding at 8K context and batch 2792 that was 10% of the step (H200 profile,
    `benchmarks/results/profiles/profile_jet_8192_generate_b2792.txt`). Here a one-token step writes one slot. The
    keys are stored after RoPE, so their order does not matter to attention, only the mask's columns must follow
    the slots (`ring_order_mask`). Multi-token updates past a full window (chat continuation, chunked prefill)
    return their keys in position order, as the parent does, and store the window back in ring order.
    `cumulative_length` (a tensor, for CUDA graphs) counts every token, as `cumulative_length_int` does.

    A compiled one-token step reads and writes the tensor count only. The parent reads the Python int there, which
    torch.compile turns into an integer input of the decode graph after the first recompile, and CUDA graphs record
    a new graph for every distinct integer input: one every token (`test_cache.py` checks the compiled step has
    none). The step only marks the int one token behind (a constant store, which dynamo replays after the graph);
    `count_compiled_step`, which our model's compiled call runs after each step, adds that token on the host. Read
    while still marked (a compile of the model by other means), the int is read back from the device: one sync."""

    _count, _one_token_behind = 0, False  # the host count, and whether a compiled step left it one token behind
    device_reads = 0  # times the host count had to be read back from the device (a sync each)

    @property
    def cumulative_length_int(self) -> int:
        if self._one_token_behind:
            self._count, self._one_token_behind = int(self.cumulative_length), False
            self.device_reads += 1
        return self._count

    @cumulative_length_int.setter
    def cumulative_length_int(self, value: int) -> None:
        self._count, self._one_token_behind = value, False

    def count_compiled_step(self) -> None:
        """The host count of a compiled one-token step that only marked it (no sync)."""
        if self._one_token_behind:
            self._count, self._one_token_behind = self._count + 1, False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states [B, H_kv, T, D]. Returns the keys and values to attend to."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        W, T = self.max_cache_len, key_states.shape[-2]
        if T == 1 and torch.compiler.is_compiling():
            self._one_token_behind = True  # counted on the device only (the class docstring says why)
        else:
            seen = self.cumulative_length_int
            self.cumulative_length_int += T
        if T == 1 or seen + T <= W:
            # one token: the slot the oldest token frees (or the next of an unfilled window); more tokens: slots
            # seen .. seen+T-1 of a window they do not overfill
            slots = (torch.arange(T, device=self.device) + self.cumulative_length) % W
            self.keys.index_copy_(2, slots, key_states)
            self.values.index_copy_(2, slots, value_states)
            self.cumulative_length.add_(T)
            return self.keys, self.values
        # in position order: the window so far (all of it once full, less its oldest token as the parent keeps
        # window - 1 + T keys for T queries), then the new tokens
        past_k, past_v = ((self.keys[:, :, :seen], self.values[:, :, :seen]) if seen < W else
                          (self.keys.roll(-(seen % W), dims=2)[:, :, 1:],
                           self.values.roll(-(seen % W), dims=2)[:, :, 1:]))
        full_k, full_v = torch.cat((past_k, key_states), dim=-2), torch.cat((past_v, value_states), dim=-2)
        shift = (seen + T) % W  # the last W tokens, position p into slot p % W
        self.keys.copy_(full_k[:, :, -W:].roll(shift, dims=2))
        self.values.copy_(full_v[:, :, -W:].roll(shift, dims=2))
        self.cumulative_length.add_(T)
        return full_k, full_v


def ring_order_mask(mask: torch.Tensor | None, cache, query_length: int) -> torch.Tensor | None:
    """The sliding layers' mask [B, 1, Q, W] (bool or additive), built by transformers over the window in position
    order, with its key columns permuted to `StaticRingWindowLayer`'s slots. Only a one-token step on a full window
    needs it: before the window fills, slots and positions coincide, and longer updates return keys in position
    order. The column of slot s is position p = s (mod W) of the window seen + 1 - W .. seen."""
    layer = next((layer for layer in getattr(cache, "layers", ()) if isinstance(layer, StaticRingWindowLayer)), None)
    if mask is None or layer is None or query_length != 1:
        return mask
    W = layer.max_cache_len
    compiling = torch.compiler.is_compiling()
    if not compiling and layer.cumulative_length_int < W:
        return mask
    slots = torch.arange(W, device=mask.device)
    seen = layer.cumulative_length.to(mask.device)
    cols = (slots - seen - 1) % W
    if compiling:  # the window's state from the device count: no Python int in the graph
        # (a one-token mask is W wide whether or not the window is full: transformers sizes it so)
        cols = torch.where(seen >= W, cols, slots)
    return mask[..., :W].index_select(-1, cols)


class JetNemotronStaticCache(_LayerKindIndex, StaticCache):
    """Preallocated hybrid cache for compiled / CUDA-graph decoding (`cache_implementation="static"`); sliding
    layers keep their window as a ring (`StaticRingWindowLayer`)."""

    def __init__(self, config, max_cache_len: int, **kwargs):
        text_config = config.get_text_config(decoder=True)
        self._set_layer_types(text_config.layer_types)
        super().__init__(config=config, max_cache_len=max_cache_len, **kwargs)
        for i, kind in enumerate(self.layer_types):
            if kind == "sliding_attention":
                self.layers[i] = StaticRingWindowLayer(max_cache_len=max_cache_len,
                                                       sliding_window=text_config.sliding_window)

    def nbytes_per_layer_type(self) -> dict[str, int]:
        """Bytes held (preallocated) per layer kind and in total."""
        return cache_nbytes_per_layer_type(self, self.layer_types)

    def count_compiled_step(self) -> None:
        """After a compiled one-token step: every sliding layer's host count, without a sync
        (`StaticRingWindowLayer.count_compiled_step`)."""
        for layer in self.layers:
            if isinstance(layer, StaticRingWindowLayer):
                layer.count_compiled_step()
