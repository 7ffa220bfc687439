"""Registers, spilled stack and shared memory of each JetBlock kernel, built for a Hopper card on a machine without
one.

Triton compiles ahead of time for any target it ships a backend for: this builds the chunked gated-delta-rule kernels
at the 2B JetBlock's shapes and their training launch (bf16, dk 96 padded to 128, dv 256) for sm_90 and reads the
cubin's resource use with the `cuobjdump` that the Triton wheel carries. A stack frame on a GPU kernel is spilled
registers, which each thread writes to and reads back from local memory: a proxy, not a timing, to choose which
rewrite a card should time (`kernel_ab.py`). Use the Triton release the card runs (`pip install --target DIR
triton==3.6.0` and `PYTHONPATH=DIR`): each release allocates registers differently.

    python benchmarks/kernel_registers.py [--only chunk dh] [--out DIR]     # a table; DIR/kernel_registers.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_speed import SHAPES  # noqa: E402
from stamp import stamp  # noqa: E402

BF, F32, I32 = "*bf16", "*fp32", "i32"
DENSE = dict(cu_seqlens=None, chunk_indices=None, chunk_offsets=None)  # not packed: the chunk tables are unused


def kernels() -> dict[str, tuple]:
    """name -> (kernel, pointer and scalar types, constexprs, num_warps, num_stages), as `chunk_fwd` / `chunk_bwd`
    launch them for bf16 training (the launch configs of `gated_delta_rule_triton_launch`; 3 stages where the launch
    leaves Triton's default)."""
    from jet_nemotron import gated_delta_rule_triton_chunk_bwd as bwd
    from jet_nemotron import gated_delta_rule_triton_chunk_fwd as fwd
    from jet_nemotron import gated_delta_rule_triton_launch as launch
    from jet_nemotron.gated_delta_rule_triton_launch import (CHUNK_BV, CHUNK_BWD, STATE_PASS_BWD, STATE_PASS_FWD,
                                                            pow2_block)
    from jet_nemotron.gated_delta_rule_triton_tiles import BT

    # a tree from before CHUNK_WARPS (PYTHONPATH=<tree>, to read an older commit's kernels) launched them with 4
    warps = getattr(launch, "CHUNK_WARPS", dict(prepare=4, wu=4, fwd_o=4, dv_local=4))

    _, K, V = SHAPES["2B"]  # the 2B JetBlock: dk 96, in a block of pow2_block(96) = 128
    shape = dict(K=K, V=V, BT=BT, BK=pow2_block(K))
    chunk = dict(shape, IS_VARLEN=False, PREC="tf32", **DENSE)
    state = dict(shape, IS_VARLEN=False, PREC="tf32", cu_seqlens=None, chunk_offsets=None)
    cfg = CHUNK_BWD["16-bit"]
    return {
        "prepare": (fwd._prepare_kernel, dict(k=BF, beta=BF, g=F32, G=F32, Ai=BF, T=I32, NT=I32, H=I32),
                    dict(K=K, BK=shape["BK"], USE_L2=True, IS_VARLEN=False, PREC="tf32", **DENSE), warps["prepare"], 3),
        "wu": (fwd._wu_kernel, dict(k=BF, v=BF, beta=BF, G=F32, Ai=BF, w=BF, u=BF, kn=BF, T=I32, NT=I32, H=I32),
               dict(chunk, BV=CHUNK_BV, USE_L2=True), warps["wu"], 3),
        "fwd_h": (fwd._fwd_h_kernel, dict(k=BF, w=BF, u=BF, G=F32, h=BF, v_new=BF, h0=F32, ht=F32, T=I32, H=I32),
                  dict(state, BV=STATE_PASS_FWD["BV"], HAS_H0=False, STORE_HT=False, h0=None, ht=None),
                  STATE_PASS_FWD["num_warps"], STATE_PASS_FWD["stages"]),
        "fwd_o": (fwd._fwd_o_kernel, dict(q=BF, k=BF, v_new=BF, h=BF, G=F32, o=BF, scale="fp32", T=I32, NT=I32, H=I32),
                  dict(chunk, BV=CHUNK_BV, USE_L2=True), warps["fwd_o"], 3),
        "dv_local": (bwd._bwd_dv_local_kernel, dict(q=BF, k=BF, G=F32, do=BF, dv=BF, scale="fp32", T=I32, NT=I32,
                                                    H=I32), dict(chunk, BV=CHUNK_BV, USE_L2=True),
                     warps["dv_local"], 3),
        "dh": (bwd._bwd_dh_kernel, dict(q=BF, k=BF, w=BF, G=F32, do=BF, dv_local=BF, dv2=BF, dh=BF, dht=F32, dh0=F32,
                                        scale="fp32", T=I32, H=I32),
               dict(state, BV=STATE_PASS_BWD["BV"], USE_L2=True, HAS_DHT=False, STORE_DH0=False, dht=None, dh0=None),
               STATE_PASS_BWD["num_warps"], STATE_PASS_BWD["stages"]),
        "chunk": (bwd._bwd_chunk_kernel, dict(q=BF, k=BF, v=BF, beta=BF, G=F32, Ai=BF, h=BF, dh=BF, v_new=BF, do=BF,
                                              dv2=BF, dq=BF, dk=BF, dv=BF, dbeta=BF, dg=F32, scratch=F32, scale="fp32",
                                              T=I32, NT=I32, H=I32),
                  dict(chunk, BV=cfg["BV"], USE_L2=True, SAFE_TRANS=False, DOT_BF16=True, SUM_SDS=cfg["sum_sds"],
                       scratch=None), cfg["num_warps"], cfg["stages"]),
    }


def resource_usage(cubin: bytes) -> dict[str, int]:
    """{"registers", "stack"} (a thread's registers and its stack frame in bytes) of a cubin's one function, from
    `cuobjdump -res-usage`."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump -res-usage gave no REG / STACK line:\n{text}")
    return dict(zip(("registers", "stack"), map(int, found.groups())))


def build_for(kernel, signature: dict, consts: dict, options: dict, arch: int = 90) -> dict:
    """Compile `kernel` for sm_`arch` with this signature (a type or "constexpr" by argument), constexpr values and
    launch options (num_warps, num_stages, ...): its resource use, with the shared memory a block takes (bytes;
    Triton's own count, the pipeline's buffers included) and its global loads (`ld.global` in its PTX: a pass over
    memory more shows there)."""
    target = GPUTarget("cuda", arch, 32)
    parsed = triton.compiler.make_backend(target).parse_options(options)
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts), target=target,
                              options=parsed.__dict__)
    return dict(resource_usage(compiled.asm["cubin"]), shared=compiled.metadata.shared,
                global_loads=len(re.findall(r"\bld\.global", compiled.asm["ptx"])))


def compile_for(kernel, types: dict, consts: dict, num_warps: int, num_stages: int, arch: int = 90) -> dict:
    """`build_for` with a signature made from argument types and constexprs."""
    signature = {name: "constexpr" if name in consts else types[name] for name in kernel.arg_names}
    return build_for(kernel, signature, consts, {"num_warps": num_warps, "num_stages": num_stages}, arch)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", help="these kernels (default: all)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    table = kernels()
    unknown = set(args.only or ()) - set(table)
    if unknown:
        raise SystemExit(f"--only: no kernel named {sorted(unknown)}; known: {sorted(table)}")
    rows = {}
    for name, (kernel, types, consts, warps, stages) in table.items():
        if args.only and name not in args.only:
            continue
        rows[name] = dict(compile_for(kernel, types, consts, warps, stages, args.arch), num_warps=warps,
                          num_stages=stages)
        r = rows[name]
        print(f"{name:9s} {warps} warps {stages} stages: {r['registers']} registers, {r['stack']} B stack a thread, "
              f"{r['shared'] / 1024:.0f} KiB shared", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        rec = dict(stamp=[stamp(arch=f"sm_{args.arch}", triton_used=triton.__version__)], kernels=rows)
        (args.out / "kernel_registers.json").write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
