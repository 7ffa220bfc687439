"""Benchmark the JetBlock kernels: ours (Triton) vs flash-linear-attention vs the PyTorch reference.

    python benchmarks/kernel_speed.py [--out benchmarks/results] [--quick]
    python benchmarks/kernel_speed.py --plot benchmarks/results/kernels.json   # PNG from a saved JSON, no GPU
    python benchmarks/kernel_speed.py --merge run/kernels.json   # a run's parts replace those of results/kernels.json

Chunked gated delta rule forward and forward+backward, B=1, T = 1K..64K, bf16, at the 2B JetBlock shape
(H=12, dk=96, dv=256) and the 4B shape (H=16, dk=128, dv=256); the decode step at several batch sizes;
the dynamic convolution; one-token decode attention over a static KV cache (the model's two paths: the grouped
PyTorch product, eager and compiled, and sdpa with enable_gqa). Times are medians of `triton.testing.do_bench`. Next to each time: the fraction of
the roofline, max(FLOPs / matmul rate, bytes / copy bandwidth) over the time, both ceilings measured on the
card first. Bytes are the fewest the op must move (each input read once, each output written once);
FLOPs are the chunked algorithm's matrix products (chunk C=64, per token and head
2 (3 C dk + 2 C dv + 3 dk dv) forward; the backward counted as twice the forward).
flash-linear-attention is a benchmark peer only, never imported by the plugin.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from roofline import ceilings  # noqa: E402
from stamp import stamp  # noqa: E402

SHAPES = {"2B": (12, 96, 256), "4B": (16, 128, 256)}
C = 64


def gdr_cost(T, H, K, V, bwd):
    """(FLOPs, bytes) of the chunked gated delta rule for B=1, bf16 q/k/v/beta, fp32 g."""
    fwd_flops = T * H * 2 * (3 * C * K + 2 * C * V + 3 * K * V)
    inputs = T * H * (2 * K * 2 + V * 2 + 4 + 2)
    out = T * H * V * 2
    if not bwd:
        return fwd_flops, inputs + out
    # forward, then the backward reads the inputs and do, writes a gradient of every input
    return 3 * fwd_flops, (inputs + out) + (inputs + out) + inputs


def step_cost(B, H, K, V, state_bytes=4):
    """(FLOPs, bytes) of one decode token: the state (fp32, or bf16 with state_bytes=2) is read and written,
    q/k/v/o are bf16."""
    return 8 * B * H * K * V, B * H * (2 * K * V * state_bytes + 2 * K * 2 + 2 * V * 2 + 6)


def step_inputs(B, H, K, V, state_dtype=torch.float32):
    """q, k [B, H, K], v [B, H, V] bf16; g [B, H] fp32; beta [B, H] bf16; state [B, H, K, V] in state_dtype."""
    q, k = (F.silu(torch.randn(B, H, K, device="cuda")).bfloat16() for _ in range(2))
    v = torch.randn(B, H, V, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(B, H, device="cuda"))
    beta = torch.rand(B, H, device="cuda").bfloat16()
    state = (torch.randn(B, H, K, V, device="cuda") * 0.1).to(state_dtype)
    return q, k, v, g, beta, state


def gdr_inputs(T, H, K, V, requires_grad, B=1, device="cuda", dtype=torch.bfloat16):
    """[q, k, v, g, beta] of the gated delta rule (q, k [B, T, H, K]; v [B, T, H, V]; g fp32, beta [B, T, H])."""
    q = F.silu(torch.randn(B, T, H, K, device=device)).to(dtype)
    k = F.silu(torch.randn(B, T, H, K, device=device)).to(dtype)
    v = torch.randn(B, T, H, V, device=device).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, H, device=device)) * 0.1
    beta = torch.rand(B, T, H, device=device).to(dtype)
    xs = [q, k, v, g, beta]
    return [x.requires_grad_(requires_grad) for x in xs]


def chunk_impls():
    from jet_nemotron.gated_delta_rule_ref import chunk_gated_delta_rule_ref
    from jet_nemotron.gated_delta_rule_triton import chunk_gated_delta_rule_triton

    impls = {
        "ours": lambda q, k, v, g, b: chunk_gated_delta_rule_triton(q, k, v, g, b, use_qk_l2norm_in_kernel=True),
        "reference": lambda q, k, v, g, b: chunk_gated_delta_rule_ref(q, k, v, g, b, use_qk_l2norm_in_kernel=True),
    }
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        impls["fla"] = lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b, use_qk_l2norm_in_kernel=True)
    except Exception as err:  # noqa: BLE001 - a missing peer is reported, not fatal
        print(f"flash-linear-attention unavailable: {err}")
    return impls


def bench(fn):
    from triton.testing import do_bench

    fn()  # compile and autotune outside the timing
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def error_line(err: Exception) -> str:
    """The error's type, its first line, and the last line of the error at the root of its chain. A Triton
    CompilationError's first line is only where ("at 39:12:", on an H100 on 2026-12-05). Its cause, such as a block
    that is not a power of 2, is its last line, or (Triton 3.6, raised `from` the error inside a nested call, on an
    H100 on 2026-12-05) the last line of its `__cause__`, while its own last line is the caret under the column."""
    root, seen = err, {id(err)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:  # a chain can loop back on itself
        root = root.__cause__
        seen.add(id(root))
    first = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    last = [ln.strip() for ln in str(root).splitlines() if ln.strip() and ln.strip() != "^"]
    if not first:
        return f"{type(err).__name__}: {last[-1][:300] if last else ''}"
    text = first[0] if not last or last[-1] == first[0] else f"{first[0]} ... {last[-1]}"
    return f"{type(err).__name__}: {text[:300]}"


def record(results: list, rec: dict, fn, floor_ms: float) -> None:
    """Time fn into rec (ms, and the fraction of the roofline time floor_ms), or the error that stopped it (a peer
    refusing its backward on Hopper, out of memory), then keep and print rec."""
    try:
        ms = bench(fn)
        rec.update(ms=ms, roofline=floor_ms / ms)
    except Exception as err:  # noqa: BLE001 - reported in the results, not fatal
        rec.update(error=error_line(err))
    results.append(rec)
    print(rec, flush=True)


def timed_call(f, inputs: list, mode: str, wrt: list, dy):
    """What `record` times: f(*inputs) under no_grad ("fwd"), or f(*inputs) and the gradients of `wrt` against dy
    ("fwd+bwd"; of the first output where f returns several)."""
    if mode == "fwd":
        return torch.no_grad()(lambda: f(*inputs))

    def fwd_bwd():
        out = f(*inputs)
        return torch.autograd.grad(out[0] if isinstance(out, tuple) else out, wrt, dy)
    return fwd_bwd


def run_chunk(results, Ts, bw, peak, shapes=tuple(SHAPES)):
    impls = chunk_impls()
    for shape in shapes:
        H, K, V = SHAPES[shape]
        for T in Ts:
            for mode in ("fwd", "fwd+bwd"):
                xs = gdr_inputs(T, H, K, V, mode != "fwd")
                do = torch.randn(1, T, H, V, device="cuda").bfloat16()
                flops, nbytes = gdr_cost(T, H, K, V, mode != "fwd")
                floor_ms = max(flops / peak, nbytes / bw) * 1e3
                for name, f in impls.items():
                    if name == "reference" and T > (4096 if mode == "fwd" else 1024):
                        continue  # the PyTorch loop over chunks: slow and memory hungry beyond this
                    record(results, dict(op="chunk", shape=shape, T=T, H=H, K=K, V=V, mode=mode, impl=name),
                           timed_call(f, xs, mode, xs, do), floor_ms)
                del xs, do
                torch.cuda.empty_cache()


def run_step(results, batches, bw, peak):
    """The one-token decode step: ours with an fp32 and a bf16 state, fla's fused recurrent kernel and the
    reference with an fp32 state (theirs takes no other)."""
    from jet_nemotron.gated_delta_rule_ref import gated_delta_rule_step_ref
    from jet_nemotron.gated_delta_rule_triton import gated_delta_rule_step_triton

    try:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    except Exception:  # noqa: BLE001
        fused_recurrent_gated_delta_rule = None
    H, K, V = SHAPES["2B"]
    for B in batches:
        for state_dtype in (torch.float32, torch.bfloat16):
            q, k, v, g, beta, state = step_inputs(B, H, K, V, state_dtype)
            flops, nbytes = step_cost(B, H, K, V, state.element_size())
            floor_ms = max(flops / peak, nbytes / bw) * 1e3
            ours = "ours" if state_dtype == torch.float32 else "ours (bf16 state)"
            impls = {ours: lambda: gated_delta_rule_step_triton(q, k, v, g, beta, state)}
            if state_dtype == torch.float32:
                impls["reference"] = lambda: gated_delta_rule_step_ref(q, k, v, g, beta, state)
                if fused_recurrent_gated_delta_rule is not None:
                    impls["fla"] = lambda: fused_recurrent_gated_delta_rule(
                        q[:, None], k[:, None], v[:, None], g=g[:, None], beta=beta[:, None], initial_state=state,
                        output_final_state=True, use_qk_l2norm_in_kernel=True)
            for name, f in impls.items():
                rec = dict(op="step", shape="2B", B=B, H=H, K=K, V=V, mode="fwd", impl=name,
                           state_dtype=str(state_dtype).removeprefix("torch."))
                record(results, rec, torch.no_grad()(f), floor_ms)
            del q, k, v, g, beta, state
            torch.cuda.empty_cache()


def step_variants(results, bw, peak):
    """The decode kernel with other state-slice widths and warp counts, per state dtype, at a middling batch and
    at the largest batches of 8K decoding (for `RECURRENT_CONFIG`)."""
    from jet_nemotron.gated_delta_rule_triton_launch import RECURRENT_CONFIG
    from jet_nemotron.gated_delta_rule_triton_recurrent import _recurrent_kernel

    H, K, V = SHAPES["2B"]
    for B in (256, 2048):
        for state_dtype in (torch.float32, torch.bfloat16):
            q, k, v, g, beta, state = step_inputs(B, H, K, V, state_dtype)
            o = torch.empty_like(v)
            flops, nbytes = step_cost(B, H, K, V, state.element_size())
            floor_ms = max(flops / peak, nbytes / bw) * 1e3
            for BV in (16, 32, 64, 128):
                for nw in (1, 2, 4, 8):
                    def fn(BV=BV, nw=nw):
                        _recurrent_kernel[(V // BV, B * H)](q, k, v, g, beta, o, state, state, None, K ** -0.5, 1,
                                                            H=H, K=K, V=V, BK=128, BV=BV, USE_L2=True, HAS_H0=True,
                                                            STORE_HT=True, IS_VARLEN=False, num_warps=nw)
                    rec = dict(op="step_variant", B=B, BV=BV, num_warps=nw, mode="fwd", impl="ours-variant",
                               state_dtype=str(state_dtype).removeprefix("torch."),
                               chosen=RECURRENT_CONFIG[state_dtype] == (BV, nw))
                    record(results, rec, fn, floor_ms)
            del q, k, v, g, beta, state, o
            torch.cuda.empty_cache()


def time_modes(results, rec0: dict, impls, inputs: list, dy, nbytes: dict, bw):
    """Time every (name, f) of `impls` on f(*inputs): forward under no_grad, and forward + the gradients of the inputs
    that require them against dy. nbytes[mode] is what the op must move, for the roofline fraction."""
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    for mode in ("fwd", "fwd+bwd"):
        for name, f in impls:
            record(results, dict(rec0, mode=mode, impl=name), timed_call(f, inputs, mode, wrt, dy),
                   nbytes[mode] / bw * 1e3)


def run_conv(results, Ts, bw):
    from jet_nemotron import dynamic_conv_triton as conv
    from jet_nemotron.dynamic_conv_ref import dynamic_conv_ref

    def ours(fused: bool):
        def f(x, kern):  # the flag is read by the backward, which runs after f returns and before the next impl
            conv.FUSED_BWD = fused
            return conv.dynamic_conv_triton(x, kern)
        return f

    H, K, V = SHAPES["2B"]
    Cch, KW = H * V, 4
    default = conv.FUSED_BWD
    # the backward as two kernels and as one (conv.FUSED_BWD); the reference compiled too: the peer on its best path
    impls = (("ours", ours(False)), ("ours, one-kernel backward", ours(True)), ("reference", dynamic_conv_ref),
             ("reference compiled", torch.compile(dynamic_conv_ref)))
    try:
        for T in Ts:
            x = torch.randn(1, T, Cch, device="cuda").bfloat16().requires_grad_()
            kern = torch.randn(1, T, Cch, KW, device="cuda").bfloat16().requires_grad_()
            nbytes = T * Cch * 2 * (1 + KW + 1)  # x, kernels, y
            time_modes(results, dict(op="conv", shape="2B", T=T, C=Cch), impls, [x, kern], torch.randn_like(x),
                       {"fwd": nbytes, "fwd+bwd": 3 * nbytes}, bw)
    finally:
        conv.FUSED_BWD = default


def run_decode_attention(results, cases, bw):
    """One-token attention of the 2B full-attention layer (12 query heads, 2 KV heads, D 128) over a static-cache
    buffer: the grouped PyTorch path the model takes off CUDA (eager and compiled) vs PyTorch's sdpa with
    enable_gqa, which it takes on CUDA. Bytes = K and V of the valid positions read once (+ q and o)."""
    from jet_nemotron.modeling_jet_nemotron import grouped_product_attention

    Hq, Hkv, D = 12, 2, 128
    grouped = lambda q, k, v, m: grouped_product_attention(q[:, :, None], k, v, m[:, None, None], D**-0.5)  # noqa: E731
    grouped_compiled = torch.compile(grouped, fullgraph=True, dynamic=False)
    for B, L in cases:
        q = torch.randn(B, Hq, D, device="cuda").bfloat16()
        k = torch.randn(B, Hkv, L + 64, D, device="cuda").bfloat16()  # a static cache with room left
        v = torch.randn_like(k)
        mask = torch.zeros(B, L + 64, dtype=torch.bool, device="cuda")
        mask[:, :L] = True
        nbytes = 2 * B * Hkv * L * D * 2 + 2 * B * Hq * D * 2
        impls = {"grouped (eager)": lambda: grouped(q, k, v, mask),
                 "grouped (compiled)": lambda: grouped_compiled(q, k, v, mask),
                 "sdpa enable_gqa": lambda: F.scaled_dot_product_attention(
                     q[:, :, None], k, v, attn_mask=mask[:, None, None], enable_gqa=True)}
        for name, f in impls.items():
            rec = dict(op="decode_attention", shape="2B", B=B, T=L, H=Hq, K=D, V=D, mode="fwd", impl=name)
            record(results, rec, torch.no_grad()(f), nbytes / bw * 1e3)
        del q, k, v, mask
        torch.cuda.empty_cache()


def accuracy(results):
    """bf16 errors of ours and fla against the fp32 reference at T=4096, 2B shape (fwd o and final state)."""
    from jet_nemotron.gated_delta_rule_ref import chunk_gated_delta_rule_ref

    impls = chunk_impls()
    H, K, V = SHAPES["2B"]
    xs = gdr_inputs(4096, H, K, V, False)
    o_r, s_r = chunk_gated_delta_rule_ref(*[x.float() if x.dtype == torch.bfloat16 else x for x in xs],
                                          output_final_state=True)
    for name in ("ours", "fla"):
        if name not in impls:
            continue
        from jet_nemotron import gated_delta_rule_triton as ours
        fn = ours.chunk_gated_delta_rule_triton if name == "ours" else None
        if name == "fla":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fn
        o, s = fn(*xs, output_final_state=True, use_qk_l2norm_in_kernel=True)
        rec = dict(op="accuracy", impl=name, T=4096, shape="2B",
                   o_rel=((o.float() - o_r).norm() / o_r.norm()).item(),
                   state_rel=((s - s_r).norm() / s_r.norm()).item())
        results.append(rec)
        print(rec, flush=True)


def check_safe_trans(out: Path):
    """Backward errors vs the fp32 reference with and without SAFE_TRANS (fla #640: Triton 3.4-3.7.0 on Hopper
    can miscompile a transposed dot result). Writes "1" to out/safe_trans if only the safe variant is right."""
    from jet_nemotron import gated_delta_rule_triton as ours
    from jet_nemotron import gated_delta_rule_triton_launch as launch
    from jet_nemotron.gated_delta_rule_ref import recurrent_gated_delta_rule_ref

    worst = {}
    for safe in (False, True):
        launch.SAFE_TRANS = safe  # the backward reads it at each call
        for (T, H, K, V, dtype) in ((200, 2, 32, 64, torch.float32), (200, 2, 64, 64, torch.float32),
                                    (200, 2, 96, 256, torch.float32), (200, 2, 128, 256, torch.bfloat16)):
            torch.manual_seed(0)
            xs = [x.to(dtype) if x.dtype == torch.bfloat16 else x for x in gdr_inputs(T, H, K, V, False)]
            xs = [x.detach().requires_grad_() for x in xs]
            h0 = (torch.randn(1, H, K, V, device="cuda") * 0.1).requires_grad_()
            outs = []
            for f in (ours.chunk_gated_delta_rule_triton, recurrent_gated_delta_rule_ref):
                o, ht = f(*xs, initial_state=h0, output_final_state=True)
                torch.manual_seed(1)
                do = torch.randn(o.shape, device="cuda")  # not randn_like: the reference's o is a strided view
                outs.append(torch.autograd.grad((o.float() * do).sum() + ht.sum(), xs + [h0]))
            errs = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*outs)]
            print(f"safe_trans={safe} T={T} H={H} K={K} V={V} {dtype}: rel errs dq dk dv dg dbeta dh0 =",
                  " ".join(f"{e:.1e}" for e in errs), flush=True)
            worst[safe] = max(worst.get(safe, 0.0), max(errs))
    need = worst[False] > 5e-2 and worst[True] < 5e-2
    (out / "safe_trans").write_text("1" if need else "0")
    print(f"worst backward error: plain {worst[False]:.1e}, safe {worst[True]:.1e} -> SAFE_TRANS={int(need)}")


def table(results):
    """Print ours vs fla (ratio = fla time / our time, > 1 means we are faster) and vs the reference."""
    by = {}
    for r in results:
        if "ms" in r:
            tb = f"{r['B']}x{r['T']}" if r["op"] == "decode_attention" else r.get("T", r.get("B"))
            key = (r["op"], r.get("shape"), tb, r["mode"])
            by.setdefault(key, {})[r["impl"]] = r
    print(f"\n{'op':6} {'shape':5} {'T/B':>6} {'mode':8} {'ours ms (roof)':>16} {'fla ms (roof)':>16} "
          f"{'fla/ours':>8} {'ref/ours':>8} {'compiled ref/ours':>17}")
    for key in sorted(by, key=lambda k: (k[0], k[1] or "", k[3], k[2])):
        d = by[key]
        if "ours" not in d or key[0] == "decode_attention":  # its own table below: no fla or reference there
            continue
        o = d["ours"]
        cell = lambda r: f"{r['ms']:9.3f} ({r['roofline'] * 100:3.0f}%)" if r else f"{'-':>16}"  # noqa: E731
        # the peer in PyTorch: our reference, or the eager expression a kernel replaces (swiglu, rope)
        fla, ref = d.get("fla"), d.get("reference", d.get("eager"))
        cref = d.get("reference compiled", d.get("eager compiled"))
        print(f"{key[0]:6} {str(key[1] or '-'):5} {key[2]:>6} {key[3]:8} {cell(o):>16} {cell(fla):>16} "
              f"{(fla['ms'] / o['ms']) if fla else float('nan'):8.2f} "
              f"{(ref['ms'] / o['ms']) if ref else float('nan'):8.2f} "
              f"{(cref['ms'] / o['ms']) if cref else float('nan'):17.2f}")
    print(f"\n{'decode attention BxL':>20} {'sdpa gqa ms (roof)':>19} {'grouped compiled ms (roof)':>27} "
          f"{'grouped/sdpa':>12}")
    for key in sorted(k for k in by if k[0] == "decode_attention"):
        d = by[key]
        cell = lambda r: f"{r['ms']:9.3f} ({r['roofline'] * 100:3.0f}%)" if r else "-"  # noqa: E731
        s, g = d.get("sdpa enable_gqa"), d.get("grouped (compiled)")
        print(f"{key[2]:>20} {cell(s):>19} {cell(g):>27} {(g['ms'] / s['ms']) if s and g else float('nan'):12.2f}")
    steps = sorted(k for k in by if k[0] == "step" and "ours (bf16 state)" in by[k])
    if steps:
        print(f"\n{'decode step B':>13} {'fp32 state ms (roof)':>21} {'bf16 state ms (roof)':>21} {'fp32/bf16':>9}")
    for key in steps:
        d = by[key]
        o, b = d.get("ours"), d["ours (bf16 state)"]
        print(f"{key[2]:>13} {cell(o) if o else '-':>21} {cell(b):>21} "
              f"{(o['ms'] / b['ms']) if o else float('nan'):9.2f}")
    best = {}
    for r in results:
        if r["op"] == "step_variant" and "ms" in r:
            k = (r["B"], r["state_dtype"])
            best[k] = min(best.get(k, r), r, key=lambda x: x["ms"])
    for (B, sd), r in sorted(best.items()):
        chosen = next((c for c in results if c["op"] == "step_variant" and c["B"] == B and c["state_dtype"] == sd
                       and c.get("chosen") and "ms" in c), None)
        print(f"step variants B={B} {sd} state: fastest BV {r['BV']} x {r['num_warps']} warps {r['ms']:.3f} ms "
              f"({r['roofline'] * 100:.0f}%); chosen " + (f"{chosen['ms']:.3f} ms ({chosen['roofline'] * 100:.0f}%)"
                                                           if chosen else "-"))
    for key in sorted(k for k in by if k[0].startswith("in_place") and {"in place", "copy first"} <= set(by[k])):
        i, c = by[key]["in place"], by[key]["copy first"]
        print(f"{key[0]:14} rows {key[2]:>6} {key[3]:8} in place {i['ms']:.3f} ms ({i['roofline']:.0%}), copy first "
              f"{c['ms']:.3f} ms ({c['roofline']:.0%}): {c['ms'] / i['ms']:.2f}x")
    for r in results:
        if "error" in r:
            print("error:", r["op"], r.get("shape"), r.get("T", r.get("B")), r["mode"], r["impl"], r["error"])


def plot(path_json: Path, path_png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path_json.read_text())
    res = data["results"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, mode in zip(axes[:2], ("fwd", "fwd+bwd")):
        for shape, ls in (("2B", "-"), ("4B", "--")):
            for impl, color in (("ours", "C0"), ("fla", "C1"), ("reference", "C2")):
                pts = sorted((r["T"], r["ms"]) for r in res
                             if r["op"] == "chunk" and r["mode"] == mode and r["shape"] == shape
                             and r["impl"] == impl and "ms" in r)
                if pts:
                    ax.plot(*zip(*pts), ls, color=color, marker="o", label=f"{impl} {shape}")
        ax.set(xscale="log", yscale="log", xlabel="T (tokens, B=1)", ylabel="ms (median)",
               title=f"chunked gated delta rule, {mode}, bf16")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    for impl, color in (("ours", "C0"), ("ours (bf16 state)", "C3"), ("fla", "C1"), ("reference", "C2")):
        pts = sorted((r["B"], r["ms"] * 1e3) for r in res if r["op"] == "step" and r["impl"] == impl and "ms" in r)
        if pts:
            ax.plot(*zip(*pts), color=color, marker="o", label=impl)
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="us (median)", title="decode step, 2B shape")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("; ".join(sorted({f"{s['card']} ({', '.join(s['parts'])}, {s['commit'][:7]})"
                                   for s in data["stamp"]})), fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


def run_norm(results, Ts, bw):
    """The JetBlock output norm (2B: T x 12 heads rows of dv 256): ours vs the PyTorch reference, eager and compiled."""
    from jet_nemotron.gated_rmsnorm_ref import gated_rmsnorm_ref
    from jet_nemotron.gated_rmsnorm_triton import gated_rmsnorm_triton

    H, _, V = SHAPES["2B"]
    w = torch.ones(V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    impls = (("ours", gated_rmsnorm_triton), ("reference", gated_rmsnorm_ref),
             ("reference compiled", torch.compile(gated_rmsnorm_ref)))
    for T in Ts:
        x = torch.randn(1, T, H, V, device="cuda").bfloat16().requires_grad_()
        gate = torch.randn_like(x).requires_grad_()
        # forward reads x, gate and writes y; the backward reads x, gate, dy and writes dx, dgate
        n = x.numel() * 2
        time_modes(results, dict(op="norm", shape="2B", T=T), impls, [x, gate, w, 1e-6], torch.randn_like(x),
                   {"fwd": 3 * n, "fwd+bwd": 8 * n}, bw)


def run_swiglu(results, rows_list, bw):
    """The MLP's silu(gate) * up in training (1.5B: I = 8,960, gate and up the halves of one product): ours vs the
    eager expression, and vs that expression compiled."""
    from jet_nemotron.swiglu_triton import swiglu_triton

    def eager(gate, up):
        return torch.nn.functional.silu(gate) * up

    I = 8960
    impls = (("ours", swiglu_triton), ("eager", eager), ("eager compiled", torch.compile(eager)))
    for rows in rows_list:
        gate_up = torch.randn(rows, 2 * I, device="cuda").bfloat16().requires_grad_()
        gate, up = gate_up.split(I, dim=-1)
        # forward reads gate, up and writes y; the backward reads gate, up, dy and writes dgate, dup
        n = rows * I * 2
        time_modes(results, dict(op="swiglu", shape="1.5B MLP", T=rows), impls, [gate, up],
                   torch.randn(rows, I, device="cuda").bfloat16(), {"fwd": 3 * n, "fwd+bwd": 8 * n}, bw)


def run_rmsnorm(results, rows_list, bw):
    """The decoder's RMSNorm in training (1.5B: D = 1,536 over the fp32 residual stream, an fp32 weight): ours vs
    the PyTorch reference (Qwen2's arithmetic), eager and compiled."""
    from jet_nemotron.rmsnorm_ref import rmsnorm_ref
    from jet_nemotron.rmsnorm_triton import rmsnorm_triton

    D = 1536
    w = torch.ones(D, device="cuda", requires_grad=True)
    impls = (("ours", rmsnorm_triton), ("reference", rmsnorm_ref), ("reference compiled", torch.compile(rmsnorm_ref)))
    for rows in rows_list:
        x = torch.randn(rows, D, device="cuda", requires_grad=True)
        # forward reads x and writes y; the backward reads x, dy and writes dx (fp32, 4 bytes each)
        n = x.numel() * 4
        time_modes(results, dict(op="rmsnorm", shape="1.5B", T=rows), impls, [x, w, 1e-6], torch.randn_like(x),
                   {"fwd": 2 * n, "fwd+bwd": 5 * n}, bw)


def run_rope(results, rows_list, bw):
    """The frozen teacher's rotary embedding of q and k (1.5B: 12 query and 2 key heads of 128, the transposed head
    views of the projections), forward only: ours vs Qwen2's `apply_rotary_pos_emb`, eager and compiled."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    from jet_nemotron.rope_triton import rope_triton

    Hq, Hk, D = 12, 2, 128
    impls = (("ours", rope_triton), ("eager", apply_rotary_pos_emb),
             ("eager compiled", torch.compile(apply_rotary_pos_emb)))
    for rows in rows_list:  # rows = batch x 2,048 positions
        B, L = rows // 2048, 2048
        q = torch.randn(B, L, Hq * D, device="cuda").bfloat16().view(B, L, Hq, D).transpose(1, 2)
        k = torch.randn(B, L, Hk * D, device="cuda").bfloat16().view(B, L, Hk, D).transpose(1, 2)
        # one [1, L, D] table for the batch, as transformers' default position ids give the teacher
        cos, sin = (torch.randn(1, L, D, device="cuda").bfloat16() for _ in range(2))
        n = (q.numel() + k.numel()) * 2 * 2 + 2 * L * D * 2  # q, k read and written; cos, sin read once
        for name, f in impls:
            record(results, dict(op="rope", shape="1.5B teacher", T=rows, mode="fwd", impl=name),
                   timed_call(f, [q, k, cos, sin], "fwd", [], None), n / bw * 1e3)


def run_in_place(results, rows_list, bw):
    """A JetBlock's v and gate as training hands them over (column slices of its one product, [rows, 8,856] for the
    2B shape) to the dynamic convolution and the gated norm: read where they lie (the kernels since 2026-12-07) vs a
    contiguous copy first (what the kernels did before), both on our kernels, in one process."""
    from jet_nemotron.dynamic_conv_triton import dynamic_conv_triton
    from jet_nemotron.gated_rmsnorm_triton import gated_rmsnorm_triton

    H, K, V = SHAPES["2B"]
    width, KW = 2 * H * K + 2 * H * V + 2 * H + 384, 4  # q, k, v, gate, a, b and the kernel generator's w1
    conv_impls = (("in place", dynamic_conv_triton),
                  ("copy first", lambda x, k: dynamic_conv_triton(x.contiguous(), k)))
    norm_impls = (("in place", gated_rmsnorm_triton),
                  ("copy first", lambda x, g, w, eps: gated_rmsnorm_triton(x, g.contiguous(), w, eps)))
    for rows in rows_list:  # rows = batch x 2,048 positions
        B, T = rows // 2048, 2048
        product = torch.randn(B, T, width, device="cuda").bfloat16().requires_grad_()
        v = product[..., 2 * H * K:2 * H * K + H * V]
        gate = product[..., 2 * H * K + H * V:2 * H * K + 2 * H * V].view(B, T, H, V)
        kern = torch.randn(B, T, H * V, KW, device="cuda").bfloat16().requires_grad_()
        n = v.numel() * 2
        conv_bytes = n * (1 + KW + 1)  # x, kernels, y
        time_modes(results, dict(op="in_place_conv", shape="2B", T=rows), conv_impls, [v, kern],
                   torch.randn(B, T, H * V, device="cuda").bfloat16(), {"fwd": conv_bytes, "fwd+bwd": 3 * conv_bytes},
                   bw)
        x = torch.randn(B, T, H, V, device="cuda").bfloat16().requires_grad_()
        w = torch.ones(V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        time_modes(results, dict(op="in_place_norm", shape="2B", T=rows), norm_impls, [x, gate, w, 1e-6],
                   torch.randn_like(x), {"fwd": 3 * n, "fwd+bwd": 8 * n}, bw)


# the ops each part records, so that a merged run replaces exactly the rows it re-measured
PART_OPS = {"decode_attention": ("decode_attention",), "accuracy": ("accuracy",), "step": ("step",),
            "step_variants": ("step_variant",), "chunk": ("chunk",), "conv": ("conv",), "norm": ("norm",),
            "swiglu": ("swiglu",), "rmsnorm": ("rmsnorm",), "rope": ("rope",),
            "in_place": ("in_place_conv", "in_place_norm")}


def merge_runs(current: dict, new: dict) -> dict:
    """`current` with the parts of `new` (one run) replaced by new's rows; every row names its run in "stamp"."""
    (run,) = new["stamp"]
    ops = {op for part in run["parts"] for op in PART_OPS[part]}
    rows = [r for r in current["results"] if r["op"] not in ops]
    kept = {r["run"] for r in rows}
    stamps = [dict(s, parts=[p for p in s["parts"] if p not in run["parts"]]) for s in current["stamp"]
              if s["run"] in kept]
    run = dict(run, run=max([s["run"] for s in current["stamp"]], default=-1) + 1)
    rows += [dict(r, run=run["run"]) for r in new["results"]]
    return {"stamp": stamps + [run], "results": rows}


PARTS = ("decode_attention", "accuracy", "step", "step_variants", "chunk", "conv", "norm", "swiglu", "rmsnorm",
         "rope", "in_place")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--quick", action="store_true", help="fewer sizes (smoke run)")
    ap.add_argument("--plot", default=None, help="only draw the PNG of this JSON")
    ap.add_argument("--merge", type=Path, help="only merge this run's JSON into --into (its parts replace those rows)")
    ap.add_argument("--into", type=Path, default=Path(__file__).resolve().parent / "results" / "kernels.json")
    ap.add_argument("--check-safe-trans", action="store_true", help="only compare the backward variants")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    ap.add_argument("--T", nargs="+", type=int, help="sequence lengths of the chunk part (default 1K 4K 16K 64K)")
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="JetBlock shapes of the chunk part")
    args = ap.parse_args()
    if args.plot:
        p = Path(args.plot)
        plot(p, p.with_suffix(".png"))
        return
    if args.merge:
        current = json.loads(args.into.read_text()) if args.into.exists() else {"stamp": [], "results": []}
        merged = merge_runs(current, json.loads(args.merge.read_text()))
        tmp = args.into.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=1))
        tmp.rename(args.into)
        plot(args.into, args.into.with_suffix(".png"))
        print(f"merged {args.merge} into {args.into}: runs {[s['run'] for s in merged['stamp']]}")
        return
    if args.check_safe_trans:
        check_safe_trans(Path(args.out))
        return
    import triton

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    bw, peak = ceilings()
    print(f"{device}: copy {bw / 1e12:.2f} TB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    results = []
    Ts = args.T or ([1024, 4096] if args.quick else [1024, 4096, 16384, 65536])
    run_stamp = stamp(run=0, parts=list(args.only or PARTS), torch=torch.__version__, triton=triton.__version__,
                      python=platform.python_version(), copy_bytes_per_s=bw, bf16_flops_per_s=peak)
    try:
        import fla

        run_stamp["fla"] = getattr(fla, "__version__", "?")
    except Exception:  # noqa: BLE001
        pass
    meta = dict(stamp=[run_stamp], results=results)
    path = out / "kernels.json"
    da_cases = [(1, 8192), (64, 8192)] if args.quick else [(1, 8192), (1, 65536), (64, 8192), (256, 65536)]
    parts = {"decode_attention": lambda: run_decode_attention(results, da_cases, bw),
             "accuracy": lambda: accuracy(results), "step": lambda: run_step(results, [1, 16, 64, 256, 2048], bw, peak),
             "step_variants": lambda: step_variants(results, bw, peak),
             "chunk": lambda: run_chunk(results, Ts, bw, peak, args.shapes or tuple(SHAPES)), "conv": lambda: run_conv(results, [4096, 16384], bw),
             "norm": lambda: run_norm(results, [4096, 65536], bw),
             "swiglu": lambda: run_swiglu(results, [2048, 16384], bw),
             "rmsnorm": lambda: run_rmsnorm(results, [2048, 16384], bw),
             "rope": lambda: run_rope(results, [16384], bw),
             "in_place": lambda: run_in_place(results, [8192, 16384], bw)}
    for name in args.only or PARTS:
        try:
            parts[name]()
        except Exception:  # noqa: BLE001 - keep what was measured
            traceback.print_exc()
        for r in results:
            r["run"] = 0
        path.write_text(json.dumps(meta, indent=1))  # after every part: a cut-off run keeps what it measured
    table(results)
    try:
        plot(path, out / "kernels.png")
    except Exception as err:  # noqa: BLE001 - matplotlib may be missing on the GPU machine
        print(f"no plot: {err}")


if __name__ == "__main__":
    main()
