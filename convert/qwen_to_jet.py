"""Qwen2 / Qwen2.5 / Qwen3 checkpoint -> Jet-Nemotron: a name map, a few named transforms, the JetBlock init.

What is copied unchanged (the name map, `COPIED` / `COPIED_PER_LAYER` / `attention_names`):
    embeddings, final norm, untied lm_head, every layer's two RMSNorms and MLP, and for "attn" / "swa" layers
    the attention projections with their biases (Qwen2) and Qwen3's per-head `q_norm` / `k_norm` (our config
    has `qk_norm`, so the attention layers of a converted Qwen3 compute exactly what they did).

How a JetBlock starts (`init_jet_block`, scheme "attention"; shapes [out, in]):
    head map      JetBlock head h reads attention head a(h) = h * n_q // H and its GQA kv head a(h) // (n_q / n_kv).
    q_proj, k_proj  rows of W_q / W_k of those heads. When dk < head_dim we keep the dk dimensions whose RoPE
                  frequency is lowest (pairs i, i + head_dim/2 with i near head_dim/2): those barely rotate, so
                  they are the part of q.k that matches content rather than position, which is all a JetBlock
                  (no RoPE) can use. When dk > head_dim the extra rows are N(0, initializer_range).
                  Qwen3's q_norm / k_norm weights are folded into these rows (the JetBlock L2-normalises q and
                  k per head itself, so only the per-dimension scale carries over). Attention biases are dropped:
                  a JetBlock has none, and a constant added to k does not survive silu + L2 norm anyway.
    v_proj        rows of W_v of the kv head into the first min(dv, head_dim) value channels; extra channels
                  N(0, initializer_range).
    o_proj        the matching columns of W_o; columns of extra value channels are zero (so they add nothing
                  until trained, but still receive gradient because their v rows are not zero).
    g_proj        zero, so the output gate silu(g_proj x) is 0 and a fresh JetBlock adds exactly nothing to the
                  residual stream: the converted model starts as the source model with those attention layers
                  removed, never worse than that by random noise. g_proj's gradient is not zero (silu'(0) = 1/2),
                  so the gate opens on the first step and the copied q/k/v/o start learning right after.
    a_proj, b_proj zero: beta = sigmoid(0) = 1/2 and an input-independent decay to start from.
    A_log, dt_bias  A = 1 and softplus(dt_bias) = ln 2 / half_life with half-lives spread geometrically from
                  2 to 512 tokens over the heads (a multi-scale start, as RetNet's fixed decays), fp32.
    dynamic conv  w1 ~ N(0, initializer_range), w2.weight = 0, w2.bias = `conv_tap` at the current token
                  (j = K-1) and 0 elsewhere: a static near-identity kernel, v_t -> silu(conv_tap * v_t). w2
                  starts at zero but w1 does not, so the generator learns (zeroing both, as the official
                  constructor does, would leave the generator with no gradient forever).
    o_norm        ones.
Scheme "random" is the official model's effective start (every Linear and the conv bias N(0, initializer_range),
Mamba-style A_log / dt_bias, o_norm ones) and is kept as the baseline the attention scheme is measured against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from jet_nemotron.configuration_jet_nemotron import DEFAULT_JET_CONFIG
from jet_nemotron.jet_block import decay_init

from .layer_map import LayerMap
from .source_check import layer_hint

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3")

# Tensors copied under the same name.
COPIED = ("model.embed_tokens.weight", "model.norm.weight")
COPIED_PER_LAYER = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


# JetBlock sizes a caller may override, with the `convert` flag that sets each
JET_FLAGS = {"num_heads": "--jet-heads", "head_dim": "--jet-head-dim", "expand_v": "--expand-v",
             "conv_size": "--conv-size", "dconv_generator_reduction": "--generator-reduction"}


@dataclass(frozen=True)
class SourceDims:
    """Attention sizes of the source model."""

    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    num_layers: int
    attention_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    initializer_range: float

    @classmethod
    def from_config(cls, cfg) -> "SourceDims":
        model_type = getattr(cfg, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            arch = getattr(cfg, "architectures", None)
            raise ValueError(f"unsupported source architecture: model_type {model_type!r} ({arch}); the converter "
                             f"handles {list(SUPPORTED_MODEL_TYPES)} (Qwen2, Qwen2.5, Qwen3 dense)")
        _check_positive(cfg, ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
                              "num_hidden_layers"))
        kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        if not isinstance(kv, int) or kv < 1 or cfg.num_attention_heads % kv:
            raise ValueError(f"source config: num_key_value_heads = {kv!r} must be a positive divisor of "
                             f"num_attention_heads = {cfg.num_attention_heads}")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if head_dim < 1:
            raise ValueError(f"source config: head_dim = {head_dim!r} must be >= 1")
        bias = True if model_type == "qwen2" else bool(getattr(cfg, "attention_bias", False))
        if model_type == "qwen3" and bias:
            raise ValueError("Qwen3 with attention_bias=True has an o_proj bias, which Jet-Nemotron's attention "
                             "layers do not have; not supported")
        return cls(cfg.hidden_size, cfg.num_attention_heads, kv, head_dim, cfg.intermediate_size, cfg.vocab_size,
                   cfg.num_hidden_layers, bias, model_type == "qwen3", bool(getattr(cfg, "tie_word_embeddings", False)),
                   float(getattr(cfg, "initializer_range", 0.02)))


def _check_positive(cfg, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = getattr(cfg, f, None)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"source config: {f} = {v!r} must be a positive integer")


def attention_names(src: SourceDims) -> dict[str, tuple[int, ...]]:
    """Attention tensors (relative to `self_attn.`) of one source layer with their shapes."""
    q, kv = src.num_heads * src.head_dim, src.num_kv_heads * src.head_dim
    out = {"q_proj.weight": (q, src.hidden), "k_proj.weight": (kv, src.hidden), "v_proj.weight": (kv, src.hidden),
           "o_proj.weight": (src.hidden, q)}
    if src.attention_bias:
        out.update({"q_proj.bias": (q,), "k_proj.bias": (kv,), "v_proj.bias": (kv,)})
    if src.qk_norm:
        out.update({"q_norm.weight": (src.head_dim,), "k_norm.weight": (src.head_dim,)})
    return out


def source_shapes(src: SourceDims) -> dict[str, tuple[int, ...]]:
    """Every tensor the converter reads from the source checkpoint, with its expected shape."""
    shapes = {"model.embed_tokens.weight": (src.vocab, src.hidden), "model.norm.weight": (src.hidden,)}
    if not src.tie_word_embeddings:
        shapes["lm_head.weight"] = (src.vocab, src.hidden)
    per_layer = {"input_layernorm.weight": (src.hidden,), "post_attention_layernorm.weight": (src.hidden,),
                 "mlp.gate_proj.weight": (src.intermediate, src.hidden),
                 "mlp.up_proj.weight": (src.intermediate, src.hidden),
                 "mlp.down_proj.weight": (src.hidden, src.intermediate)}
    per_layer.update({f"self_attn.{k}": v for k, v in attention_names(src).items()})
    for i in range(src.num_layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def check_source_state_dict(sd: dict[str, torch.Tensor], src: SourceDims, where: str = "source checkpoint") -> None:
    """Raise naming the first missing or misshaped tensor (and its layer) before anything is written."""
    for name, shape in source_shapes(src).items():
        if name not in sd:
            raise KeyError(f"{where} is missing tensor {name}" + layer_hint(name))
        if tuple(sd[name].shape) != shape:
            raise ValueError(f"{where}: tensor {name} has shape {tuple(sd[name].shape)}, expected {shape}"
                             + layer_hint(name))


def build_jet_config(src_cfg, layer_map: LayerMap, jet: dict | None = None, window: int | None = None):
    """The JetNemotronConfig of the converted model: Qwen's fields, the map, JetBlock sizes, sliding window.

    JetBlock sizes: `jet` (flags) over the layer map's own sizes over sizes derived from the source (as many
    heads as attention heads, head_dim dk = head_dim, dv = 2 * head_dim, the rest as Jet-Nemotron-2B).
    """
    from jet_nemotron import JetNemotronConfig

    src = SourceDims.from_config(src_cfg)
    layer_map.check_layer_count(src.num_layers, f"the source model ({src_cfg.model_type})")
    jet_cfg = {**DEFAULT_JET_CONFIG, "num_heads": src.num_heads, "head_dim": src.head_dim, "expand_v": 2.0}
    jet_cfg.update(layer_map.jet)
    given = {k: v for k, v in (jet or {}).items() if v is not None}
    for k, v in given.items():
        if k not in JET_FLAGS:
            raise ValueError(f"unknown JetBlock size {k!r}; allowed: {sorted(JET_FLAGS)}")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"JetBlock {k} ({JET_FLAGS[k]}) must be a positive number, got {v!r}")
    jet_cfg.update(given)
    eac = {"jet": jet_cfg}
    if window is not None and window < 1:
        raise ValueError(f"--window must be >= 1 (tokens), got {window}")
    if window is not None and "swa" not in layer_map.layer_types:
        raise ValueError(f"--window {window} was given but layer map {layer_map.source} has no sliding-window "
                         "('swa') layer; drop --window or add swa layers")
    if "swa" in layer_map.layer_types:
        w = window if window is not None else layer_map.swa.get("window_size")
        if w is None:
            raise ValueError(f"layer map {layer_map.source} has sliding-window layers {layer_map.indices('swa')} "
                             "but no window size; give --window or 'swa': {'window_size': W} in the map")
        eac["swa"] = {"window_size": int(w)}
    rope = getattr(src_cfg, "rope_parameters", None)
    return JetNemotronConfig(
        vocab_size=src.vocab, hidden_size=src.hidden, intermediate_size=src.intermediate,
        num_hidden_layers=src.num_layers, num_attention_heads=src.num_heads, num_key_value_heads=src.num_kv_heads,
        head_dim=src.head_dim, hidden_act=src_cfg.hidden_act, max_position_embeddings=src_cfg.max_position_embeddings,
        initializer_range=src.initializer_range, rms_norm_eps=src_cfg.rms_norm_eps,
        tie_word_embeddings=src.tie_word_embeddings, rope_parameters=dict(rope) if rope else None,
        attention_bias=src.attention_bias, qk_norm=src.qk_norm, layer_types=list(layer_map.layer_types),
        efficient_attention_config=eac, bos_token_id=src_cfg.bos_token_id, eos_token_id=src_cfg.eos_token_id,
        pad_token_id=getattr(src_cfg, "pad_token_id", None),
    )


# ---------------------------------------------------------------------------------------------------- transforms

def rope_low_frequency_dims(head_dim: int, n: int) -> torch.Tensor:
    """Indices of the min(n, head_dim) dims of a rotate-half RoPE head that rotate slowest, sorted.

    Dims i and i + head_dim/2 share frequency theta^(-2i/head_dim), so the slowest are the largest i.
    """
    half = head_dim // 2
    order = []
    for i in reversed(range(half)):
        order += [i, i + half]
    return torch.tensor(sorted(order[: min(n, head_dim)]), dtype=torch.long)


def _new(shape, like: torch.Tensor, gen: torch.Generator | None, std: float = 0.0) -> torch.Tensor:
    """A fresh tensor: N(0, std) (zeros when std == 0), on `like`'s device and dtype; no data on meta."""
    if like.is_meta:
        return torch.empty(shape, device="meta", dtype=like.dtype)
    if std == 0.0:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return (torch.randn(shape, generator=gen) * std).to(like.dtype).to(like.device)


def _head_rows(w: torch.Tensor, head: int, head_dim: int, dims: torch.Tensor, out_dim: int, gen, std) -> torch.Tensor:
    """Rows `dims` of head `head` of a [heads*head_dim, hidden] projection, padded to out_dim rows with noise."""
    rows = w[head * head_dim : (head + 1) * head_dim][dims.to(w.device)] if not w.is_meta else \
        torch.empty(len(dims), w.shape[1], device="meta", dtype=w.dtype)
    if len(dims) < out_dim:
        rows = torch.cat([rows, _new((out_dim - len(dims), w.shape[1]), w, gen, std)])
    return rows


def half_life_decay_init(num_heads: int, like: torch.Tensor, lo: float = 2.0, hi: float = 512.0):
    """A_log = 0 and dt_bias with exp(g) = 2^(-1/half_life), half-lives geometric in [lo, hi]. fp32 [H]."""
    if like.is_meta:
        return (torch.empty(num_heads, device="meta"),) * 2
    hl = torch.logspace(math.log10(lo), math.log10(hi), num_heads) if num_heads > 1 else torch.tensor([lo])
    dt = math.log(2.0) / hl  # softplus(dt_bias) * exp(A_log) = -log(decay)
    return torch.zeros(num_heads), dt + torch.log(-torch.expm1(-dt))


def init_jet_block(attn: dict[str, torch.Tensor], src: SourceDims, dims, scheme: str = "attention",
                   gen: torch.Generator | None = None, conv_tap: float = 1.0) -> dict[str, torch.Tensor]:
    """All JetBlock tensors (names relative to `self_attn.`) for one layer.

    attn: the source layer's attention tensors (`attention_names`); dims: `JetBlockDims` (H, dk, dv, K, gen
    hidden). Shapes: q/k [H*dk, hidden], v/g [H*dv, hidden], o [hidden, H*dv], a/b [H, hidden], A_log/dt_bias
    [H] fp32, w1 [gen_hidden, hidden], w2 [H*dv*K, gen_hidden], w2.bias [H*dv*K], o_norm [dv].
    """
    H, dk, dv, K = dims.num_heads, dims.head_k_dim, dims.head_v_dim, dims.conv_size
    wq = attn["q_proj.weight"]
    hidden, std = src.hidden, src.initializer_range
    if scheme == "random":
        out = {n: _new(s, wq, gen, std) for n, s in (
            ("q_proj.weight", (H * dk, hidden)), ("k_proj.weight", (H * dk, hidden)),
            ("v_proj.weight", (H * dv, hidden)), ("g_proj.weight", (H * dv, hidden)),
            ("o_proj.weight", (hidden, H * dv)), ("a_proj.weight", (H, hidden)), ("b_proj.weight", (H, hidden)),
            ("dynamic_conv1d.kernel_generator.w1.weight", (dims.generator_hidden, hidden)),
            ("dynamic_conv1d.kernel_generator.w2.weight", (H * dv * K, dims.generator_hidden)),
            ("dynamic_conv1d.kernel_generator.w2.bias", (H * dv * K,)))}
        meta = (torch.empty(H, device="meta"),) * 2
        out["A_log"], out["dt_bias"] = meta if wq.is_meta else decay_init(H, generator=gen)  # the official start
        out["o_norm.weight"] = _ones(dv, wq)
        return out
    if scheme != "attention":
        raise ValueError(f"unknown JetBlock init scheme {scheme!r}; allowed: 'attention', 'random'")

    group = src.num_heads // src.num_kv_heads
    qk_dims = rope_low_frequency_dims(src.head_dim, dk)
    v_dims = torch.arange(min(dv, src.head_dim))
    wq, wk, wv, wo = (attn[f"{p}_proj.weight"] for p in "qkvo")
    if src.qk_norm and not wq.is_meta:  # fold Qwen3's per-dim q/k norm scale into the rows (see docstring)
        wq = wq * attn["q_norm.weight"].repeat(src.num_heads)[:, None]
        wk = wk * attn["k_norm.weight"].repeat(src.num_kv_heads)[:, None]
    q, k, v, o = [], [], [], []
    for h in range(H):
        a = h * src.num_heads // H
        q.append(_head_rows(wq, a, src.head_dim, qk_dims, dk, gen, std))
        k.append(_head_rows(wk, a // group, src.head_dim, qk_dims, dk, gen, std))
        v.append(_head_rows(wv, a // group, src.head_dim, v_dims, dv, gen, std))
        cols = _head_rows(wo.t(), a, src.head_dim, v_dims, len(v_dims), gen, 0.0).t()  # [hidden, min(dv, hd)]
        o.append(torch.cat([cols, _new((hidden, dv - len(v_dims)), wo, gen)], dim=1) if dv > len(v_dims) else cols)
    bias = _new((H * dv * K,), wq, gen)
    if not bias.is_meta:
        bias.view(H * dv, K)[:, K - 1] = conv_tap  # channel-major: element c*K + j; j = K-1 is the current token
    out = {
        "q_proj.weight": torch.cat(q), "k_proj.weight": torch.cat(k), "v_proj.weight": torch.cat(v),
        "o_proj.weight": torch.cat(o, dim=1), "g_proj.weight": _new((H * dv, hidden), wq, gen),
        "a_proj.weight": _new((H, hidden), wq, gen), "b_proj.weight": _new((H, hidden), wq, gen),
        "dynamic_conv1d.kernel_generator.w1.weight": _new((dims.generator_hidden, hidden), wq, gen, std),
        "dynamic_conv1d.kernel_generator.w2.weight": _new((H * dv * K, dims.generator_hidden), wq, gen),
        "dynamic_conv1d.kernel_generator.w2.bias": bias,
        "o_norm.weight": _ones(dv, wq),
    }
    out["A_log"], out["dt_bias"] = half_life_decay_init(H, wq)
    return {n: t.contiguous() for n, t in out.items()}


def _ones(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, device="meta", dtype=like.dtype) if like.is_meta else torch.ones(n, dtype=like.dtype,
                                                                                          device=like.device)


def convert_state_dict(sd: dict[str, torch.Tensor], src_cfg, jet_cfg, scheme: str = "attention", seed: int = 0,
                       conv_tap: float = 1.0, progress: bool = False) -> dict[str, torch.Tensor]:
    """Map a Qwen state dict to Jet-Nemotron names; works on meta tensors (shapes only) too.

    The source is validated first (`check_source_state_dict`), so a bad checkpoint fails before any output.
    Returns a new dict; tensors copied unchanged are shared with `sd`, not cloned.
    """
    src = SourceDims.from_config(src_cfg)
    check_source_state_dict(sd, src)
    dims = jet_cfg.jet_dims()
    gen = torch.Generator().manual_seed(seed)
    out = {n: sd[n] for n in COPIED}
    out["lm_head.weight"] = sd["model.embed_tokens.weight"] if src.tie_word_embeddings else sd["lm_head.weight"]
    kinds = jet_cfg.official_layer_types
    layers = range(src.num_layers)
    if progress:
        from tqdm.auto import tqdm
        layers = tqdm(layers, desc="converting layers", unit="layer")
    for i in layers:
        p = f"model.layers.{i}."
        out.update({p + n: sd[p + n] for n in COPIED_PER_LAYER})
        attn = {n: sd[f"{p}self_attn.{n}"] for n in attention_names(src)}
        if kinds[i] in ("attn", "swa"):
            out.update({f"{p}self_attn.{n}": t for n, t in attn.items()})
        else:
            out.update({f"{p}self_attn.{n}": t for n, t in init_jet_block(attn, src, dims, scheme, gen, conv_tap).items()})
    for n in ("A_log", "dt_bias"):  # fp32 whatever the model dtype (official)
        for i in (j for j, k in enumerate(kinds) if k == "jet"):
            out[f"model.layers.{i}.self_attn.{n}"] = out[f"model.layers.{i}.self_attn.{n}"].float()
    return out


def convert_model(src_model, layer_map: LayerMap, jet: dict | None = None, window: int | None = None,
                  scheme: str = "attention", seed: int = 0, conv_tap: float = 1.0, progress: bool = False):
    """Build a JetNemotronForCausalLM on the CPU, in the source model's dtype, from a loaded Qwen model."""
    from transformers.initialization import no_init_weights

    from jet_nemotron import JetNemotronForCausalLM

    cfg = build_jet_config(src_model.config, layer_map, jet, window)
    sd = convert_state_dict(src_model.state_dict(), src_model.config, cfg, scheme, seed, conv_tap, progress)
    dtype = src_model.get_input_embeddings().weight.dtype
    old_default = torch.get_default_dtype()
    try:
        # built directly in the source dtype (bf16 for a 3B source halves the peak memory); the JetBlock
        # makes A_log / dt_bias fp32 itself. Every tensor is written below, so skip the random init.
        torch.set_default_dtype(dtype)
        with no_init_weights():
            model = JetNemotronForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old_default)
    want = model.state_dict()
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        raise RuntimeError(f"converter and model disagree on names: model has {missing[:5]} not written, "
                           f"converter wrote {extra[:5]} the model lacks")
    for n, t in want.items():
        if tuple(t.shape) != tuple(sd[n].shape):
            raise RuntimeError(f"converter wrote {n} with shape {tuple(sd[n].shape)}, model wants {tuple(t.shape)}")
    model.load_state_dict({n: sd[n].to(want[n].dtype) for n in want}, strict=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model
