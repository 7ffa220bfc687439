"""How much Python's garbage collector runs inside distillation steps, on the CPU: stage-2 steps of a student with
the real depth and layer pattern (28 layers, `jet-nemotron-2b`'s, at a tiny width) at 8 micro-steps a step, with
the set-up objects frozen out of the collector (as `convert.distill` runs its steps) and without, in one process.

What it can say: how often the collector runs a collection of each generation per step at the real depth, and what
a full one costs in a process with torch and transformers loaded. What it cannot: the card's idle time, which a
pause of the launching thread causes only where the host is the bottleneck (stage 2 at 2 rows a forward).

    python benchmarks/gc_in_steps.py --out benchmarks/results/profiles/gc_cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "modeling_tests"))  # the tests' tiny Qwen

from stamp import stamp  # noqa: E402


def one_run(freeze: bool, steps: int) -> dict:
    """Stage-2 steps of a fresh 28-layer student; the collector's collections inside them, by generation."""
    import torch
    from test_convert_conversion import tiny_qwen

    import convert.throughput as throughput
    from convert.distill import DistillConfig, distill
    from convert.layer_map import PRESETS, parse_spec
    from convert.qwen_to_jet import convert_model

    teacher = tiny_qwen("qwen2", layers=28)
    student = convert_model(teacher, parse_spec(",".join(PRESETS["jet-nemotron-2b"]["layer_types"])), window=8)
    rows = torch.randint(0, 101, (64, 64), generator=torch.Generator().manual_seed(0))
    events: list[tuple[int, float]] = []
    inside = {"on": False}

    def clock(phase: str, info: dict) -> None:
        if phase == "start":
            clock.t = time.perf_counter()
        elif inside["on"]:
            events.append((info["generation"], time.perf_counter() - clock.t))

    @contextmanager
    def in_steps(collect: bool):  # in place of the steps' own: only collections inside the steps count
        with real(collect) if freeze else nullcontext() as note:
            inside["on"] = True
            try:
                yield note
            finally:
                inside["on"] = False

    real = throughput.collector_frozen
    throughput.collector_frozen = in_steps
    gc.callbacks.append(clock)
    try:
        cfg = DistillConfig(stage=2, steps=steps, batch_size=16, micro_batch=2, lr=1e-4, warmup_steps=2, log_every=0,
                            kl_weight=1.0, mse_weight=0.0, train="non-mlp")
        t = time.perf_counter()
        distill(student, teacher, rows, cfg)
        wall = time.perf_counter() - t
    finally:
        gc.callbacks.remove(clock)
        throughput.collector_frozen = real
    by_gen = {g: [d for k, d in events if k == g] for g in (0, 1, 2)}
    return {"frozen": freeze, "steps": steps, "s_per_step": wall / steps, "tracked_objects": len(gc.get_objects()),
            "collections": {g: len(d) for g, d in by_gen.items()},
            "ms_per_step": {g: 1e3 * sum(d) / steps for g, d in by_gen.items()},
            "longest_ms": {g: 1e3 * max(d, default=0.0) for g, d in by_gen.items()}}


def main(argv: list[str] | None = None) -> dict:
    """Write gc_in_steps.json under --out; print one line a run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import convert.distill  # noqa: F401  (torch, transformers and ours: what a distillation process holds)

    gc.collect()
    t = time.perf_counter()
    gc.collect()
    full_ms, tracked = 1e3 * (time.perf_counter() - t), len(gc.get_objects())
    runs = [one_run(freeze, args.steps) for freeze in (False, True)]
    for r in runs:
        print(f"{'frozen' if r['frozen'] else 'not frozen'}: {r['s_per_step']:.2f} s a step; collections in "
              f"{r['steps']} steps by generation {list(r['collections'].values())}, "
              f"{sum(r['ms_per_step'].values()):.1f} ms a step in all; longest full "
              f"{r['longest_ms'][2]:.0f} ms")
    print(f"a full collection of this process before the runs: {full_ms:.0f} ms over {tracked:,} objects")
    res = {"stamp": [stamp(script="benchmarks/gc_in_steps.py")], "full_collection_ms": full_ms,
           "tracked_before": tracked, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gc_in_steps.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
