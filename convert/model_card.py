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


def evaluation_table(folder: str | Path) -> str | None:
    """The markdown table of `jet-nemotron eval` (MODEL | baseline | ratio) when FOLDER/eval.json exists."""
    path = Path(folder) / "eval.json"
    if not path.is_file():
        return None
    import json

    from .eval.report import markdown

    return markdown(json.loads(path.read_text()))


def hub_id(source: str) -> str | None:
    """`owner/name` when `source` names a Hub repository rather than a local path, else None."""
    import re

    if Path(source).exists() or source.startswith((".", "/", "~")):
        return None
    return source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) else None


def source_license(source: str) -> str | None:
    """The `license:` of the source's own model card (a local folder's README.md, or the Hub's when reachable)."""
    import re

    readme = Path(source) / "README.md" if Path(source).is_dir() else None
    text = readme.read_text(errors="replace") if readme is not None and readme.is_file() else None
    if text is None and hub_id(source):
        try:  # the Hub's card data, asked once without retries (offline, the licence stays unknown and says so)
            from huggingface_hub import HfApi
            from huggingface_hub.constants import HF_HUB_OFFLINE

            if not HF_HUB_OFFLINE:
                return getattr(HfApi().model_info(source, timeout=5).card_data, "license", None)
        except Exception:
            return None
    front = re.match(r"---\n(.*?)\n---", text or "", re.S)
    found = re.search(r"^license:\s*(\S+)\s*$", front.group(1), re.M) if front else None
    return found.group(1) if found else None


def describe_sources(sources: list[str]) -> str:
    """Data sources as a reader needs them, without this machine's absolute paths: file names, or for many files
    the name of their common folder."""
    import os

    if not sources:
        return "unknown"
    if len(sources) > 3:
        common = Path(os.path.commonpath(sources)) if len({Path(s).anchor for s in sources}) == 1 else None
        where = f" under `{common.name}/`" if common is not None and common.name else ""
        return f"{len(sources)}+ files{where}"
    return ", ".join(f"`{Path(s).name}`" for s in sources)


def generated_rows(rows: dict | None) -> str:
    """One sentence on the rows made during training (the run identity's `retrieval`), or "" when there were none."""
    if not rows:
        return ""
    parts = []
    if rows.get("ratio"):
        parts.append(f"{rows['ratio']:.0%} generated long-range retrieval documents ({', '.join(rows['kinds'])}) over "
                     "that text")
    if rows.get("chat_ratio"):
        source = (f"a chat file (sha256 {rows['chat_file_sha256'][:12]}...)" if rows.get("chat_file_sha256")
                  else "the corpus's own Python functions")
        parts.append(f"{rows['chat_ratio']:.0%} chats in the tokenizer's template, from {source}")
    return "Of every stage's rows, " + " and ".join(parts) + "."


def render_card(jet_config, base_config, base_model: str, name: str, layer_map_source: str = "",
                distill: dict | None = None, repo_hint: str | None = None, license: str | None = None,
                evaluation: str | None = None) -> str:
    """Render the card. `base_model`: the source as given (a Hub id is linked and put in the card's metadata; a
    local path is named by its last component only). `repo_hint`: the id the usage snippet loads (default
    `name`; `push` puts the repo id there). `license`: default the source card's, else "other".
    `distill`: {"stages": [summary, ...], "data_sources", "data_tokens", "seq_len", "ppl_teacher", "ppl_student",
    "kl_before", "kl_after"} (summaries as returned by `distill.distill`). `evaluation`: the markdown table of
    `evaluation_table` (shown under "Evaluation")."""
    import jinja2

    from .layer_map import LayerMap

    official = jet_config.official_layer_types
    d = jet_config.jet_dims()
    hub = hub_id(base_model)
    shown = hub or Path(base_model.rstrip("/")).name or base_model
    n_attn, n_swa, n_jet = official.count("attn"), official.count("swa"), official.count("jet")
    ctx = {
        "name": name, "base_model": shown, "base_model_hub": hub, "repo_hint": repo_hint or name,
        "base_model_ref": f"[`{hub}`](https://huggingface.co/{hub})" if hub else f"a local checkpoint (`{shown}`)",
        "license": license or source_license(base_model) or "other",
        "n_layers": len(official), "n_jet": n_jet,
        "attn_text": f"{n_attn} {'keeps' if n_attn == 1 else 'keep'} full attention",
        "swa_text": f"{n_swa} {'uses' if n_swa == 1 else 'use'} a sliding window",
        "window": jet_config.sliding_window,
        "layer_map": LayerMap(official).describe(), "layer_map_source": layer_map_source or "config",
        "layer_types": list(enumerate(official)), "jet": d, "cache": cache_table(jet_config, base_config),
        "distilled": bool(distill and distill.get("stages")), "evaluation": evaluation,
    }
    if ctx["distilled"]:
        stages = []
        for s in distill["stages"]:
            c = s["config"]
            if c.get("local"):  # attention transfer: no end-to-end pass, so no KL whatever its weight says
                loss = "attention-output MSE, each JetBlock on the teacher's input to its layer (attention transfer)"
            else:
                loss = " + ".join(x for x, w in (("logit KL", c["kl_weight"]), ("attention MSE", c["mse_weight"]))
                                  if w)
            stages.append({"stage": c["stage"], "train": c["train"], "loss": loss, "steps": s["steps"],
                           "tokens": f"{s['tokens']:,}", "wall": f"{s['wall_s'] / 60:.1f} min"})
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        ctx.update(stages=stages, data_sources=describe_sources(list(distill.get("data_sources", []))),
                   generated_rows=generated_rows((distill.get("identity") or {}).get("retrieval")),
                   data_tokens=f"{distill.get('data_tokens', 0):,}", seq_len=distill.get("seq_len"),
                   **{k: fmt(distill.get(k)) for k in ("ppl_teacher", "ppl_student", "kl_before", "kl_after")})
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(**ctx)
