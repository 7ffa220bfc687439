"""Hardware-aware JetBlock shape search (paper Table 2): at a fixed recurrent-state size, every (heads, dk, dv)
our kernels take, timed for prefill and decode on the GPU.

The decode cost of a JetBlock is dominated by reading and writing its state, H * dk * dv fp32 numbers per
sequence, so at a fixed state size the decode speed should barely move with the shape (the paper's finding,
checked here in kind), while parameters and prefill work do move: H * (2 dk + 2 dv) * hidden projection weights.
Valid shapes: dk and dv multiples of `dim_multiple` in [min_dim, max_dk] / [min_dim, max_dv] (the Triton kernels
take dk <= 256), H = state / (dk * dv) whole, and the kernel generator's width H * dv / reduction whole.

Timed per shape, one JetBlock layer at the source's hidden size, bf16, through the model's own code path
(`JetBlock.forward`, chunked prefill; with a `JetNemotronCache`, the one-token decode step): prefill of
`batch` x `prefill_len` tokens and one decode step of `decode_batch` sequences, CUDA events, median of repeats.
The choice: among the shapes whose decode step is within `tolerance` of the fastest, the one with the most
JetBlock parameters (the paper's quality ranking follows parameters at equal speed: its winner, 12 x 96 x 256,
has the most parameters of the rows at 2.95-2.99K tok/s but one); a short distillation per shape would be the
better quality proxy and is not done here.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import torch


def valid_shapes(state_bytes: int, min_dim: int = 64, max_dk: int = 256, max_dv: int = 1024, multiple: int = 16,
                 reduction: int = 8, state_dtype_bytes: int = 4, heads: list[int] | None = None) -> list[tuple[int, int, int]]:
    """All (heads, dk, dv) with heads * dk * dv * state_dtype_bytes == state_bytes, sorted by (dk, dv); `heads`
    limits the head counts (None: any)."""
    if state_bytes <= 0 or state_bytes % state_dtype_bytes:
        raise ValueError(f"--state-bytes {state_bytes} is not a positive multiple of {state_dtype_bytes} "
                         "(one fp32 state element)")
    if max_dk > 256:
        raise ValueError(f"--max-dk {max_dk}: the Triton kernels take dk <= 256")
    elems = state_bytes // state_dtype_bytes
    out = []
    for dk in range(multiple * -(-min_dim // multiple), max_dk + 1, multiple):
        for dv in range(multiple * -(-min_dim // multiple), max_dv + 1, multiple):
            h = elems // (dk * dv)
            if elems % (dk * dv) == 0 and (h * dv) % reduction == 0 and (heads is None or h in heads):
                out.append((elems // (dk * dv), dk, dv))
    if not out:
        raise ValueError(f"no (heads, dk, dv) with dk, dv multiples of {multiple} in [{min_dim}, {max_dk}] / "
                         f"[{min_dim}, {max_dv}]{f' and heads in {heads}' if heads else ''} makes a state of "
                         f"{state_bytes} bytes ({elems} fp32 elements)")
    return sorted(out, key=lambda s: (s[1], s[2]))


def jet_params(hidden: int, heads: int, dk: int, dv: int, conv: int = 4, reduction: int = 8) -> int:
    """Parameters of one JetBlock (REFERENCE.md shapes)."""
    value, gen = heads * dv, heads * dv // reduction
    return (hidden * (2 * heads * dk + 2 * value + 2 * heads) + 2 * heads + gen * hidden + value * conv * gen
            + value * conv + dv + value * hidden)


def model_params(src_cfg, layer_types: list[str], heads: int, dk: int, dv: int) -> int:
    """Parameters of the converted model: the source's embeddings / MLPs / norms, attention for attn / swa layers."""
    d, inter, v = src_cfg.hidden_size, src_cfg.intermediate_size, src_cfg.vocab_size
    hd = getattr(src_cfg, "head_dim", None) or d // src_cfg.num_attention_heads
    nq, nkv = src_cfg.num_attention_heads, src_cfg.num_key_value_heads
    attn = d * nq * hd * 2 + d * nkv * hd * 2 + (nq + 2 * nkv) * hd  # q, o, k, v weights + q/k/v biases
    total = v * d * (1 if src_cfg.tie_word_embeddings else 2) + d
    for t in layer_types:
        total += 3 * d * inter + 2 * d + (jet_params(d, heads, dk, dv) if t == "jet" else attn)
    return total


def _time(fn, repeats: int, device) -> float:
    """Median seconds of fn() over `repeats` calls after one warm-up (CUDA events on GPU)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_shape(src_cfg, heads: int, dk: int, dv: int, batch: int, prefill_len: int, decode_batch: int, device,
               dtype: torch.dtype, backend: str, repeats: int = 5) -> dict:
    """Prefill and decode-step seconds of one JetBlock layer of this shape."""
    from jet_nemotron import JetNemotronConfig
    from jet_nemotron.cache_jet_nemotron import JetNemotronCache
    from jet_nemotron.jet_block import JetBlock

    cfg = JetNemotronConfig(vocab_size=src_cfg.vocab_size, hidden_size=src_cfg.hidden_size,
                            intermediate_size=src_cfg.intermediate_size, num_hidden_layers=1,
                            num_attention_heads=src_cfg.num_attention_heads,
                            num_key_value_heads=src_cfg.num_key_value_heads, layer_types=["jet"],
                            efficient_attention_config={"jet": {"num_heads": heads, "head_dim": dk,
                                                                "expand_v": dv / dk, "conv_size": 4,
                                                                "dconv_generator_reduction": 8}},
                            kernel_backend=backend)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the previous shape's block and cache are gone by now
    block = JetBlock(cfg, 0).to(device, dtype).eval()
    block.A_log.data, block.dt_bias.data = block.A_log.data.float(), block.dt_bias.data.float()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(batch, prefill_len, cfg.hidden_size, generator=g) * 0.5).to(device, dtype)
    t_prefill = _time(lambda: block(x), repeats, device)
    cache = JetNemotronCache(cfg)
    block(torch.randn(decode_batch, 8, cfg.hidden_size, generator=g).to(device, dtype), past_key_values=cache)
    x1 = (torch.randn(decode_batch, 1, cfg.hidden_size, generator=g) * 0.5).to(device, dtype)
    t_decode = _time(lambda: block(x1, past_key_values=cache), repeats * 4, device)
    return {"prefill_s": t_prefill, "decode_step_s": t_decode,
            "prefill_tok_s": batch * prefill_len / t_prefill, "decode_tok_s": decode_batch / t_decode}


def choose(rows: list[dict], tolerance: float) -> dict:
    best = min(r["decode_step_s"] for r in rows)
    fast = [r for r in rows if r["decode_step_s"] <= best * (1 + tolerance)]
    return max(fast, key=lambda r: (r["jet_params"], -r["decode_step_s"]))


def markdown_table(rows: list[dict], chosen: dict, note: str) -> str:
    lines = [note, "", "| dk | dv | heads | params (B) | JetBlock params (M) | decode tok/s (1 layer) | prefill tok/s "
             "(1 layer) | |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "**chosen**" if r is chosen else ""
        lines.append(f"| {r['dk']} | {r['dv']} | {r['heads']} | {r['model_params'] / 1e9:.2f} | "
                     f"{r['jet_params'] / 1e6:.2f} | {r['decode_tok_s']:,.0f} | {r['prefill_tok_s']:,.0f} | {mark} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], chosen: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['heads']}x{r['dk']}x{r['dv']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.45 * len(rows) * 2), 4))
    for ax, key, name in ((axes[0], "decode_tok_s", "decode step"), (axes[1], "prefill_tok_s", "prefill")):
        vals = [r[key] for r in rows]
        ax.bar(range(len(rows)), vals, color=["tab:red" if r is chosen else "tab:blue" for r in rows])
        ax.set_xticks(range(len(rows)), labels, rotation=70, fontsize=7)
        ax.set_ylabel("tokens/s, one JetBlock layer")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, max(vals) * 1.1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PAPER_SHAPES = [(4, 256, 288), (4, 192, 384), (4, 128, 576), (8, 256, 144), (8, 192, 192), (8, 128, 288),
                (12, 128, 192), (12, 96, 256), (12, 64, 384)]  # Table 2's rows (heads, dk, dv), 294,912 elements


def search_hardware(source: str, state_bytes: int, out: str | Path, layer_map: str | None = None, batch: int = 1,
                    prefill_len: int = 8192, decode_batch: int = 256, min_dim: int = 64, max_dk: int = 256,
                    max_dv: int = 1024, dim_multiple: int = 16, tolerance: float = 0.05, cpu_reference: bool = False,
                    overwrite: bool = False, repeats: int = 5, heads: list[int] | None = None,
                    shapes: list[tuple[int, int, int]] | None = None) -> dict:
    """Time every valid shape (or the given `shapes`), write hardware.json / .md / .png and the layer map."""
    from tqdm.auto import tqdm

    from ..layer_map import resolve_layer_map
    from .run import source_config
    from ..qwen_to_jet import SourceDims

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    if not torch.cuda.is_available() and not cpu_reference:
        raise RuntimeError("search hardware times our Triton kernels and needs a CUDA GPU; on the CPU only "
                           "--cpu-reference (the PyTorch reference ops, tiny sizes, for tests) runs")
    src_cfg = source_config(source)
    SourceDims.from_config(src_cfg)
    L = src_cfg.num_hidden_layers
    lm = resolve_layer_map(layer_map or ("jet-nemotron-2b" if L == 28 else "all-jet"), L)
    lm.check_layer_count(L, f"the source model {source}")
    if shapes is None:
        shapes = valid_shapes(state_bytes, min_dim, max_dk, max_dv, dim_multiple, heads=heads)
    for h, dk, dv in shapes:
        if h * dk * dv * 4 != state_bytes:
            raise ValueError(f"shape {h} x {dk} x {dv} holds {h * dk * dv * 4} state bytes, not --state-bytes {state_bytes}")
    device = torch.device("cpu" if cpu_reference else "cuda")
    dtype = torch.float32 if cpu_reference else torch.bfloat16
    backend = "reference" if cpu_reference else "triton"
    print(f"{len(shapes)} shapes with a {state_bytes:,}-byte state per layer and sequence on {device}")
    rows = []
    t0 = time.perf_counter()
    for heads, dk, dv in tqdm(shapes, desc="timing shapes", unit="shape"):
        t = time_shape(src_cfg, heads, dk, dv, batch, prefill_len, decode_batch, device, dtype, backend, repeats)
        rows.append({"heads": heads, "dk": dk, "dv": dv, **t, "jet_params": jet_params(src_cfg.hidden_size, heads, dk, dv),
                     "model_params": model_params(src_cfg, lm.layer_types, heads, dk, dv)})
    chosen = choose(rows, tolerance)
    dec = [r["decode_tok_s"] for r in rows]
    spread = max(dec) / min(dec) - 1
    lm.jet = {"num_heads": chosen["heads"], "head_dim": chosen["dk"], "expand_v": round(chosen["dv"] / chosen["dk"], 10),
              "conv_size": 4, "dconv_generator_reduction": 8}
    lm.metadata["hardware_search"] = {"state_bytes": state_bytes, "chosen": {k: chosen[k] for k in ("heads", "dk", "dv")},
                                      "rule": f"most JetBlock parameters within {tolerance:.0%} of the fastest decode"}
    lm.metadata.setdefault("base_model", source)
    note = (f"{source}, state {state_bytes:,} bytes per JetBlock layer and sequence (fp32), {device} "
            f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'reference ops'}); prefill {batch} x "
            f"{prefill_len} tokens, decode step of {decode_batch} sequences; decode spread across shapes "
            f"{spread:.1%}; params (B) for the map {lm.describe()}")
    summary = {"source": source, "state_bytes": state_bytes, "device": str(device), "rows": rows,
               "chosen": chosen, "decode_spread": spread, "tolerance": tolerance, "wall_s": time.perf_counter() - t0,
               "settings": {"batch": batch, "prefill_len": prefill_len, "decode_batch": decode_batch,
                            "dtype": str(dtype), "backend": backend}}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "hardware.json").write_text(json.dumps(summary, indent=1))
    (tmp / "hardware.md").write_text(markdown_table(rows, chosen, note))
    (tmp / "layer_map.json").write_text(json.dumps(lm.to_json(), indent=1))
    plot(rows, chosen, tmp / "hardware.png", f"JetBlock shapes at {state_bytes:,} state bytes")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(markdown_table(rows, chosen, note))
    print(f"chose heads {chosen['heads']}, dk {chosen['dk']}, dv {chosen['dv']} -> {out / 'layer_map.json'} "
          f"({summary['wall_s']:.1f} s)")
    return summary
