"""Launch configurations of the gated delta rule's per-chunk backward kernel (`_bwd_chunk_kernel`), timed side by
side in one process on one card at a training shape, each checked against the current default's gradients.

That kernel runs one program per chunk and head, holds the chunk's [BT, BK] and [BT, BT] fp32 accumulators and walks
V in BV slices. It is a training step's largest JetBlock kernel: 1.75 ms a call at 8 x 2,048 tokens in the H200
profile of an attention-transfer step, 24 calls a micro-step. Besides the launch, one switch of the kernel is
swept, sum_sds (`launch.CHUNK_BWD`); the H100 sweeps of 2026-12-05 are `results/chunk_bwd_sweep_h100.json` and
`results/chunk_bwd_sweep_split_h100.json` (a switch since removed). The state passes were swept this way
(`results/state_pass_sweep_h100.json`); `launch.CHUNK_BWD` holds the choice, read at each call.

What is timed is the whole chunked backward (`chunk_bwd`, from the forward's saved G and Ai, as autograd runs it),
so a config's gain is the backward's, in ms. A config whose gradients leave the default's by more than the bound
(a Hopper miscompile, as the transposes once were) is marked, not ranked. One that does not compile or fit is
recorded with its error. `launch_pipelined` may take fewer stages than asked where the buffers do not fit.

    python benchmarks/chunk_bwd_sweep.py --out DIR        # GPU: the 2B JetBlock, 8 x 2,048 tokens, bf16
    TRITON_INTERPRET=1 python benchmarks/chunk_bwd_sweep.py --toy --out DIR   # CPU: small fp32 shapes, checks only
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: jet_nemotron
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: stamp
from kernel_speed import bench, error_line, gdr_cost, gdr_inputs  # noqa: E402
from stamp import stamp  # noqa: E402

# bf16 outputs of two configs differ where the V slices are summed in another order: a few bf16 steps at most
BOUND = {torch.bfloat16: 2e-2, torch.float32: 1e-5}


def gradients_of(B: int, T: int, H: int, K: int, V: int, dtype: torch.dtype, device: str,
                 seed: int = 0) -> Callable[[], tuple]:
    """A callable that runs the chunked backward once on fixed inputs (q, k [B, T, H, K]; v, do [B, T, H, V]; g,
    beta [B, T, H]) from the forward's saved G and Ai, returning (dq, dk, dv, dg, dbeta, dh0)."""
    from jet_nemotron.gated_delta_rule_triton_chunk_bwd import chunk_bwd
    from jet_nemotron.gated_delta_rule_triton_chunk_fwd import chunk_fwd
    from jet_nemotron.gated_delta_rule_triton_launch import prep_inputs

    torch.manual_seed(seed)
    q, k, v, g, beta = gdr_inputs(T, H, K, V, False, B, device, dtype)
    do = torch.randn_like(v)
    q, k, v, g, beta, scale, h0, meta = prep_inputs(q, k, v, g, beta, None, None, None)
    _, _, G, Ai, _ = chunk_fwd(q, k, v, g, beta, scale, h0, False, meta, True)
    return lambda: chunk_bwd(q, k, v, g, beta, scale, h0, do, None, meta, True, G, Ai)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def sweep(run: Callable[[], tuple], configs: list[dict], key: str, bound: float,
          timer: Callable[[Callable], float] | None, on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Each config of `configs` ({BV, num_warps, stages, sum_sds}) set as `launch.CHUNK_BWD[key]`, run,
    checked against the default's outputs (the largest relative error over the gradients; `ok` within `bound`) and,
    with a timer, timed in ms; `on_row(rows so far)` after each (a cut sweep keeps what it measured). The default is
    restored afterwards, whatever happened."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    default = dict(launch.CHUNK_BWD[key])
    reference = [t.clone() for t in run() if t is not None]
    rows = []
    try:
        for cfg in configs:
            launch.CHUNK_BWD[key] = dict(cfg)
            row = dict(cfg, default=cfg == default)
            try:
                out = [t for t in run() if t is not None]
                row["max_rel_err"] = max(_rel(a, b) for a, b in zip(out, reference))
                row["ok"] = row["max_rel_err"] <= bound
                if timer is not None and row["ok"]:
                    row["ms"] = timer(run)
            except Exception as err:  # noqa: BLE001 - a config that does not compile or fit is a result
                row["error"] = error_line(err)
            rows.append(row)
            print(row, flush=True)
            if on_row is not None:
                on_row(rows)
    finally:
        launch.CHUNK_BWD[key] = default
    return rows


def grid(bvs, warps, stages, sum_sds=(False,)) -> list[dict]:
    return [dict(BV=b, num_warps=w, stages=s, sum_sds=r)
            for b, w, s, r in itertools.product(bvs, warps, stages, sum_sds)]


def backward_flops(B: int, T: int, H: int, K: int, V: int) -> float:
    """Matrix FLOPs of the chunked backward of B sequences: twice the forward's (`kernel_speed.gdr_cost`, which counts
    forward and backward as three forwards)."""
    return 2.0 * B * gdr_cost(T, H, K, V, False)[0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--shape", default="12,96,256", help="H,K,V of the JetBlock (the 2B's: 12 heads, dk 96, dv 256)")
    ap.add_argument("--bv", default="32,64,128")
    ap.add_argument("--sum-sds", default="0,1",
                    help="the kernel's SUM_SDS: 0 (S * dS held as a [BK, BV] tile), 1 (reduced slice by slice)")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--toy", action="store_true", help="CPU interpreter: fp32, tiny shapes, no timing")
    args = ap.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    H, K, V = ints(args.shape)
    if args.toy:
        B, T, H, K, V, dtype, device, timer = 1, 70, 2, 32, 64, torch.float32, "cpu", None
    else:
        if not torch.cuda.is_available():
            raise SystemExit("the sweep times a CUDA kernel: run it on a GPU, or --toy on the CPU interpreter")
        B, T, dtype, device, timer = args.batch, args.seq_len, torch.bfloat16, "cuda", bench
    key = "fp32" if dtype == torch.float32 else "16-bit"
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    default = dict(launch.CHUNK_BWD[key])
    configs = grid(ints(args.bv), ints(args.warps), ints(args.stages), [bool(x) for x in ints(args.sum_sds)])
    configs = [default] + [c for c in configs if c != default]  # the default first: every ratio's baseline
    args.out.mkdir(parents=True, exist_ok=True)
    head = {"stamp": [stamp(script="benchmarks/chunk_bwd_sweep.py")],
            "shape": dict(B=B, T=T, H=H, K=K, V=V, dtype=str(dtype).replace("torch.", "")), "default": default}

    from convert.throughput import peak_flops

    peak, peak_note = peak_flops(device, True)
    flops = backward_flops(B, T, H, K, V)
    head["roofline"] = f"fraction of {peak_note}, {flops / 1e9:.1f} GFLOP of products a backward"

    def write(rows: list[dict]) -> dict:
        for r in rows:
            if "ms" in r and peak:
                r["roofline"] = flops / (r["ms"] * 1e-3) / peak
        timed = sorted((r for r in rows if "ms" in r), key=lambda r: r["ms"])
        base = next((r["ms"] for r in rows if r["default"] and "ms" in r), None)
        res = head | {"configs": rows, "complete": len(rows) == len(configs), "fastest": timed[0] if timed else None,
                      "default_ms_over_fastest": base / timed[0]["ms"] if timed and base else None}
        path = args.out / "chunk_bwd_sweep.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(path)
        return res

    rows = sweep(gradients_of(B, T, H, K, V, dtype, device), configs, key, BOUND[dtype], timer, write)
    res = write(rows)
    if res["fastest"] is not None:
        f = res["fastest"]
        share = f" ({100 * f['roofline']:.1f}% of the bf16 peak)" if "roofline" in f else ""
        print(f"fastest: BV {f['BV']}, {f['num_warps']} warps, {f['stages']} stages, sum_sds {f['sum_sds']}, "
              f"{f['ms']:.3f} ms{share}")
        if res["default_ms_over_fastest"] is not None:
            print(f"the default takes {res['default_ms_over_fastest']:.2f}x the fastest's time")
    bad = [r for r in rows if r.get("ok") is False]
    if bad:
        print(f"{len(bad)} configs gave other gradients than the default: {bad}")
    return res


if __name__ == "__main__":
    main()
