"""The chunked gated delta rule's forward and backward timed under each setting of the kernels' launch switches
(`gated_delta_rule_triton_launch`: a dict entry such as `STATE_PASS_BWD.normed` or `FWD_O.loop_v`), side by side in
one process on one card, in interleaved rounds so a card that warms or throttles moves every setting alike.

A switch is named DICT.KEY; each is timed off and on with the others at their defaults, then all on together. The
gradients of every setting are compared with the defaults' (the largest relative error over o and the gradients).

    python benchmarks/chunk_switch_speed.py --switch STATE_PASS_BWD.normed --switch FWD_O.loop_v --out DIR
    TRITON_INTERPRET=1 python benchmarks/chunk_switch_speed.py --toy --switch FWD_O.loop_v --out DIR   # CPU check

Writes DIR/chunk_switch_speed.json (stamped) and prints ms and the ratio to the defaults per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: jet_nemotron
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: stamp, kernel_speed
from kernel_speed import bench, gdr_cost, gdr_inputs  # noqa: E402
from stamp import stamp  # noqa: E402


def settings(switches: list[str]) -> list[dict[str, bool]]:
    """The defaults ({}), each switch flipped alone, and (with more than one) all flipped together."""
    out = [{}] + [{s: True} for s in switches]
    return out + ([{s: True for s in switches}] if len(switches) > 1 else [])


def apply(setting: dict[str, bool], switches: list[str]) -> None:
    """Set every switch in `switches` to False, then those in `setting` to their value."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    for name in switches:
        table, key = name.split(".")
        getattr(launch, table)[key] = bool(setting.get(name, False))


def step_fn(B: int, T: int, H: int, K: int, V: int, dtype: torch.dtype, device: str):
    """(forward, forward + backward) callables on fixed inputs: q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H];
    the second returns (o, dq, dk, dv, dg, dbeta)."""
    from jet_nemotron.gated_delta_rule_triton import chunk_gated_delta_rule_triton

    torch.manual_seed(0)
    xs = [x.requires_grad_() for x in gdr_inputs(T, H, K, V, False, B, device, dtype)]
    do = torch.randn(B, T, H, V, device=device, dtype=dtype)

    def fwd():
        with torch.no_grad():
            return chunk_gated_delta_rule_triton(*xs)[0]

    def both():
        o = chunk_gated_delta_rule_triton(*xs)[0]
        return (o.detach(), *torch.autograd.grad(o, xs, do))

    return fwd, both


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--switch", action="append", required=True, help="DICT.KEY of gated_delta_rule_triton_launch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--shape", default="12,96,256", help="H,K,V (the 2B JetBlock's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--toy", action="store_true", help="CPU interpreter: fp32, tiny shapes, no timing")
    args = ap.parse_args(argv)
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    for name in args.switch:
        table, _, key = name.partition(".")
        if not isinstance(getattr(launch, table, None), dict) or key not in getattr(launch, table):
            raise SystemExit(f"--switch {name}: no such entry in gated_delta_rule_triton_launch")
    H, K, V = (int(x) for x in args.shape.split(","))
    if args.toy:
        B, T, H, K, V, dtype, device = 1, 150, 2, 48, 80, torch.float32, "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("this times CUDA kernels: run it on a GPU, or --toy on the CPU interpreter")
        B, T, dtype, device = args.batch, args.seq_len, torch.bfloat16, "cuda"
    saved = {n: getattr(launch, n.split(".")[0])[n.split(".")[1]] for n in args.switch}
    fwd, both = step_fn(B, T, H, K, V, dtype, device)
    rows = [{"setting": s, "fwd_ms": [], "fwd_bwd_ms": []} for s in settings(args.switch)]
    try:
        apply({}, args.switch)
        reference = both()
        for r in rows:
            apply(r["setting"], args.switch)
            r["max_rel_err"] = max(_rel(a, b) for a, b in zip(both(), reference))
        for _ in range(0 if args.toy else args.rounds):
            for r in rows:
                apply(r["setting"], args.switch)
                r["fwd_ms"].append(bench(fwd))
                r["fwd_bwd_ms"].append(bench(both))
    finally:
        for name, value in saved.items():
            getattr(launch, name.split(".")[0])[name.split(".")[1]] = value
    flops = B * gdr_cost(T, H, K, V, True)[0]  # forward + backward, counted as three forwards
    from convert.throughput import peak_flops

    peak, note = peak_flops(device, True)
    base = rows[0]
    for r in rows:
        for key in ("fwd_ms", "fwd_bwd_ms"):
            r[key.replace("_ms", "_median_ms")] = sorted(r[key])[len(r[key]) // 2] if r[key] else None
        if r["fwd_bwd_median_ms"] and base["fwd_bwd_median_ms"]:
            r["fwd_bwd_speedup"] = base["fwd_bwd_median_ms"] / r["fwd_bwd_median_ms"]
            r["fwd_speedup"] = base["fwd_median_ms"] / r["fwd_median_ms"]
            r["roofline"] = flops / (r["fwd_bwd_median_ms"] * 1e-3) / peak if peak else None
        print(r, flush=True)
    res = {"stamp": [stamp(script="benchmarks/chunk_switch_speed.py")],
           "shape": dict(B=B, T=T, H=H, K=K, V=V, dtype=str(dtype).replace("torch.", "")),
           "roofline": f"fraction of {note}, {flops / 1e9:.1f} GFLOP of products a forward and backward",
           "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "chunk_switch_speed.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)
    return res


if __name__ == "__main__":
    main()
