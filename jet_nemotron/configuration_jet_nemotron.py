"""Configuration of a Jet-Nemotron model: Qwen2's fields plus a per-layer map and the JetBlock sizes.

`layer_types` accepts the official release's names ("jet", "attn", "swa") and transformers' own
("linear_attention", "full_attention", "sliding_attention"); it is stored with transformers' names, which
transformers 5.x validates and uses to build hybrid caches. `efficient_attention_config` is the official
field: {"jet": {num_heads, head_dim, expand_v, conv_size, dconv_generator_reduction, norm_eps, ...},
"swa": {"window_size": W}}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from transformers.configuration_utils import PreTrainedConfig

# The layer-type alias table, owned here: official names ("jet", "attn", "swa") <-> transformers' names. The
# config stores transformers' names; `convert/` speaks the official ones; both import these two dicts.
OFFICIAL_TO_HF_LAYER_TYPES = {"jet": "linear_attention", "attn": "full_attention", "swa": "sliding_attention"}
HF_TO_OFFICIAL_LAYER_TYPES = {v: k for k, v in OFFICIAL_TO_HF_LAYER_TYPES.items()}

# The official releases (REFERENCE.md): layer maps (0-indexed, official names), JetBlock sizes, sliding window.
# `norm_eps` is a string, as in the official configs.
JET_NEMOTRON_2B_LAYER_TYPES = ["attn" if i in (14, 19) else "swa" if i in (20, 21) else "jet" for i in range(28)]
JET_NEMOTRON_4B_LAYER_TYPES = ["attn" if i in (17, 20, 32) else "swa" if i in (5, 16, 19, 21, 22, 25, 27) else "jet"
                               for i in range(36)]


def _release(layer_types: list[str], num_heads: int, head_dim: int, expand_v: float, window: int, base: str) -> dict:
    """One official release; both use conv 4, generator reduction 8 and norm eps 1e-5."""
    jet = {"num_heads": num_heads, "head_dim": head_dim, "expand_v": expand_v, "conv_size": 4,
           "dconv_generator_reduction": 8, "norm_eps": "1e-5"}
    return {"layer_types": layer_types, "jet": jet, "swa": {"window_size": window}, "base_model": base}


OFFICIAL_MODELS: dict[str, dict] = {
    "jet-nemotron-2b": _release(JET_NEMOTRON_2B_LAYER_TYPES, 12, 96, 2.6666666667, 1152, "Qwen/Qwen2.5-1.5B"),
    "jet-nemotron-4b": _release(JET_NEMOTRON_4B_LAYER_TYPES, 16, 128, 2.0, 2048, "Qwen/Qwen2.5-3B"),
}
# The config's defaults describe Jet-Nemotron-2B. The official configs also carry "mode" and
# "dconv_implementation" in the JetBlock sizes; nothing here reads them, so we do not write them (a loaded
# official config keeps whatever it brought).
DEFAULT_JET_CONFIG = OFFICIAL_MODELS["jet-nemotron-2b"]["jet"]
DEFAULT_SWA_CONFIG = OFFICIAL_MODELS["jet-nemotron-2b"]["swa"]
JET_CONFIG_KEYS = tuple(DEFAULT_JET_CONFIG)

# `kernel_backend` (config) / JET_NEMOTRON_KERNELS (environment), dispatched in ops.py.
KERNEL_BACKENDS = ("auto", "triton", "reference")
RECURRENT_STATE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class JetBlockDims:
    """Sizes of one JetBlock, resolved from `efficient_attention_config["jet"]`."""

    num_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_size: int
    generator_hidden: int
    norm_eps: float

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_k_dim

    @property
    def value_dim(self) -> int:
        return self.num_heads * self.head_v_dim


def normalize_layer_types(layer_types) -> list[str]:
    """Return transformers' names for a list (or a JSON / comma-separated string) of official or HF names."""
    if isinstance(layer_types, str):
        text = layer_types.strip()
        layer_types = json.loads(text) if text.startswith("[") else [t for t in text.replace(",", " ").split() if t]
    if not isinstance(layer_types, (list, tuple)):
        raise ValueError(f"layer_types must be a list of layer type names, got {type(layer_types).__name__} "
                         f"{layer_types!r}")
    out = []
    allowed = sorted(OFFICIAL_TO_HF_LAYER_TYPES) + sorted(HF_TO_OFFICIAL_LAYER_TYPES)
    for i, t in enumerate(layer_types):
        name = OFFICIAL_TO_HF_LAYER_TYPES.get(t, t)
        if name not in HF_TO_OFFICIAL_LAYER_TYPES:
            raise ValueError(f"layer_types[{i}] = {t!r} is not a Jet-Nemotron layer type; allowed: {allowed}")
        out.append(name)
    return out


class JetNemotronConfig(PreTrainedConfig):
    r"""
    Configuration of [`JetNemotronForCausalLM`]. Defaults describe Jet-Nemotron-2B (Qwen2.5-1.5B base).

    Beyond Qwen2's fields:
        layer_types (`list[str]`): one of "jet"/"linear_attention", "attn"/"full_attention",
            "swa"/"sliding_attention" per layer.
        efficient_attention_config (`dict`): {"jet": JetBlock sizes, "swa": {"window_size": W}} as in the
            official release. A sliding layer sees itself and the W-1 tokens before it.
        attention_bias (`bool`): bias on q/k/v of attention layers (Qwen2: True, Qwen3: False).
        qk_norm (`bool`): per-head RMSNorm on q and k in attention layers (Qwen3).
        kernel_backend (`str`): "auto", "triton" or "reference" for the JetBlock ops.
        recurrent_state_dtype (`str`): how the cache stores each JetBlock's [H, dk, dv] state between tokens,
            "float32" (default, as the official release) or "bfloat16" (half the state bytes a decode step reads and
            writes back; the arithmetic stays fp32).
    """

    model_type = "jet_nemotron"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    base_model_tp_plan = {
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int | None = 2
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_dropout: float = 0.0
    attention_bias: bool = True
    qk_norm: bool = False
    layer_types: list[str] | str | None = None
    efficient_attention_config: dict | None = None
    sliding_window: int | None = None
    kernel_backend: str = "auto"
    recurrent_state_dtype: str = "float32"
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.rope_parameters is None and "rope_theta" not in kwargs:
            kwargs["rope_theta"] = 1_000_000.0
        for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if not isinstance(self.num_key_value_heads, int) or self.num_key_value_heads < 1:
            raise ValueError(f"num_key_value_heads must be a positive integer, got {self.num_key_value_heads!r}")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"head_dim must be a positive integer, got {self.head_dim!r}")
        if self.layer_types is None:
            self.layer_types = JET_NEMOTRON_2B_LAYER_TYPES if self.num_hidden_layers == 28 else ["jet"] * self.num_hidden_layers
        self.layer_types = normalize_layer_types(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                             f"{self.num_hidden_layers}")
        if self.efficient_attention_config is None:
            self.efficient_attention_config = {"jet": dict(DEFAULT_JET_CONFIG), "swa": dict(DEFAULT_SWA_CONFIG)}
        eac = dict(self.efficient_attention_config)
        eac["jet"] = {**DEFAULT_JET_CONFIG, **(eac.get("jet") or {})}
        if "sliding_attention" in self.layer_types:
            swa = eac.get("swa") or {}
            window = swa.get("window_size", self.sliding_window)
            if window is None:
                idx = self.layer_types.index("sliding_attention")
                raise ValueError(f"layer {idx} is a sliding-window layer but efficient_attention_config['swa']"
                                 "['window_size'] (or sliding_window) is not set")
            if int(window) < 1:
                raise ValueError(f"efficient_attention_config['swa']['window_size'] must be >= 1, got {window}")
            eac["swa"] = {**swa, "window_size": int(window)}
            self.sliding_window = int(window)
        else:
            self.sliding_window = None
        self.efficient_attention_config = eac
        self.jet_dims()  # validate the JetBlock sizes now, not at the first forward
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}")
        if self.recurrent_state_dtype not in RECURRENT_STATE_DTYPES:
            raise ValueError(f"recurrent_state_dtype must be one of {RECURRENT_STATE_DTYPES}, "
                             f"got {self.recurrent_state_dtype!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        super().__post_init__(**kwargs)

    def jet_dims(self) -> JetBlockDims:
        """Resolve and validate the JetBlock sizes (value head = head_dim * expand_v, as the official code)."""
        jet = self.efficient_attention_config["jet"]
        try:
            num_heads, head_dim = int(jet["num_heads"]), int(jet["head_dim"])
            expand_v, conv_size = float(jet["expand_v"]), int(jet["conv_size"])
            reduction, norm_eps = int(jet["dconv_generator_reduction"]), float(jet["norm_eps"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"efficient_attention_config['jet'] is incomplete or malformed: {err!r} in {jet}") from err
        value = head_dim * expand_v
        # the official code truncates with int(); 2.6666666667 * 96 is 256 only up to rounding
        if abs(value - round(value)) > 1e-3 or round(value) < 1:
            raise ValueError(f"efficient_attention_config['jet']: head_dim {head_dim} * expand_v {expand_v} = {value} "
                             "is not a whole value-head dimension")
        head_v_dim = int(round(value))
        if num_heads < 1 or head_dim < 1 or conv_size < 1 or reduction < 1:
            raise ValueError(f"efficient_attention_config['jet'] sizes must be positive: {jet}")
        generator_hidden = (num_heads * head_v_dim) // reduction
        if generator_hidden < 1:
            raise ValueError(f"efficient_attention_config['jet']: dconv_generator_reduction {reduction} leaves no "
                             f"generator width for {num_heads * head_v_dim} channels")
        if not math.isfinite(norm_eps) or norm_eps <= 0:
            raise ValueError(f"efficient_attention_config['jet']['norm_eps'] must be a positive number, got {norm_eps}")
        return JetBlockDims(num_heads, head_dim, head_v_dim, conv_size, generator_hidden, norm_eps)

    @property
    def official_layer_types(self) -> list[str]:
        """The map in the official release's names ("jet", "attn", "swa")."""
        return [HF_TO_OFFICIAL_LAYER_TYPES[t] for t in self.layer_types]


__all__ = ["JetNemotronConfig"]
