"""Every Triton kernel of the project built for a Hopper card on a machine without one, at the launches the library
itself makes at the 2B shapes.

`kernel_registers.py` builds the chunked kernels from a table of their launches; this builds what the library
launches. Its ops run once under Triton's interpreter with every launch recorded and skipped (a dry launch: outputs
stay uninitialised, while the shapes, dtypes, constexprs and warps are the real ones), then each distinct launch is
compiled for sm_90 in a process without the interpreter. A kernel that the interpreter runs but the compiler refuses
(a value set under a runtime `if` and read after it: Python defines it on the branch taken, the compiler wants it on
both) fails here, on the CPU, instead of on the first card that runs it.

    python benchmarks/kernel_launches.py [--T 256] [--out DIR]   # a table; DIR/kernel_launches.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# every module of the library named for Triton: `kernels_defined` lists the kernels in them, so a kernel that the
# drive below never launches, in a module added later too, is named
MODULES = tuple(sorted(f"{f.parent.name}.{f.stem}" for pkg in ("jet_nemotron", "convert")
                       for f in (REPO / pkg).glob("*triton*.py")))
DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32", "torch.int32": "i32",
          "torch.int64": "i64", "torch.bool": "i1", "torch.uint8": "u8", "torch.int8": "i8"}
# the teacher's decoder (Qwen2.5-1.5B): hidden, MLP, vocabulary, attention heads (query, key-value) and head dim
HIDDEN, INTER, VOCAB, HQ, HKV, HEAD = 1536, 8960, 151936, 12, 2, 128


def _value(v) -> object:
    """A launch argument as JSON: a tensor as {"tensor": its dtype}, a scalar or None as itself."""
    import torch

    if isinstance(v, torch.Tensor):
        return {"tensor": str(v.dtype)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"a launch argument of type {type(v).__name__} has no JSON form")


def record(T: int) -> list[dict]:
    """The launches the library's ops make at the 2B shapes over T tokens, each {"kernel": "module:name", "args":
    {name: value}, "options": {num_warps, ...}}, recorded under the interpreter without running a kernel."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("record() needs TRITON_INTERPRET=1 set before triton is imported")
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[dict] = []

    def dry_run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return
        names = self.arg_names
        bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        options = {k: v for k, v in kwargs.items() if k not in names}
        launches.append(dict(kernel=f"{self.fn.__module__}:{self.fn.__name__}",
                             args={k: _value(v) for k, v in bound.items()}, options=options))

    InterpretedFunction.run = dry_run
    drive(T)
    return launches


def drive(T: int) -> None:
    """Call every Triton op the library trains, prefills, decodes and distils with, as it calls them: bf16 at the 2B
    shapes, packed sequences (cu_seqlens) and not, each switch both ways, forward and backward."""
    import torch

    from convert.kl_rows_triton import kl_rows_triton
    from convert.normalised_mse_triton import normalised_mse_triton
    from jet_nemotron import dynamic_conv_triton as conv
    from jet_nemotron import gated_delta_rule_triton_launch as launch
    from jet_nemotron.gated_delta_rule_triton import (chunk_gated_delta_rule_triton,
                                                      fused_recurrent_gated_delta_rule_triton)
    from jet_nemotron.gated_delta_rule_triton_step import gated_delta_rule_step_triton
    from jet_nemotron.gated_rmsnorm_triton import gated_rmsnorm_triton
    from jet_nemotron.rmsnorm_triton import rmsnorm_triton
    from jet_nemotron.rope_triton import rope_triton
    from jet_nemotron.swiglu_triton import swiglu_packed_triton, swiglu_triton

    sys.path.insert(0, str(HERE))
    from kernel_speed import SHAPES

    H, K, V = SHAPES["2B"]  # the 2B JetBlock's heads, key and value dims
    bf = torch.bfloat16

    def x(*shape, dtype=bf, grad=True):
        return torch.randn(*shape, dtype=dtype).requires_grad_(grad)

    def backward(*outs):
        torch.autograd.backward([o for o in outs if o is not None and o.requires_grad],
                                [torch.randn_like(o) for o in outs if o is not None and o.requires_grad])

    cu = torch.tensor([0, T // 2, T])
    for keep in (True, False):
        launch.KEEP_STATES = keep
        for packed in (False, True):
            h0 = None if packed else x(1, H, K, V).float()
            o, ht = chunk_gated_delta_rule_triton(x(1, T, H, K), x(1, T, H, K), x(1, T, H, V),
                                                  -x(1, T, H).float().abs(), x(1, T, H).sigmoid(), None, h0, True,
                                                  cu if packed else None)
            backward(o, ht)
    fused_recurrent_gated_delta_rule_triton(x(1, 16, H, K), x(1, 16, H, K), x(1, 16, H, V), -x(1, 16, H).float().abs(),
                                            x(1, 16, H).sigmoid(), None, x(1, H, K, V).float(), True)
    with torch.no_grad():
        for state in (torch.float32, bf):
            gated_delta_rule_step_triton(x(2, H, K), x(2, H, K), x(2, H, V), -x(2, H).float().abs(), x(2, H).sigmoid(),
                                         torch.zeros(2, H, K, V, dtype=state))
    C = H * V
    for fused in (True, False):
        conv.FUSED_BWD = fused
        for packed in (False, True):
            backward(conv.dynamic_conv_triton(x(1, T, C), x(1, T, C, 4), None, cu if packed else None))
        backward(conv.dynamic_conv_triton(x(1, T, C), x(1, T, C, 4), torch.zeros(1, C, 3, dtype=bf)))
    with torch.no_grad():
        conv.dynamic_conv_step_triton(x(2, C), x(2, C, 4), torch.zeros(2, C, 4, dtype=bf))
    backward(gated_rmsnorm_triton(x(T * H, V), x(T * H, V), x(V, dtype=torch.float32), 1e-6))
    backward(rmsnorm_triton(x(T, HIDDEN), x(HIDDEN, dtype=torch.float32), 1e-6))
    backward(rmsnorm_triton(x(T, HIDDEN), x(HIDDEN), 1e-6))
    for rounded in (False, True):
        backward(swiglu_triton(x(T, INTER), x(T, INTER), rounded))
        backward(swiglu_packed_triton(x(T, 2 * INTER), rounded))
    with torch.no_grad():
        rope_triton(x(1, HQ, T, HEAD, grad=False), x(1, HKV, T, HEAD, grad=False), x(1, T, HEAD, grad=False),
                    x(1, T, HEAD, grad=False))
        for top1 in (0.0, 0.2):
            for focus in (0.0, 2.0):
                kl_rows_triton(x(4, VOCAB, grad=False), x(4, VOCAB, grad=False), 1.0, top1, focus)
    normalised_mse_triton(x(T, HIDDEN), x(T, HIDDEN, grad=False)).backward()


def kernels_defined() -> set[str]:
    """"module:name" of every Triton kernel (a JIT function named `_..._kernel`) in MODULES: the helpers a kernel
    calls are built inside it."""
    from triton.runtime.jit import JITFunction

    out = set()
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction) and obj.fn.__module__ == mod_name and name.endswith("_kernel"):
                out.add(f"{mod_name}:{name}")
    return out


def _type(v) -> str:
    """A non-constexpr launch argument's Triton type."""
    if isinstance(v, dict):
        return "*" + DTYPES[v["tensor"]]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"no Triton type for {v!r}")


def on_card(kernel: str, consts: dict) -> dict:
    """The constexprs a launch on a card takes where the library picks them by device: the dry launch ran on the
    CPU, whose interpreter keeps the per-chunk backward's operands fp32 (`launch.dot_bf16`)."""
    if kernel == "jet_nemotron.gated_delta_rule_triton_chunk_bwd:_bwd_chunk_kernel":
        from jet_nemotron.gated_delta_rule_triton_launch import dot_bf16

        return consts | {"DOT_BF16": dot_bf16(consts["BK"], on_card=True)}
    return consts


def spec(launch: dict) -> dict:
    """What a recorded launch compiles on a card: {"kernel", "signature", "constexprs", "options"}; a constexpr by
    its value, any other argument by its type only (launches over other lengths build once)."""
    mod_name, name = launch["kernel"].split(":")
    kernel = getattr(importlib.import_module(mod_name), name)
    signature, consts = {}, {}
    for p in kernel.params:
        v = launch["args"][p.name]
        if p.is_constexpr or v is None:
            signature[p.name], consts[p.name] = "constexpr", v
        else:
            signature[p.name] = _type(v)
    return dict(kernel=launch["kernel"], signature=signature, constexprs=on_card(launch["kernel"], consts),
                options=launch["options"])


def build(s: dict, arch: int = 90) -> dict:
    """Compile one spec for sm_`arch`: {"kernel", "registers", "stack", "shared", "global_loads"}
    (`kernel_registers.build_for`)."""
    sys.path.insert(0, str(HERE))
    from kernel_registers import build_for

    mod_name, name = s["kernel"].split(":")
    kernel = getattr(importlib.import_module(mod_name), name)
    try:
        return dict(kernel=s["kernel"], **build_for(kernel, s["signature"], s["constexprs"], s["options"], arch))
    except Exception as err:  # the compiler's message names the line; this names the launch
        raise RuntimeError(f"{s['kernel']} does not build for sm_{arch} with {s['constexprs']} and {s['options']}: "
                           f"{err}") from err


def distinct(specs: list[dict]) -> list[dict]:
    """The specs that differ, first seen first."""
    seen, out = set(), []
    for s in specs:
        key = json.dumps(s, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=256, help="tokens a sequence op runs over (the launches hardly vary)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="builds at once (processes)")
    ap.add_argument("--record-to", type=Path, help=argparse.SUPPRESS)  # the interpreter child's half
    args = ap.parse_args(argv)
    if args.record_to:
        args.record_to.write_text(json.dumps(record(args.T)))
        return
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET: a kernel decorated under it cannot be compiled for a card")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "launches.json"
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        subprocess.run([sys.executable, __file__, "--T", str(args.T), "--record-to", str(path)], check=True, env=env,
                       cwd=REPO)
        launches = json.loads(path.read_text())
    sys.path.insert(0, str(REPO))
    missing = kernels_defined() - {launch["kernel"] for launch in launches}
    todo = distinct([spec(launch) for launch in launches])
    print(f"{len(launches)} launches, {len(todo)} distinct builds", flush=True)
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row, s in zip(pool.map(build, todo), todo):  # in order, each as soon as it and those before are built
            row["constexprs"], row["options"] = s["constexprs"], s["options"]
            rows.append(row)
            print(f"{row['kernel']:62s} {row['registers']:3d} registers, {row['stack']:5d} B stack, "
                  f"{row['shared'] / 1024:4.0f} KiB shared", flush=True)
    if args.out:
        import triton

        sys.path.insert(0, str(HERE))
        from stamp import stamp

        args.out.mkdir(parents=True, exist_ok=True)
        rec = dict(stamp=[stamp(arch="sm_90", triton_used=triton.__version__, T=args.T)], builds=rows,
                   launched=sorted({launch["kernel"] for launch in launches}), not_launched=sorted(missing))
        (args.out / "kernel_launches.json").write_text(json.dumps(rec, indent=1))
    if missing:
        raise SystemExit(f"kernels the drive never launched (add their op to drive()): {sorted(missing)}")


if __name__ == "__main__":
    main()
