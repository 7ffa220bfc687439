"""Jet-Nemotron for transformers 5.x: Qwen2 attention in a few layers, JetBlocks everywhere else.

Layers follow `config.layer_types`: "full_attention" and "sliding_attention" are Qwen2 attention (optionally
with Qwen3's q/k norms), "linear_attention" is a JetBlock (`jet_block.py`). MLPs, norms and embeddings are
Qwen2's. Parameter names are the official release's, so its checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, StaticCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import (
    create_causal_mask,
    create_recurrent_attention_mask,
    create_sliding_window_causal_mask,
    find_packed_sequence_indices,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.generic import maybe_autocast

from .cache_jet_nemotron import JetNemotronCache, JetNemotronStaticCache, ring_order_mask
from .configuration_jet_nemotron import JetNemotronConfig
from .fused_projections import fuse_linears, one_product, project
from .input_checks import check_forward_inputs
from .jet_block import DynamicConvKernelGenerator, JetBlock, decay_init
from .ops import rmsnorm, swiglu, swiglu_packed
from .rmsnorm_ref import rmsnorm_ref
from .transformers_compat import CACHE_NAME, MASK_CACHE_NAME, pick_cache


def packed_cu_seqlens(position_ids: torch.Tensor) -> torch.LongTensor | None:
    """Offsets [N + 1] of the documents in the flattened [B * T] token axis when `position_ids` [B, T] restart
    inside a row (packed training data), else None. Documents are the ones transformers' packed attention masks
    find (`find_packed_sequence_indices`), so JetBlocks and attention agree on every boundary."""
    doc = find_packed_sequence_indices(position_ids)  # [B, T] document index per token, or None
    if doc is None:
        return None
    B, T = doc.shape
    starts = torch.ones_like(doc, dtype=torch.bool)  # every row starts a document
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    idx = starts.flatten().nonzero().flatten()
    return torch.cat([idx, idx.new_tensor([B * T])])


def training_kernels() -> bool:
    """Whether a norm or an MLP takes its training kernel (`ops.rmsnorm`, `ops.swiglu`): while gradients are
    recorded, and not under torch.compile, whose Inductor fuses the eager code itself. Inference keeps the eager
    code, the official model's arithmetic."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


class JetNemotronRMSNorm(nn.Module):
    """Qwen2's RMSNorm: the norm in fp32, rounded to the input's dtype, times the weight; the output in the promotion
    of the two dtypes. With `weight_in_input_dtype` (set by distillation's `residual_bf16` while a stage trains) the
    weight is cast to the input's dtype first, so a bf16 residual stream gives bf16 outputs, as the same model held
    in bf16 computes, instead of fp32 ones that every product after it casts back."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, config: JetNemotronConfig | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.config = config  # its kernel_backend, read at each call as the JetBlock and the MLP read it
        self.weight_in_input_dtype = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.weight_in_input_dtype:
            weight = weight.to(hidden_states.dtype)
        if training_kernels():  # one kernel each way on CUDA instead of PyTorch's fp32 chain, the same rounding
            backend = self.config.kernel_backend if self.config is not None else "auto"
            return rmsnorm(hidden_states, weight, self.variance_epsilon, backend=backend)
        return rmsnorm_ref(hidden_states, weight, self.variance_epsilon)


class JetNemotronRotaryEmbedding(nn.Module):
    """RoPE cos/sin for the attention layers; any rope type transformers knows."""

    def __init__(self, config: JetNemotronConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        init_fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config, None)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: JetNemotronConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base, dim = config.rope_parameters["rope_theta"], config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq.to(device), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with maybe_autocast(device_type=device_type, enabled=False):  # positions need fp32
            freqs = (inv_freq @ position_ids[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """q [B, Hq, T, D], k [B, Hkv, T, D], cos/sin [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv * n_rep, T, D]."""
    if n_rep == 1:
        return x
    B, H, T, D = x.shape
    return x[:, :, None].expand(B, H, n_rep, T, D).reshape(B, H * n_rep, T, D)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention; the fallback of transformers' attention interface."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = (query @ key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = (probs @ value).transpose(1, 2).contiguous()
    return out, probs


def grouped_decode_attention(module, query, key, value, attention_mask, scaling, **kwargs):
    """One query token per sequence against a cache, keys and values read once and never copied per query head
    (transformers' sdpa path repeats them: with a mask it cannot use GQA natively, which costs memory and bandwidth
    proportional to the whole cache).
    query [B, Hq, 1, D], key/value [B, Hkv, L, D], mask [B, 1, 1, L] (bool: True = attend, or additive 0 / -inf).
    Returns [B, 1, Hq, D].

    CUDA: sdpa with `enable_gqa`, the fastest of four one-token attentions measured on an H200 (2B shapes, bf16,
    `decode_attention` rows of benchmarks/results/kernels.json): at batch 256 x 64K it read the cache in 3.9 ms
    against 4.6 ms for the compiled grouped product below and 6.1 ms for a split-KV Triton kernel of ours (removed
    since; it lives in git history). Elsewhere: a grouped product in the cache's dtype (CPU sdpa would repeat K/V)."""
    L = key.shape[2]
    mask = None
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :L]
        if mask.dtype != torch.bool:  # transformers' additive masks hold 0 (attend) and the dtype's min or -inf
            mask = mask > torch.finfo(mask.dtype).min / 2
    if query.is_cuda:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2), None
    return grouped_product_attention(query, key, value, mask, scaling), None


def grouped_product_attention(query, key, value, mask, scaling: float) -> torch.Tensor:
    """The query heads of each KV head batched into one product with its keys: query [B, Hq, 1, D], key/value
    [B, Hkv, L, D], mask [B, 1, 1, L] bool or None; scores and softmax in fp32, probabilities in the value dtype.
    Returns [B, 1, Hq, D]."""
    B, Hq, _, D = query.shape
    Hkv = key.shape[1]
    q = query.view(B, Hkv, Hq // Hkv, D)
    scores = (q @ key.transpose(-1, -2)).float() * scaling  # [B, Hkv, r, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1).to(value.dtype)
    return (probs @ value).reshape(B, Hq, 1, D).transpose(1, 2)


def banded_sliding_attention(query, key, value, window: int, scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention inside a window over a whole sequence (no cached prefix, no padding), without a [T, T] mask.

    Queries go in blocks of `window`; block i sees its own keys and block i-1's, through one [W, 2W] band mask
    shared by all blocks: O(T * 2W) work instead of sdpa's O(T^2) with the dense mask that transformers builds for
    sliding layers (4 GiB of mask at 64K tokens). Query p sees keys p-W+1 .. p, as `create_sliding_window_causal_mask`.
    query [B, Hq, T, D], key/value [B, Hkv, T, D] -> [B, T, Hq, D]."""
    B, Hq, T, D = query.shape
    Hkv = key.shape[1]
    W, rep = window, Hq // Hkv
    nb = -(-T // W)
    pad = (0, 0, 0, nb * W - T)
    qb = F.pad(query, pad).view(B, Hq, nb, W, D)
    # K/V are padded and paired at the KV-head count and repeated per query head once, at the end
    kb, vb = (F.pad(t, pad).view(B, Hkv, nb, W, D) for t in (key, value))
    first = F.scaled_dot_product_attention(qb[:, :, 0], kb[:, :, 0].repeat_interleave(rep, 1),
                                           vb[:, :, 0].repeat_interleave(rep, 1), dropout_p=dropout,
                                           is_causal=True, scale=scaling)  # block 0: causal within itself
    if nb == 1:
        return first[:, :, :T].transpose(1, 2)
    o_r = torch.arange(W, device=query.device)
    o_c = torch.arange(2 * W, device=query.device)
    band = (o_c[None, :] > o_r[:, None]) & (o_c[None, :] <= o_r[:, None] + W)  # key (i-1)W+c for query iW+r
    blocks = lambda t: t.transpose(1, 2).reshape(B * (nb - 1), t.shape[1], t.shape[-2], D)  # noqa: E731
    k2 = blocks(torch.cat([kb[:, :, :-1], kb[:, :, 1:]], dim=3)).repeat_interleave(rep, 1)
    v2 = blocks(torch.cat([vb[:, :, :-1], vb[:, :, 1:]], dim=3)).repeat_interleave(rep, 1)
    rest = F.scaled_dot_product_attention(blocks(qb[:, :, 1:]), k2, v2, attn_mask=band, dropout_p=dropout,
                                          scale=scaling)
    rest = rest.view(B, nb - 1, Hq, W, D).transpose(1, 2)
    out = torch.cat([first[:, :, None], rest], dim=2).reshape(B, Hq, nb * W, D)[:, :, :T]
    return out.transpose(1, 2)


class JetNemotronAttention(nn.Module):
    """Qwen2 attention (RoPE, GQA, q/k/v bias) for "full_attention" and "sliding_attention" layers;
    Qwen3's per-head q/k RMSNorm when `config.qk_norm`."""

    def __init__(self, config: JetNemotronConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, hidden, bias=False)
        if config.qk_norm:
            self.q_norm = JetNemotronRMSNorm(self.head_dim, config.rms_norm_eps, config)
            self.k_norm = JetNemotronRMSNorm(self.head_dim, config.rms_norm_eps, config)
        is_sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if is_sliding else None
        self.fused_sizes: list[int] | None = None
        self.project_as_one = False  # training: see `fused_projections.set_projections_as_one`

    def same_input_linears(self) -> list[nn.Linear]:
        return [self.q_proj, self.k_proj, self.v_proj]

    def fuse_projections(self) -> None:
        """Read q/k/v as one matrix (inference; see `fused_projections.py`)."""
        self.fused_sizes = fuse_linears(self, "qkv_fused", self.same_input_linears())

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, -1, self.head_dim)
        q, k, v = project(self, "qkv_fused", hidden_states)
        q, k = q.view(shape), k.view(shape)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                    eager_attention_forward)
        if q.shape[2] == 1 and cache is not None and self.config._attn_implementation == "sdpa":
            attention = grouped_decode_attention
        if self.sliding_window and attention_mask is None and k.shape[2] == q.shape[2] > self.sliding_window:
            # the model left this sliding layer's mask out on purpose (JetNemotronModel._bands_sliding_layers)
            out = banded_sliding_attention(q, k, v, self.sliding_window, self.scaling,
                                           self.attention_dropout if self.training else 0.0)
            return self.o_proj(out.reshape(*input_shape, -1).contiguous()), None
        out, weights = attention(self, q, k, v, attention_mask,
                                 dropout=0.0 if not self.training else self.attention_dropout,
                                 scaling=self.scaling, sliding_window=self.sliding_window, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class JetNemotronMLP(nn.Module):
    def __init__(self, config: JetNemotronConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.config = config
        self.silu_gated = config.hidden_act == "silu"
        self.fused_sizes: list[int] | None = None
        self.project_as_one = False  # training: see `fused_projections.set_projections_as_one`

    def same_input_linears(self) -> list[nn.Linear]:
        return [self.gate_proj, self.up_proj]

    def fuse_projections(self) -> None:
        """Read gate/up as one matrix (inference; see `fused_projections.py`)."""
        self.fused_sizes = fuse_linears(self, "gate_up_fused", self.same_input_linears())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.silu_gated and training_kernels():  # one kernel each way on CUDA, not five; silu(gate) not kept
            gate_up = one_product(self, "gate_up_fused", x)
            if gate_up is not None:  # its gradient written whole, not concatenated by the split's backward
                return self.down_proj(swiglu_packed(gate_up, backend=self.config.kernel_backend))
            # neither fused nor as one (e.g. adapter-wrapped projections): each its own product
            return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), backend=self.config.kernel_backend))
        gate, up = project(self, "gate_up_fused", x)
        return self.down_proj(self.act_fn(gate) * up)


class JetNemotronDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block; the token mixer (`self_attn`) is attention or a JetBlock per the layer map."""

    def __init__(self, config: JetNemotronConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        mixer = JetBlock if self.layer_type == "linear_attention" else JetNemotronAttention
        self.self_attn = mixer(config, layer_idx)
        self.mlp = JetNemotronMLP(config)
        self.input_layernorm = JetNemotronRMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.post_attention_layernorm = JetNemotronRMSNorm(config.hidden_size, config.rms_norm_eps, config)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, cache=None, past_key_values=None,
                cu_seqlens=None, **kwargs):
        # the model passes the cache under this transformers' name (CACHE_NAME), which gradient checkpointing clears
        cache = pick_cache(cache, past_key_values)
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        if self.layer_type == "linear_attention":
            hidden_states, _ = self.self_attn(hidden_states, attention_mask=attention_mask, cache=cache,
                                              cu_seqlens=cu_seqlens)
        else:
            hidden_states, _ = self.self_attn(hidden_states, position_embeddings=position_embeddings,
                                              attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class JetNemotronPreTrainedModel(PreTrainedModel):
    config_class = JetNemotronConfig
    config: JetNemotronConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["JetNemotronDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = False
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _keep_in_fp32_modules_strict = ["A_log", "dt_bias"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, JetBlock):
            A_log, dt_bias = decay_init(module.dims.num_heads, module.A_log.device)
            init.copy_(module.A_log, A_log)
            init.copy_(module.dt_bias, dt_bias)
        elif isinstance(module, DynamicConvKernelGenerator):
            # start near a static identity convolution (weight 1 on the current token) with a small dynamic part,
            # so the generator gets gradients from the first step
            bias = torch.zeros(module.channels, module.kernel_size, device=module.w2.bias.device)
            bias[:, -1] = 1.0
            init.copy_(module.w2.bias, bias.flatten())

    @classmethod
    def from_pretrained(cls, *args, allow_missing_weights: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that lacks a tensor the model needs, or holds one of
        the wrong shape, is an error naming the tensors (transformers would initialise them at random), unless
        `allow_missing_weights=True` / `ignore_mismatched_sizes=True`."""
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        where = args[0] if args else kwargs.get("pretrained_model_name_or_path", "")
        mismatched = sorted(info.get("mismatched_keys", []) or [])
        if mismatched and not allow_mismatch:
            shown = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:5])
            raise ValueError(f"checkpoint {where} has {len(mismatched)} tensor(s) of the wrong shape: {shown}")
        missing = sorted(info.get("missing_keys", []) or [])
        if missing and not allow_missing_weights:
            raise ValueError(f"checkpoint {where} lacks {len(missing)} tensor(s) the model needs, "
                             f"e.g. {missing[:5]}; pass allow_missing_weights=True to initialise them at random")
        return (model, info) if want_info else model


class JetNemotronModel(JetNemotronPreTrainedModel):
    def __init__(self, config: JetNemotronConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(JetNemotronDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = JetNemotronRMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.rotary_emb = JetNemotronRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """input_ids [B, T]; attention_mask [B, past + T] (1 = token, 0 = left padding). The cache comes as
        `cache` (transformers >= 5.24) or `past_key_values` (earlier releases); either name works on every release."""
        past_key_values = pick_cache(cache, past_key_values)
        check_forward_inputs(self.config, input_ids, inputs_embeds, attention_mask, position_ids)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        T = inputs_embeds.shape[1]
        positions_given = position_ids is not None
        if use_cache and past_key_values is None:
            past_key_values = JetNemotronCache(self.config)
        if position_ids is None:
            if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
                # left padding: positions count real tokens only, as `generate` does
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                past = past_key_values.get_seq_length() if past_key_values is not None else 0
                position_ids = torch.arange(past, past + T, device=inputs_embeds.device)[None]

        if isinstance(attention_mask, dict):  # already built per layer kind, e.g. by `generate` with a static cache
            masks = {"linear_attention": None, **attention_mask}
        else:
            mask_kwargs = {"config": self.config, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                           MASK_CACHE_NAME: past_key_values, "position_ids": position_ids}
            masks = {"linear_attention": create_recurrent_attention_mask(**mask_kwargs)}
            if "full_attention" in self.config.layer_types:
                masks["full_attention"] = create_causal_mask(**mask_kwargs)
            if "sliding_attention" in self.config.layer_types:
                banded = self._bands_sliding_layers(attention_mask, past_key_values, positions_given, T)
                masks["sliding_attention"] = None if banded else create_sliding_window_causal_mask(**mask_kwargs)
        if masks.get("sliding_attention") is not None:
            masks["sliding_attention"] = ring_order_mask(masks["sliding_attention"], past_key_values, T)
        # packed documents (positions restart, no mask, no cache): transformers' masks keep attention inside each
        # document, and the JetBlocks must restart their state and convolution at the same boundaries
        cu_seqlens = None
        if positions_given and attention_mask is None and past_key_values is None:
            cu_seqlens = packed_cu_seqlens(position_ids.expand(inputs_embeds.shape[0], -1))

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=masks[layer.layer_type],
                                  position_embeddings=position_embeddings, position_ids=position_ids,
                                  cu_seqlens=cu_seqlens, **{CACHE_NAME: past_key_values}, **kwargs)
            if output_hidden_states:
                all_hidden.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden[-1] = hidden_states
        return BaseModelOutputWithPast(last_hidden_state=hidden_states,
                                       hidden_states=tuple(all_hidden) if output_hidden_states else None,
                                       **{CACHE_NAME: past_key_values if use_cache else None})

    def _bands_sliding_layers(self, attention_mask, past_key_values, positions_given: bool, T: int) -> bool:
        """Whether sliding layers can skip their dense [T, T] mask and band the window themselves
        (`banded_sliding_attention`): sdpa, a whole sequence longer than two windows with nothing cached before it,
        and no padding or packed documents that the dense mask would have to express."""
        W = self.config.sliding_window
        if self.config._attn_implementation != "sdpa" or not W or T <= 2 * W or torch.compiler.is_compiling():
            return False
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            return False
        if attention_mask is None:
            return not positions_given  # given positions may mark packed documents
        return attention_mask.ndim == 2 and attention_mask.shape[-1] == T and bool(attention_mask.all())


class JetNemotronForCausalLM(JetNemotronPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: JetNemotronConfig):
        super().__init__(config)
        self.model = JetNemotronModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.FloatTensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_hidden_states: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, return_dict: bool | None = None,
                past_key_values: Cache | None = None, **kwargs) -> CausalLMOutputWithPast:
        """labels [B, T] (-100 = ignore) give the shifted next-token loss; logits [B, T', vocab]. The cache comes
        as `cache` or `past_key_values` and is returned under this transformers' name (`.cache` from 5.24 on)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=pick_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_hidden_states=output_hidden_states, **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        **{CACHE_NAME: getattr(out, CACHE_NAME)})
        return result if return_dict is not False else result.to_tuple()

    def fuse_projections(self) -> "JetNemotronForCausalLM":
        """Fuse the projections that read the same input (JetBlock inputs, attention q/k/v, MLP gate/up) into one
        matrix product each, for decoding: same results, about half the kernel launches, no extra memory. Call it
        after moving the model to its device and dtype; a fused model is for inference and cannot be saved."""
        for module in self.modules():
            if module is not self and hasattr(module, "fuse_projections") and getattr(module, "fused_sizes", 0) is None:
                module.fuse_projections()
        self._projections_fused = True
        return self

    def save_pretrained(self, *args, **kwargs):
        if getattr(self, "_projections_fused", False):
            raise RuntimeError("this model's projections were fused for inference (fuse_projections); its weights "
                               "share memory and cannot be saved: reload the checkpoint to save it")
        return super().save_pretrained(*args, **kwargs)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length):
        """Use our hybrid cache (with its byte accounting) where transformers would make a DynamicCache."""
        if (model_kwargs.get(CACHE_NAME) is None and generation_config.use_cache is not False
                and generation_config.cache_implementation in (None, "dynamic")):
            model_kwargs[CACHE_NAME] = JetNemotronCache(self.config)
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size,
                                                     max_cache_length)

    def get_compiled_call(self, compile_config):
        """transformers' compiled forward (generate's decode step), followed by the host count of our static cache's
        sliding windows, which a compiled step leaves on the device (`StaticRingWindowLayer`): no sync a token."""
        compiled = super().get_compiled_call(compile_config)

        def call(*args, **kwargs):
            out = compiled(*args, **kwargs)
            cache = pick_cache(kwargs.get("cache"), kwargs.get("past_key_values"))
            if isinstance(cache, JetNemotronStaticCache):
                cache.count_compiled_step()
            return out

        return call

    def _prepare_static_cache(self, cache_implementation, batch_size, max_cache_len, prefill_chunk_size,
                              model_kwargs):
        """`cache_implementation="static"` gets our static cache (same layers, plus the byte accounting)."""
        cache = super()._prepare_static_cache(cache_implementation, batch_size, max_cache_len, prefill_chunk_size,
                                              model_kwargs)
        if type(cache) is StaticCache and not cache.is_initialized and not cache.offloading:
            # nothing is allocated yet (layers initialise lazily), so swapping costs nothing
            cache = JetNemotronStaticCache(self.config, max_cache_len=self._previous_max_cache_length)
        return cache


__all__ = ["JetNemotronPreTrainedModel", "JetNemotronModel", "JetNemotronForCausalLM"]
