"""The chunked gated delta rule of this tree against another tree's, timed side by side in one process on one card.

A kernel change that has no switch (the same op, rewritten) is timed against the code before it by loading both
`jet_nemotron` packages at once: this checkout's, and the one under `--base` (a folder holding a `jet_nemotron/`
package, e.g. `git archive <commit> jet_nemotron | tar -x -C DIR`), imported under another name. Rounds interleave the
two, so clock and power drift fall on both; the medians are reported with their ratio, the roofline fraction beside
each (the bytes and FLOPs floor of `kernel_speed.gdr_cost`), and how far the two trees' outputs and gradients lie
apart (zero where a change only moves addresses).

    python benchmarks/kernel_ab.py --base /tmp/base --out DIR     # DIR/kernel_ab.json

`--variant NAME=JSON` adds this tree under other launch settings to the same rounds: JSON names attributes of
`jet_nemotron.gated_delta_rule_triton_launch` (a dict merges into the dict there), set only while the variant runs,
e.g. `--variant 'warps8={"CHUNK_WARPS": {"wu": 8, "fwd_o": 8, "dv_local": 8}}'`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_speed import SHAPES, gdr_cost, gdr_inputs  # noqa: E402
from roofline import ceilings  # noqa: E402
from stamp import stamp  # noqa: E402


def load_tree(base: Path, name: str = "jet_nemotron_base"):
    """The `jet_nemotron` package under `base`, imported as `name` (its modules import each other relatively)."""
    init = base / "jet_nemotron" / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"--base {base}: no jet_nemotron/__init__.py there")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.gated_delta_rule_triton")


def op_of(module):
    """f(q, k, v, g, beta) -> o of a tree's chunked op, with the q/k L2 norm in the kernels as the JetBlock runs it."""
    return lambda q, k, v, g, b: module.chunk_gated_delta_rule_triton(q, k, v, g, b, use_qk_l2norm_in_kernel=True)[0]


def parse_variant(text: str) -> tuple[str, dict]:
    """"NAME=JSON" -> (NAME, {launch attribute: value}); attributes the launch module lacks are refused."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=JSON")
    try:
        settings = json.loads(spec)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--variant {name}: not JSON ({err})") from err
    unknown = [key for key in settings if not hasattr(launch, key)]
    if unknown:
        raise SystemExit(f"--variant {name}: gated_delta_rule_triton_launch has no {unknown}")
    return name, settings


@contextlib.contextmanager
def launch_settings(settings: dict):
    """This tree's launch module with `settings` applied (dicts merged), restored on exit."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    saved = {key: getattr(launch, key) for key in settings}
    for key, value in settings.items():
        setattr(launch, key, {**saved[key], **value} if isinstance(saved[key], dict) else value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(launch, key, value)


def with_settings(f, settings: dict):
    def run(*args):
        with launch_settings(settings):
            return f(*args)
    return run


def run_once(f, xs, do, mode: str):
    if mode == "fwd":
        with torch.no_grad():
            return (f(*xs),)
    o = f(*xs)
    return (o, *torch.autograd.grad(o, xs, do))


def apart(a: tuple, b: tuple) -> float:
    """The largest relative difference over the outputs (and gradients) of the two trees."""
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-30)).item()
               for x, y in zip(a, b))


def time_ms(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def compare(impls: dict, B: int, T: int, shape: str, rounds: int, reps: int, peak: float, bw: float) -> list[dict]:
    """impls: {"ours", "base", variants...} -> f(q, k, v, g, beta); each timed in every round, its ratio to base."""
    H, K, V = SHAPES[shape]
    out = []
    for mode in ("fwd", "fwd+bwd"):
        xs = gdr_inputs(T, H, K, V, mode != "fwd", B=B)
        do = torch.randn(B, T, H, V, device="cuda").bfloat16()
        runs = {name: (lambda f=f: run_once(f, xs, do, mode)) for name, f in impls.items()}
        reference = runs["base"]()
        diff = {name: apart(fn(), reference) for name, fn in runs.items() if name != "base"}
        for fn in runs.values():  # compiled and warm before any timing
            for _ in range(3):
                fn()
        ms = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                ms[name].append(time_ms(fn, reps))
        med = {name: sorted(v)[len(v) // 2] for name, v in ms.items()}
        flops, nbytes = gdr_cost(B * T, H, K, V, mode != "fwd")
        floor = max(flops / peak, nbytes / bw) * 1e3
        rec = dict(shape=shape, B=B, T=T, mode=mode, ms=med, roofline={n: floor / m for n, m in med.items()},
                   speedup={n: med["base"] / m for n, m in med.items() if n != "base"}, rel_diff=diff, rounds=ms)
        line = "  ".join(f"{n} {m:.3f} ms ({rec['roofline'][n]:.1%})" + ("" if n == "base" else
                         f" {rec['speedup'][n]:.3f}x, apart {diff[n]:.1e}") for n, m in med.items())
        print(f"{shape} B={B} T={T} {mode:8s} {line}", flush=True)
        out.append(rec)
        del xs, do
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="folder holding the other tree's jet_nemotron/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", nargs="+", default=["8x2048", "1x16384", "1x65536"], help="B x T, tokens a call")
    ap.add_argument("--shape", default="2B", choices=tuple(SHAPES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON: this tree with launch settings")
    args = ap.parse_args(argv)
    variants = dict(parse_variant(v) for v in args.variant)
    try:  # a wrong --base is named before anything else, in one line
        base = op_of(load_tree(args.base))
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    if not torch.cuda.is_available():
        raise SystemExit("kernel_ab.py times Triton kernels on a CUDA card; none is visible")
    import jet_nemotron.gated_delta_rule_triton as this_tree

    impls = {"ours": op_of(this_tree), "base": base}
    impls.update({name: with_settings(op_of(this_tree), settings) for name, settings in variants.items()})
    bw, peak = ceilings()
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s")
    results = []
    for size in args.sizes:
        B, T = (int(x) for x in size.lower().split("x"))
        results += compare(impls, B, T, args.shape, args.rounds, args.reps, peak, bw)
    args.out.mkdir(parents=True, exist_ok=True)
    rec = dict(stamp=[stamp(base=str(args.base), variants=variants, copy_bytes_per_s=bw, bf16_flops_per_s=peak)],
               results=results)
    (args.out / "kernel_ab.json").write_text(json.dumps(rec, indent=1))
    print(f"wrote {args.out / 'kernel_ab.json'}")


if __name__ == "__main__":
    main()
