"""Generation speed: a Jet-Nemotron model vs the Qwen2 model it would be converted from, side by side.

Both models get random weights of the real shapes (Jet-Nemotron-2B vs Qwen2.5-1.5B by default: same hidden size,
MLP and vocabulary), bf16, one GPU, the same process, and each its best path in transformers: `generate()` with a
preallocated static cache and the compiled (CUDA-graph) decode step.

- prefill: one sequence of `ctx` tokens, dynamic cache, median of 3 (ms, tok/s).
- decode: the static cache is filled with random keys/values/states as if `ctx` tokens had been seen (decode cost
  does not depend on the values, and real prefill of hundreds of 64K sequences would take minutes), then
  `generate()` runs N1 and N2 new tokens, three times after a warm-up pair; tok/s = batch * (N2 - N1) / the median
  of (t2 - t1), which removes the first step.
  Measured at batch 1 and at the largest batch whose cache fits (capped by --max-batch).
- The teacher decodes through the same grouped-query attention as Jet-Nemotron's full-attention layers (registered
  with transformers' AttentionInterface as "grouped_decode": sdpa for prefill, `grouped_decode_attention` for one
  token), so that neither model pays for transformers' sdpa path repeating K/V per query head under a mask.
  `--teacher-attention sdpa` measures the teacher exactly as transformers ships it.
- Jet-Nemotron's same-input projections are fused into one matrix product each (`fuse_projections()`, same
  math); the teacher runs transformers' Qwen2 as it is. `--no-fuse` turns ours off.
- roofline: bytes a decode step must read (weights once + the KV/state it needs, state written back) over the
  card's copy bandwidth measured in the same run; achieved GB/s and the fraction are printed beside every tok/s.
- bound: the same, except that the weights cost the longer of reading them once and multiplying them by the batch
  at the card's measured bf16 matmul rate. At large batches the linear layers are compute-bound kernels whose time
  adds to the memory-bound attention and state kernels', so this, not the bytes alone, is what a step can reach.

    python benchmarks/generation.py --contexts 4096 16384 65536            # on a GPU
    python benchmarks/generation.py --smoke                                # tiny shapes, CPU, checks the script
    python benchmarks/generation.py --merge a/generation.json b/generation.json   # one table from several runs
Writes benchmarks/results/generation.json and generation.png and prints a table of ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import CompileConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from jet_nemotron import JetNemotronConfig, JetNemotronForCausalLM, cache_nbytes_estimate  # noqa: E402
from jet_nemotron.configuration_jet_nemotron import JET_NEMOTRON_2B_LAYER_TYPES  # noqa: E402
from roofline import ceilings  # noqa: E402
from shapes import QWEN25_1_5B  # noqa: E402
from stamp import stamp, stamp_line  # noqa: E402

# the measuring machinery lives in the package, where `jet-nemotron eval` reuses it
from convert.eval.speed import (decode_tok_s, fill_static_cache, greedy, largest_batch,  # noqa: E402
                                prefill_seconds, register_grouped_decode)

RESULTS = Path(__file__).resolve().parent / "results"


def model_configs(smoke: bool) -> tuple[JetNemotronConfig, Qwen2Config]:
    """Jet-Nemotron-2B and Qwen2.5-1.5B shapes (or tiny ones for --smoke)."""
    if smoke:
        base = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1 << 17)
        jet = JetNemotronConfig(**base, layer_types=["jet", "attn", "swa", "jet"], efficient_attention_config={
            "jet": {"num_heads": 2, "head_dim": 16, "expand_v": 2, "conv_size": 4, "dconv_generator_reduction": 8,
                    "norm_eps": "1e-5"}, "swa": {"window_size": 16}})
    else:
        base = dict(QWEN25_1_5B, tie_word_embeddings=True, max_position_embeddings=1 << 18)  # tied, as the 2B
        jet = JetNemotronConfig(**base, layer_types=JET_NEMOTRON_2B_LAYER_TYPES)
    qwen = Qwen2Config(**base, rope_theta=1e6)
    return jet, qwen


def build(cls, config, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once


def step_bytes(model, batch: int, ctx: int) -> int:
    """Fewest bytes one decode step must move: the weights once, then every cached byte it needs read once and the
    JetBlock states (fixed-size) written back: weights + cache * batch + JetBlock state * batch."""
    jet_state = 0
    if model.config.model_type == "jet_nemotron":
        jet_state = cache_nbytes_estimate(model.config, 0)  # at context 0 only the fixed-size JetBlock state is left
    return weight_bytes(model) + batch * (cache_nbytes_estimate(model.config, ctx) + jet_state)


def linear_weights(model) -> int:
    """Weights every token multiplies: all nn.Linear layers, lm_head included (the embedding lookup is no product)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def bound_seconds(model, batch: int, ctx: int, bandwidth: float, matmul_rate: float) -> float:
    """The least time one decode step can take on this card: the weights are either read once or multiplied by the
    batch (2 FLOPs per weight and sequence), whichever is slower, and every cached byte is moved once. Attention and
    the JetBlock state update do their arithmetic inside memory-bound kernels, so only their bytes count."""
    weights = weight_bytes(model)
    matmul_s = 2 * linear_weights(model) * batch / matmul_rate
    return max(weights / bandwidth, matmul_s) + (step_bytes(model, batch, ctx) - weights) / bandwidth


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("jet", "qwen"):
        rows = [r for r in results["rows"] if r["model"] == name]
        ctxs = sorted({r["ctx"] for r in rows})
        for mode, style in (("batch1", "--"), ("max_batch", "-")):
            ys = [next(r[f"decode_{mode}_tok_s"] for r in rows if r["ctx"] == c) for c in ctxs]
            axes[0].plot(ctxs, ys, style, marker="o", label=f"{name} decode, {mode.replace('_', ' ')}")
        axes[1].plot(ctxs, [next(r["prefill_ms"] for r in rows if r["ctx"] == c) for c in ctxs], marker="o", label=name)
    for ax, title, unit in ((axes[0], "decode throughput", "tok/s"), (axes[1], "prefill, batch 1", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=8)
    state = results.get("jet_recurrent_state_dtype", "float32")
    fig.suptitle(f"Jet-Nemotron ({state} JetBlock state) vs its Qwen2 teacher on {results['device']}")
    for ctx, ratios in sorted(results.get("ratios", {}).items(), key=lambda kv: int(kv[0])):  # the ratio at each point
        x = int(ctx)
        y = next(r["decode_max_batch_tok_s"] for r in results["rows"] if r["model"] == "jet" and r["ctx"] == x)
        axes[0].annotate(f"{ratios['decode_max_batch']:.2f}x", (x, y), textcoords="offset points", xytext=(6, 4),
                         fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _profiled(fn, device):
    """Event averages of one call of `fn` under torch.profiler (CPU, and CUDA kernels on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync()
    with profile(activities=acts) as prof:
        fn()
        sync()
    return prof.key_averages()


def _write_tables(out: Path, name: str, tables: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(f"{stamp_line(stamp())}\n\n" + "\n\n".join(tables))
    print("\n\n".join(tables), flush=True)


@torch.no_grad()
def profile_model(model, tag: str, ctx: int, device, out: Path) -> None:
    """Where the time goes: kernels of one prefill of `ctx` tokens and of one eager decode step (batch 1, filled
    static cache), sorted by device time; tables printed and written to OUT/profile_{tag}_{ctx}.txt."""
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    ids = torch.randint(0, model.config.vocab_size, (1, ctx), device=device)
    prefill = lambda: model(ids, use_cache=True, logits_to_keep=1)  # noqa: E731
    cache = fill_static_cache(model, 1, ctx, ctx + 8, device)
    pos = torch.tensor([ctx], device=device)
    step = lambda: model(ids[:, :1], past_key_values=cache, cache_position=pos, use_cache=True)  # noqa: E731
    tables = []
    for name, fn in (("prefill", prefill), ("eager decode step", step)):
        fn()  # warm-up
        events = _profiled(fn, device)
        n_kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                        and str(e.device_type).endswith("CUDA"))
        tables.append(f"== {tag} {name}, context {ctx}: {n_kernels} device kernels ==\n"
                      + events.table(sort_by=sort, row_limit=25))
    _write_tables(out, f"profile_{tag}_{ctx}.txt", tables)


def profile_generate(model, tag: str, ctx: int, batch: int, device, out: Path, compile_config, n: int = 8) -> None:
    """Where generate()'s decode loop spends what the compiled step does not: `n` tokens at `batch` from a filled
    static cache, after two warm-up runs (compile, CUDA graphs), sorted by device time and by self CPU time; written
    to OUT/profile_{tag}_{ctx}_generate_b{batch}.txt. The step alone and the loop differ by 4.3 ms per token for Jet
    at 64K and batch 515 on an H200 (29.7 ms against 34.0 ms), and this table is to say where that goes."""
    ids = torch.randint(0, model.config.vocab_size, (batch, ctx + 1), device=device)
    for _ in range(2):
        greedy(model, ids, fill_static_cache(model, batch, ctx, ctx + n + 16, device), n, compile_config)
    cache = fill_static_cache(model, batch, ctx, ctx + n + 16, device)
    events = _profiled(lambda: greedy(model, ids, cache, n, compile_config), device)
    sorts = (["cuda_time_total"] if device.type == "cuda" else []) + ["self_cpu_time_total"]
    _write_tables(out, f"profile_{tag}_{ctx}_generate_b{batch}.txt",
                  [f"== {tag} generate(), {n} tokens at batch {batch}, context {ctx}, sorted by {sort} ==\n"
                   + events.table(sort_by=sort, row_limit=30) for sort in sorts])


def report(results: dict, out: Path, stem: str = "generation") -> None:
    """Print the table of ratios for every context both models reached, write the JSON and the PNG."""
    contexts = sorted({r["ctx"] for r in results["rows"] if r["model"] == "jet"}
                      & {r["ctx"] for r in results["rows"] if r["model"] == "qwen"})
    derive_bounds(results)
    pct = lambda x: f"{100 * x:.0f}%" if x else "-"  # noqa: E731
    print(f"\n{'ctx':>7} | {'prefill x':>9} | {'decode b1 x':>11} | {'decode max x':>12} | "
          "jet b1: generate tok/s, step ms (roofline) | jet max: tok/s @batch (roofline) | qwen max: tok/s @batch "
          "(roofline) | qwen b1 step ms (roofline)")
    for ctx in contexts:
        j = next(r for r in results["rows"] if r["model"] == "jet" and r["ctx"] == ctx)
        q = next(r for r in results["rows"] if r["model"] == "qwen" and r["ctx"] == ctx)
        ratios = {"prefill": q["prefill_ms"] / j["prefill_ms"],
                  "decode_batch1": j["decode_batch1_tok_s"] / q["decode_batch1_tok_s"],
                  "decode_max_batch": j["decode_max_batch_tok_s"] / q["decode_max_batch_tok_s"]}
        results.setdefault("ratios", {})[str(ctx)] = ratios
        print(f"{ctx:>7} | {ratios['prefill']:>8.2f}x | {ratios['decode_batch1']:>10.2f}x | "
              f"{ratios['decode_max_batch']:>11.2f}x | {j['decode_batch1_tok_s']:.0f}, "
              f"{j.get('step_batch1_ms', float('nan')):.2f} ({pct(j.get('step_batch1_roofline_frac'))}) | "
              f"{j['decode_max_batch_tok_s']:.0f} @{j['decode_max_batch_batch']} "
              f"({pct(j['decode_max_batch_roofline_frac'])}) | {q['decode_max_batch_tok_s']:.0f} "
              f"@{q['decode_max_batch_batch']} ({pct(q['decode_max_batch_roofline_frac'])}) | "
              f"{q.get('step_batch1_ms', float('nan')):.2f} ({pct(q.get('step_batch1_roofline_frac'))})")
    for ctx in contexts:
        j, q = (next(r for r in results["rows"] if r["model"] == m and r["ctx"] == ctx) for m in ("jet", "qwen"))
        if j.get("decode_max_batch_bound_frac") and q.get("decode_max_batch_bound_frac"):
            # tok/s at 100% of the bound = measured tok/s / fraction: the ratio the two bounds allow
            cap = (j["decode_max_batch_tok_s"] / j["decode_max_batch_bound_frac"]) / (
                q["decode_max_batch_tok_s"] / q["decode_max_batch_bound_frac"])
            print(f"{ctx:>7} | largest batch against the bytes + FLOPs bound: jet "
                  f"{pct(j['decode_max_batch_bound_frac'])} (step {pct(j.get('step_max_batch_bound_frac'))}), qwen "
                  f"{pct(q['decode_max_batch_bound_frac'])} (step {pct(q.get('step_max_batch_bound_frac'))}); "
                  f"the bounds allow {cap:.2f}x")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    plot(results, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and .png")


def derive_bounds(results: dict) -> None:
    """Add the bytes + FLOPs bound fractions to every row that lacks them (all rows of a fresh run, and rows of JSON
    written before the bound existed): the models are rebuilt on the meta device (shapes only) and the run's own
    measured ceilings are used (their mean for merged runs)."""
    rows = [r for r in results["rows"] if "decode_max_batch_tok_s" in r and "decode_max_batch_bound_frac" not in r]
    bw, rate = results.get("copy_bandwidth_GBps"), results.get("bf16_matmul_TFLOPs")
    if not rows or bw is None or rate is None:
        return
    def mean(x):  # merged runs keep one value per run, possibly nested
        flat = [v for item in (x if isinstance(x, list) else [x]) for v in (item if isinstance(item, list) else [item])]
        return sum(flat) / len(flat)

    bw, rate = 1e9 * mean(bw), 1e12 * mean(rate)
    if bw != bw or rate != rate:  # a CPU run has no ceilings
        return
    smoke = results.get("smoke", False)  # runs written before the flag existed were full-size
    configs = dict(zip(("jet", "qwen"), model_configs(smoke)))
    configs["jet"].recurrent_state_dtype = results.get("jet_recurrent_state_dtype", "float32")
    models = {}
    for tag, cls in (("jet", JetNemotronForCausalLM), ("qwen", Qwen2ForCausalLM)):
        with torch.device("meta"):
            models[tag] = cls(configs[tag]).to(torch.bfloat16)
    for r in rows:
        for mode in ("batch1", "max_batch"):
            batch, tok_s = r[f"decode_{mode}_batch"], r[f"decode_{mode}_tok_s"]
            bound = bound_seconds(models[r["model"]], batch, r["ctx"], bw, rate)
            r[f"decode_{mode}_bound_frac"] = bound * tok_s / batch
            if r.get(f"step_{mode}_ms"):
                r[f"step_{mode}_bound_frac"] = bound / (r[f"step_{mode}_ms"] / 1e3)


def merge(paths: list[Path]) -> dict:
    """Rows of several runs (for instance one context per device call) on the same card, as one result."""
    runs = [json.loads(p.read_text()) for p in paths]
    devices = {r["device"] for r in runs}
    if len(devices) != 1:
        raise ValueError(f"cannot merge runs from different cards: {sorted(devices)} ({[str(p) for p in paths]})")
    state_dtypes = {r.get("jet_recurrent_state_dtype", "float32") for r in runs}
    if len(state_dtypes) != 1:  # one JSON field names the state dtype of every Jet row
        raise ValueError(f"cannot merge runs with different Jet-Nemotron state dtypes: {sorted(state_dtypes)} "
                         f"({[str(p) for p in paths]})")
    merged = {k: v for k, v in runs[0].items() if k not in ("rows", "ratios")}
    merged["rows"] = [row for r in runs for row in r["rows"]]
    merged["copy_bandwidth_GBps"] = [r["copy_bandwidth_GBps"] for r in runs]  # each run measured its own
    merged["stamp"] = [s for r in runs for s in r.get("stamp", [])]
    return merged


def run(contexts: list[int], smoke: bool, max_batch: int, n1: int, n2: int, out: Path, fuse: bool = True,
        teacher_attention: str = "grouped", profile_ctx: int = 0, profile_batch: int = 0,
        state_dtype: str = "float32", dynamic: bool = False, teacher_first: bool = False) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # dynamic=True: one graph per model for every (batch, context) shape, instead of a compile per shape (each
    # shape's CUDA graph is still recorded on its own); both models alike
    compile_config = CompileConfig(fullgraph=True, dynamic=True if dynamic else None, mode="reduce-overhead")
    if smoke:  # exercise the compiled-step path on the CPU too, with dynamo's eager backend (no C++ build)
        compile_config = CompileConfig(fullgraph=True, backend="eager", dynamic=True if dynamic else None)
        compile_config._compile_all_devices = True
    bandwidth, matmul_rate = ceilings() if device.type == "cuda" else (float("nan"), float("nan"))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}; copy bandwidth {bandwidth / 1e9:.0f} GB/s, bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s",
          flush=True)
    jet_cfg, qwen_cfg = model_configs(smoke)
    jet_cfg.recurrent_state_dtype = state_dtype
    qwen_cfg._attn_implementation = register_grouped_decode() if teacher_attention == "grouped" else "sdpa"
    results = {"stamp": [stamp(contexts=list(contexts))], "device": name, "copy_bandwidth_GBps": bandwidth / 1e9,
               "bf16_matmul_TFLOPs": matmul_rate / 1e12,
               "n_decode_steps": n2 - n1, "rows": [],
               "torch": torch.__version__, "jet_projections_fused": fuse,
               "teacher_attention": qwen_cfg._attn_implementation, "jet_recurrent_state_dtype": state_dtype,
               "compile_dynamic": dynamic, "smoke": smoke,
               # inductor splits a graph around what CUDA graphs cannot hold (TORCHINDUCTOR_GRAPH_PARTITION=0: off);
               # with --dynamic that split left Jet-Nemotron's decode step a size symbol short on the H200
               "inductor_graph_partition": bool(torch._inductor.config.graph_partition)}
    stem = "generation_smoke" if smoke else "generation"
    models = [("jet", JetNemotronForCausalLM, jet_cfg), ("qwen", Qwen2ForCausalLM, qwen_cfg)]
    for tag, cls, cfg in models[::-1] if teacher_first else models:
        model = build(cls, cfg, device, dtype)
        if tag == "jet" and fuse:
            model.fuse_projections()  # same math, fewer launches per decode step (fused_projections.py)
        print(f"{tag}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, "
              f"{weight_bytes(model) / 1e9:.2f} GB", flush=True)
        if profile_ctx:
            profile_model(model, tag, profile_ctx, device, out)
            if profile_batch:
                # the teacher's cache may not hold the student's largest batch: each model at most its own
                batch = min(profile_batch, largest_batch(model, profile_ctx, device, profile_batch))
                print(f"{tag}: profiling generate() at batch {batch}", flush=True)
                profile_generate(model, tag, profile_ctx, batch, device, out, compile_config)
        ctx = None
        try:
            for ctx in contexts if not profile_ctx else []:
                t_row = time.perf_counter()
                row = {"model": tag, "ctx": ctx, "cache_MB_per_seq": cache_nbytes_estimate(model.config, ctx) / 1e6}
                row["prefill_ms"] = prefill_seconds(model, ctx, device) * 1e3
                row["prefill_tok_s"] = ctx / row["prefill_ms"] * 1e3
                for mode, batch in (("batch1", 1), ("max_batch", largest_batch(model, ctx, device, max_batch))):
                    tok_s, step_s = decode_tok_s(model, batch, ctx, device, n1, n2, compile_config)
                    gbps = step_bytes(model, batch, ctx) * tok_s / batch / 1e9
                    row[f"decode_{mode}_batch"] = batch
                    row[f"decode_{mode}_tok_s"] = tok_s
                    row[f"decode_{mode}_GBps"] = gbps
                    row[f"decode_{mode}_roofline_frac"] = gbps * 1e9 / bandwidth if bandwidth == bandwidth else None
                    # the compiled step alone, without generate()'s per-token Python (logits processors, stopping checks)
                    row[f"step_{mode}_ms"] = step_s * 1e3
                    row[f"step_{mode}_roofline_frac"] = (step_bytes(model, batch, ctx) / step_s / bandwidth
                                                         if bandwidth == bandwidth else None)
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                if device.type == "cuda":
                    row["peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
                    torch.cuda.reset_peak_memory_stats()
                row["row_s"] = time.perf_counter() - t_row  # compiles included: what a context costs a session
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{stem}.json").write_text(json.dumps(results, indent=1))  # a run cut short keeps its rows
        except Exception as err:  # noqa: BLE001 - one model's failure must not lose the other's rows (one try a session)
            results.setdefault("errors", []).append({"model": tag, "ctx": ctx, "error": f"{type(err).__name__}: {err}"})
            print(f"{tag} failed at context {ctx}:", flush=True)
            traceback.print_exc()
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()

    if profile_ctx:
        return results
    report(results, out, stem)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--max-batch", type=int, default=4096,
                        help="cap on the largest batch tried (below it, free memory decides)")
    parser.add_argument("--steps", type=int, nargs=2, default=[8, 40], metavar=("N1", "N2"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, not speed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-fuse", action="store_true", help="keep Jet-Nemotron's projections unfused")
    parser.add_argument("--teacher-attention", choices=["grouped", "sdpa"], default="grouped",
                        help="the teacher's decode attention: ours (like with like) or transformers' sdpa as shipped")
    parser.add_argument("--profile", type=int, default=0, metavar="CTX",
                        help="only profile one prefill of CTX tokens and one eager decode step per model")
    parser.add_argument("--profile-batch", type=int, default=0, metavar="B",
                        help="with --profile: also profile generate()'s compiled decode loop at batch B "
                             "(or the largest that fits, if smaller)")
    parser.add_argument("--dynamic", action="store_true",
                        help="compile the decode step once per model for all shapes (dynamic=True), not per shape. "
                             "On the H200 (torch 2.11, 2026-12-02) the teacher ran so, Jet-Nemotron did not: "
                             "inductor's graph partition left a size symbol unbound (NameError)")
    parser.add_argument("--teacher-first", action="store_true",
                        help="measure the teacher before Jet-Nemotron (a run cut by a time limit keeps the teacher's rows)")
    parser.add_argument("--state-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="Jet-Nemotron's recurrent_state_dtype: how its cache stores the JetBlock states")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="combine earlier runs' JSON (same card) into one table, JSON and plot; runs nothing")
    args = parser.parse_args(argv)
    if args.merge:
        report(merge(args.merge), args.out)
        return
    contexts = [64, 128] if args.smoke else args.contexts
    max_batch = 4 if args.smoke else args.max_batch
    res = run(contexts, args.smoke, max_batch, *args.steps, out=args.out, fuse=not args.no_fuse,
              teacher_attention=args.teacher_attention, profile_ctx=args.profile, profile_batch=args.profile_batch,
              state_dtype=args.state_dtype, dynamic=args.dynamic, teacher_first=args.teacher_first)
    if res.get("errors"):  # the other model's rows are written; the run still fails
        raise SystemExit(f"generation benchmark: {len(res['errors'])} model(s) failed: {res['errors']}")


if __name__ == "__main__":
    main()
