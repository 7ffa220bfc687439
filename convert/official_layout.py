"""The official release's folder layout, for NVIDIA's HF code and SGLang: config and tensors as NVlabs writes them.

Tensor names are already the official ones (our modules carry the official attribute names). What differs is
the config, so this is mostly the inverse of what `JetNemotronConfig` does when it reads an official one:

| ours (transformers 5.x)                               | official (`jetai/modeling/configs/jetlm_2B.json`)     |
|-------------------------------------------------------|-------------------------------------------------------|
| `layer_types` linear/full/sliding_attention           | `jet` / `attn` / `swa`                                 |
| `rope_parameters` {rope_type, rope_theta}             | `rope_theta`, `rope_scaling` (null for default RoPE)  |
| `dtype`                                               | `torch_dtype`                                         |
| `head_dim`, `sliding_window`, `attention_bias`,       | not written: head_dim = hidden / heads, the window    |
| `qk_norm`, `kernel_backend`, `recurrent_state_dtype`  | lives in `efficient_attention_config.swa`, q/k/v bias |
|                                                       | always, no q/k norm                                   |
| (none)                                                | `max_window_layers` (= num layers), `use_mrope` false |

Tensors: every one in one dtype (the release stores all of them, `A_log` and `dt_bias` included, in bf16);
`lm_head.weight` is left out when tied. A model the official layout cannot hold (Qwen3's q/k norms, a head_dim
other than hidden / heads) is refused with the reason; a model without attention biases gets zero biases, which
compute the same thing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

LAYOUTS = ("transformers", "official")
OFFICIAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the fields of the official (and SGLang's) JetBlockConfig dataclass: both build it with **config["jet"], so a
# missing or extra key is an error there (SGLang) or a silent default (official)
OFFICIAL_JET_KEYS = ("mode", "expand_v", "num_heads", "head_dim", "norm_eps", "conv_size",
                     "dconv_generator_reduction", "dconv_implementation")
# the two of those our config does not carry (nothing of ours reads them): the release's values, unless a loaded
# official config brought its own
OFFICIAL_JET_DEFAULTS = {"mode": "chunk", "dconv_implementation": "triton"}
# files of a folder that the export writes itself (the rest, tokenizer, card, reports, are copied)
_REWRITTEN = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return layout


def eps_string(eps) -> str:
    """1e-05 -> "1e-5", as the official configs spell `norm_eps` (a string there)."""
    mantissa, _, exponent = f"{float(eps):g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def official_expand_v(head_dim: int, head_v_dim: int, num_heads: int, stored) -> float:
    """An `expand_v` from which the official code and SGLang, which truncate with int(), get `head_v_dim` back
    (2B sizes 96 -> 256: the release's 2.6666666667). The plain ratio dv / dk truncates one short for some sizes
    (dk 7, dv 61: int(7 * (61 / 7)) == 60), hence the rounded-up candidates."""
    exact = head_v_dim / head_dim
    for e in (stored, round(exact, 10), math.ceil(exact * 1e10) / 1e10):
        e = float(e)
        if int(head_dim * e) == head_v_dim and int(num_heads * head_dim * e) == num_heads * head_v_dim:
            return int(e) if e == int(e) and isinstance(stored, int) else e
    raise ValueError(f"no expand_v gives value head {head_v_dim} from head_dim {head_dim} under int() truncation")


def check_representable(config) -> None:
    """Raise (naming the field) if the official layout cannot hold this model."""
    if config.qk_norm:
        raise ValueError("qk_norm=True (Qwen3's per-head q/k RMSNorm) has no place in the official layout: neither "
                         "NVIDIA's code nor SGLang has q_norm/k_norm in attention layers; keep --layout transformers")
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise ValueError(f"head_dim {config.head_dim} x num_attention_heads {config.num_attention_heads} != "
                         f"hidden_size {config.hidden_size}: the official code and SGLang take the attention head size "
                         "as hidden_size / num_attention_heads; keep --layout transformers")
    extra = sorted(set(config.efficient_attention_config["jet"]) - set(OFFICIAL_JET_KEYS))
    if extra:
        raise ValueError(f"efficient_attention_config['jet'] has keys {extra} that the official JetBlockConfig "
                         f"lacks (allowed: {list(OFFICIAL_JET_KEYS)})")


def official_config(config, dtype: torch.dtype) -> dict:
    """config.json as the official release writes it, for a `JetNemotronConfig` (validated first)."""
    import transformers

    check_representable(config)
    dims = config.jet_dims()
    jet = {**OFFICIAL_JET_DEFAULTS, **config.efficient_attention_config["jet"]}
    jet["norm_eps"] = eps_string(jet["norm_eps"])
    jet["expand_v"] = official_expand_v(dims.head_k_dim, dims.head_v_dim, dims.num_heads, jet["expand_v"])
    eac = {"jet": {k: jet[k] for k in OFFICIAL_JET_KEYS}}
    if "swa" in config.efficient_attention_config:
        eac["swa"] = dict(config.efficient_attention_config["swa"])
    rope = dict(config.rope_parameters or {})
    theta = rope.pop("rope_theta", 1_000_000.0)
    rope_scaling = None if rope.get("rope_type", "default") == "default" else rope
    out = {
        "architectures": ["JetNemotronForCausalLM"],
        "attention_dropout": config.attention_dropout,
        "auto_map": {"AutoConfig": "configuration_jet_nemotron.JetNemotronConfig",
                     "AutoModelForCausalLM": "modeling_jet_nemotron.JetNemotronForCausalLM"},
        "efficient_attention_config": eac,
        "hidden_act": config.hidden_act,
        "hidden_size": config.hidden_size,
        "initializer_range": config.initializer_range,
        "intermediate_size": config.intermediate_size,
        "layer_types": config.official_layer_types,
        "max_position_embeddings": config.max_position_embeddings,
        "max_window_layers": config.num_hidden_layers,
        "model_type": "jet_nemotron",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": float(theta),
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
        "use_cache": config.use_cache,
        "use_mrope": False,
        "vocab_size": config.vocab_size,
    }
    # token ids: written only when set, as transformers 4.x's save_pretrained does
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, name, None) is not None:
            out[name] = getattr(config, name)
    return dict(sorted(out.items()))


def official_state_dict(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{official name: tensor in `dtype`}: the model's tensors, tied lm_head left out, zero q/k/v biases added
    where the model has none (the official attention always has them)."""
    cfg = model.config
    sd = {n: t.detach().to(dtype).contiguous() for n, t in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    if not cfg.attention_bias:
        for i, kind in enumerate(cfg.official_layer_types):
            if kind in ("attn", "swa"):
                p = f"model.layers.{i}.self_attn."
                for proj in ("q_proj", "k_proj", "v_proj"):
                    sd[f"{p}{proj}.bias"] = torch.zeros(sd[f"{p}{proj}.weight"].shape[0], dtype=dtype)
    return dict(sorted(sd.items()))


def save_official(model, folder: str | Path, dtype: torch.dtype | None = None, max_shard_size: str = "2GB") -> dict:
    """Write weights (safetensors, official names, one dtype), the official config.json and our modeling files
    into `folder` (an existing, empty-enough folder: the caller writes atomically). Returns the config written."""
    folder = Path(folder)
    dtype = dtype or model.get_input_embeddings().weight.dtype
    config = official_config(model.config, dtype)  # validates before anything is written
    for name, default in (("kernel_backend", "auto"), ("recurrent_state_dtype", "float32")):
        if getattr(model.config, name) != default:  # our runtime settings; the official config has no field
            print(f"note: {name}={getattr(model.config, name)!r} is not written in the official layout; pass it "
                  f"to from_pretrained({name}=...) when loading with our code")
    sd = official_state_dict(model, dtype)
    # save_pretrained shards, writes generation_config.json and copies our modeling files (auto_map's targets)
    model.save_pretrained(folder, state_dict=sd, max_shard_size=max_shard_size)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _check_reads_back(model.config, folder)
    return config


def _check_reads_back(config, folder: Path) -> None:
    """Our loader must read the written config into the same model (a cheap guard against a mapping slip)."""
    from jet_nemotron import JetNemotronConfig

    again = JetNemotronConfig.from_pretrained(folder)
    pairs = {"layer_types": (again.layer_types, config.layer_types), "jet sizes": (again.jet_dims(), config.jet_dims()),
             "sliding_window": (again.sliding_window, config.sliding_window),
             "rope_parameters": (again.rope_parameters, config.rope_parameters),
             "head_dim": (again.head_dim, config.head_dim)}
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "vocab_size", "rms_norm_eps", "tie_word_embeddings", "hidden_act", "max_position_embeddings"):
        pairs[name] = (getattr(again, name), getattr(config, name))
    wrong = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if wrong:
        raise RuntimeError(f"{folder / 'config.json'} reads back differently: {wrong}")


def decay_rounding(model, dtype: torch.dtype) -> float:
    """Largest relative change of A_log / dt_bias when stored in `dtype` (the model keeps them fp32)."""
    worst = 0.0
    for name, p in model.named_parameters():
        if name.endswith(("A_log", "dt_bias")):
            p = p.detach().float()
            worst = max(worst, ((p.to(dtype).float() - p).abs() / p.abs().clamp_min(1e-12)).max().item())
    return worst


def export_folder(folder: str | Path, out: str | Path, layout: str = "official", dtype: str = "bfloat16",
                  overwrite: bool = False, max_shard_size: str = "2GB") -> Path:
    """Re-write a Jet-Nemotron folder (ours or official) in `layout`; tokenizer, card and reports are copied."""
    from jet_nemotron import JetNemotronForCausalLM

    from .export import atomic_folder

    check_layout(layout)
    folder, out = Path(folder), Path(out)
    if dtype not in OFFICIAL_DTYPES:
        raise ValueError(f"--dtype must be one of {list(OFFICIAL_DTYPES)}, got {dtype!r}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a model folder")
    if out.resolve() == folder.resolve():
        raise ValueError(f"output folder {out} is the input folder; export to a new folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    torch_dtype = OFFICIAL_DTYPES[dtype]
    model = JetNemotronForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    n = sum(p.numel() for p in model.parameters())
    note = ""
    if torch_dtype != torch.float32:
        note = f"; A_log/dt_bias rounded to {dtype} (max relative change {decay_rounding(model, torch_dtype):.2e})"
    with atomic_folder(out, overwrite) as tmp:
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.name not in _REWRITTEN and f.suffix not in (".safetensors", ".bin", ".py"):
                shutil.copyfile(f, tmp / f.name)
        if layout == "official":
            save_official(model, tmp, torch_dtype, max_shard_size)
        else:
            model.to(torch_dtype).save_pretrained(tmp, max_shard_size=max_shard_size)
    print(f"wrote {out} ({layout} layout, {dtype}): {n / 1e6:.1f} M parameters{note}")
    return out
