"""Model card (README.md) of a converted model, rendered from `model_cards/jet_nemotron.md.jinja`.

Cache sizes per sequence come from `jet_nemotron.cache_nbytes_estimate` (bf16 KV, fp32 JetBlock state).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jet_nemotron.cache_jet_nemotron import cache_nbytes_estimate

# the repository's model_cards/ (checkout or editable install), else the copy a wheel installs under share/
TEMPLATE = next((p for p in (Path(__file__).resolve().parent.parent / "model_cards" / "jet_nemotron.md.jinja",
                             Path(sys.prefix) / "share" / "jet-nemotron" / "model_cards" / "jet_nemotron.md.jinja")
                 if p.exists()), Path(__file__).resolve().parent.parent / "model_cards" / "jet_nemotron.md.jinja")


# one formula for the whole project: jet_nemotron.cache_nbytes_estimate (documented there)
cache_bytes = cache_nbytes_estimate


def cache_table(jet_config, base_config, contexts=(4096, 65536), kv_bytes: int = 2) -> dict:
    rows = []
    for c in contexts:
        j, b = cache_bytes(jet_config, c, kv_bytes), cache_bytes(base_config, c, kv_bytes)
        rows.append({"context": f"{c:,}", "jet_mb": f"{j / 1e6:,.1f}", "base_mb": f"{b / 1e6:,.1f}",
                     "jet_per_token": f"{j / c:,.0f}", "base_per_token": f"{b / c:,.0f}", "ratio": f"{b / j:.1f}"})
    return {"dtype": {2: "bf16", 4: "fp32", 1: "8-bit"}.get(kv_bytes, f"{kv_bytes}-byte"), "rows": rows}


def render_card(jet_config, base_config, base_model: str, name: str, layer_map_source: str = "",
                distill: dict | None = None, repo_hint: str | None = None) -> str:
    """Render the card. `distill`: {"stages": [summary, ...], "data_sources", "data_tokens", "seq_len",
    "ppl_teacher", "ppl_student", "kl_before", "kl_after"} (summaries as returned by `distill.distill`)."""
    import jinja2

    from .layer_map import LayerMap

    official = jet_config.official_layer_types
    d = jet_config.jet_dims()
    is_hub = "/" in base_model and not Path(base_model).exists()
    ctx = {
        "name": name, "base_model": base_model, "repo_hint": repo_hint or name,
        "base_model_url": f"https://huggingface.co/{base_model}" if is_hub else base_model,
        "n_layers": len(official), "n_jet": official.count("jet"), "n_attn": official.count("attn"),
        "n_swa": official.count("swa"), "window": jet_config.sliding_window,
        "layer_map": LayerMap(official).describe(), "layer_map_source": layer_map_source or "config",
        "layer_types": list(enumerate(official)), "jet": d, "cache": cache_table(jet_config, base_config),
        "distilled": bool(distill and distill.get("stages")),
    }
    if ctx["distilled"]:
        stages = []
        for s in distill["stages"]:
            c = s["config"]
            loss = " + ".join(x for x, w in (("logit KL", c["kl_weight"]), ("attention MSE", c["mse_weight"])) if w)
            stages.append({"stage": c["stage"], "train": c["train"], "loss": loss, "steps": s["steps"],
                           "tokens": f"{s['tokens']:,}", "wall": f"{s['wall_s'] / 60:.1f} min"})
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        srcs = list(distill.get("data_sources", []))
        if len(srcs) > 3:  # many files: name their common folder, not each file
            import os

            srcs = [f"{len(srcs)}+ files under {os.path.commonpath(srcs)}"]
        ctx.update(stages=stages, data_sources=", ".join(srcs),
                   data_tokens=f"{distill.get('data_tokens', 0):,}", seq_len=distill.get("seq_len"),
                   **{k: fmt(distill.get(k)) for k in ("ppl_teacher", "ppl_student", "kl_before", "kl_after")})
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(**ctx)
