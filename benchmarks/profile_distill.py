"""Where a distillation step's time goes: the real 1.5B shapes (Qwen2.5-1.5B teacher, `jet-nemotron-2b` student) with
random weights and tokens (a step's time does not depend on their values, so no GGUF is needed and it can run while
the real model's parts are still arriving), a few warm steps of `convert.distill.distill`, then the next ones
under torch.profiler inside the run, as a real run's steps are traced (`convert/step_trace.py`, with shapes).

    python benchmarks/profile_distill.py --out $OUT                 # stage 1, batch 16 x 2048, micro 8, bf16 (GPU)
    python benchmarks/profile_distill.py --stage 2 --out $OUT
    python benchmarks/profile_distill.py --local --out $OUT         # stage 1 as attention transfer
    python benchmarks/profile_distill.py --frozen-bf16 --out $OUT   # frozen weights held in bf16
    python benchmarks/profile_distill.py --local --teacher-fp8 --out $OUT   # the targets from FP8 teacher MLPs
    python benchmarks/profile_distill.py --toy --out /tmp/pd        # tiny shapes on the CPU: checks the script

Writes OUT/profile_distill_{tag}.json (device time per kernel family: matmul, JetBlock Triton kernels, attention,
KL / softmax, elementwise and the rest; ms per step; MFU of the profiled steps; kernels' busy share of the step;
the copies, casts and elementwise ops grouped by input shape, to tell which tensors they move) and .txt (the top
kernels, then those ops by shape), and prints the families. The families come from kernel names, a heuristic: the table beside them is the evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# The checkout's packages go after the PYTHONPATH entries, which follow the script's folder: with
# PYTHONPATH=<another tree's copy> the profile runs that tree's jet_nemotron, where the checkout put first shadowed it
# (a profile meant for an older tree's kernels ran this one's on 2026-12-07). The record names the package that ran.
sys.path.insert(1 + sum(1 for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p), str(HERE.parent))
sys.path.insert(0, str(HERE))

from stamp import stamp, stamp_line  # noqa: E402

from convert.distill import DistillConfig, distill  # noqa: E402
from convert.distill_config import TRAIN_SETS  # noqa: E402
from convert.step_trace import by_family  # noqa: E402
from convert.throughput import peak_flops  # noqa: E402

def build(toy: bool):
    """(teacher, student) at the real shapes (or a toy's), random weights, the teacher as distill_real loads it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from convert.layer_map import parse_spec, resolve_layer_map
    from convert.qwen_to_jet import convert_model

    if toy:
        cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
        lm = parse_spec("jet,jet,attn,jet")
    else:
        from shapes import QWEN25_1_5B

        # untied, as the real teacher (the GGUF) loads
        cfg = Qwen2Config(**QWEN25_1_5B, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)
        lm = resolve_layer_map("jet-nemotron-2b", 28)
    torch.manual_seed(0)
    teacher = Qwen2ForCausalLM(cfg).eval()
    return teacher, convert_model(teacher, lm).float()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--local", action="store_true", help="stage 1 as attention transfer")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--warm", type=int, default=3, help="steps before profiling (compile, allocator)")
    ap.add_argument("--steps", type=int, default=2, help="steps profiled")
    ap.add_argument("--compile", action="store_true", help="torch.compile each student decoder layer")
    ap.add_argument("--frozen-bf16", action="store_true", help="frozen weights held in bf16 (DistillConfig.frozen_bf16)")
    ap.add_argument("--residual-bf16", action="store_true",
                    help="the student's residual stream in bf16 (DistillConfig.residual_bf16)")
    ap.add_argument("--kl-reference", action="store_true",
                    help="the checkpointed reference KL instead of the fused one (DistillConfig.fused_kl=False)")
    # unset: DistillConfig's default (both on in a bf16 run on CUDA), so a plain profile is the default path
    ap.add_argument("--projections-as-one", action=argparse.BooleanOptionalAction,
                    help="same-input projections as one product while training (DistillConfig.projections_as_one; "
                         "default: the library's, on in bf16)")
    ap.add_argument("--kl-kernel", action=argparse.BooleanOptionalAction,
                    help="the fused KL's softmax work in one Triton kernel (DistillConfig.kl_kernel; default: the "
                         "library's, on on CUDA)")
    ap.add_argument("--fused-adam", action="store_true", help="AdamW's fused kernel (DistillConfig.fused_adam)")
    ap.add_argument("--mse-kernel", action=argparse.BooleanOptionalAction,
                    help="the attention-output loss in one Triton kernel each way (DistillConfig.mse_kernel; default: "
                         "on on CUDA)")
    ap.add_argument("--teacher-kernels", action=argparse.BooleanOptionalAction, default=True,
                    help="the teacher's RMSNorms and MLP activations on ops.rmsnorm / ops.swiglu "
                         "(DistillConfig.teacher_kernels, default on)")
    ap.add_argument("--train", choices=TRAIN_SETS,
                    help="the trainable set (DistillConfig.train; default: the stage's, e.g. all in stage 2)")
    ap.add_argument("--kl-chunk", type=int, default=DistillConfig.kl_chunk,
                    help="tokens per KL chunk: fewer chunks cast and add the [V, d] head gradient fewer times, for "
                         "larger [chunk, V] logits")
    ap.add_argument("--keep-states", action=argparse.BooleanOptionalAction,
                    help="the JetBlocks' forward keeps w, h and v' for the backward (launch.KEEP_STATES, env "
                         "JET_NEMOTRON_KEEP_STATES; default: the library's, on)")
    ap.add_argument("--conv-fused-bwd", action=argparse.BooleanOptionalAction,
                    help="the dynamic convolution's backward in one kernel (dynamic_conv_triton.FUSED_BWD, env "
                         "JET_NEMOTRON_CONV_FUSED_BWD; default: the library's, on)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="the student's layers recompute their activations in the backward "
                         "(DistillConfig.gradient_checkpointing): 8 rows a stage-2 forward on an 80 GB card, "
                         "where without it only 2 fit")
    ap.add_argument("--teacher-fp8", action="store_true",
                    help="the targets from the teacher with its MLP projections in FP8 (DistillConfig.teacher_fp8; "
                         "Hopper or newer)")
    ap.add_argument("--toy", action="store_true")
    args = ap.parse_args(argv)
    # the switches as given, else the library's: the record's name says what was given (as for the other
    # library-default options), its args what ran
    given = {True: "_{}", False: "_no_{}", None: ""}
    switch_tag = given[args.keep_states].format("keep_states") + given[args.conv_fused_bwd].format("conv_fused_bwd")
    try:
        from jet_nemotron import dynamic_conv_triton
        from jet_nemotron import gated_delta_rule_triton_launch as launch
    except ImportError:  # no Triton: the PyTorch reference runs, which has neither switch
        if args.keep_states or args.conv_fused_bwd:
            raise
        args.keep_states = args.conv_fused_bwd = False
    else:
        if args.keep_states is not None:
            launch.KEEP_STATES = args.keep_states
        if args.conv_fused_bwd is not None:
            dynamic_conv_triton.FUSED_BWD = args.conv_fused_bwd
        args.keep_states, args.conv_fused_bwd = launch.KEEP_STATES, dynamic_conv_triton.FUSED_BWD
    if args.toy:
        args.seq_len, args.batch_size, args.micro_batch = 64, 4, 2
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    teacher, student = build(args.toy)
    build_s = time.perf_counter() - t0
    total = args.warm + args.steps
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, teacher.config.vocab_size, (args.batch_size * total, args.seq_len), generator=g)
    with tempfile.TemporaryDirectory() as trace_dir:
        # the profiled steps are the run's own trace (convert/step_trace.py, as a real run's steps are traced) with
        # shapes recorded: which tensors the copies and casts move (logits, the residual stream, weights) is read off
        # their shapes. The warm steps before it run untraced: a long warm-up (--warm 100, a minute of steady state)
        # times the step as a run does
        cfg = DistillConfig(stage=args.stage, steps=total, batch_size=args.batch_size, micro_batch=args.micro_batch,
                            mixed_precision="bf16" if dev.type == "cuda" else "no", log_every=1, warmup_steps=1,
                            local=args.local, compile=args.compile, frozen_bf16=args.frozen_bf16,
                            residual_bf16=args.residual_bf16,
                            fused_kl=not args.kl_reference, kl_chunk=args.kl_chunk,
                            projections_as_one=args.projections_as_one, kl_kernel=args.kl_kernel,
                            fused_adam=args.fused_adam, train=args.train,
                            teacher_kernels=args.teacher_kernels, mse_kernel=args.mse_kernel,
                            gradient_checkpointing=args.gradient_checkpointing, teacher_fp8=args.teacher_fp8,
                            trace_steps=args.steps, trace_after=args.warm, trace_dir=trace_dir, trace_shapes=True)
        run = distill(student, teacher, rows, cfg)
        path = Path(trace_dir) / f"stage{args.stage}_steps{args.warm + 1}-{total}.json"
        if not path.exists():
            raise SystemExit(f"profile_distill: the trace of steps {args.warm + 1}-{total} wrote nothing (its "
                             "warning above says why)")
        trace = json.loads(path.read_text())
        table = path.with_suffix(".txt").read_text()
    # the traced steps' own wall clock, the card synchronised before and after them (their log interval also holds
    # the trace's writing)
    ms = trace["wall_ms_per_step"]
    tok_per_s = args.batch_size * args.seq_len * 1e3 / ms
    peak, _ = peak_flops(dev, cfg.mixed_precision == "bf16")
    # each kernel's own time a step (the profiler's step spans left out), as a run's traced steps keep it
    fam = by_family(trace["kernels"])
    tag = f"stage{args.stage}" + ("_local" if args.local else "") + ("_compiled" if args.compile else "") + (
        "_frozen_bf16" if args.frozen_bf16 else "") + ("_residual_bf16" if args.residual_bf16 else "") + (
        "_kl_reference" if args.kl_reference else "") + (
        {True: "_as_one", False: "_no_as_one", None: ""}[args.projections_as_one]) + (
        {True: "_kl_kernel", False: "_no_kl_kernel", None: ""}[args.kl_kernel]) + (
        "_fused_adam" if args.fused_adam else "") + ("" if args.teacher_kernels else "_eager_teacher") + (
        {True: "_mse_kernel", False: "_no_mse_kernel", None: ""}[args.mse_kernel]) + (
        f"_train_{args.train}" if args.train else "") + (
        f"_kl_chunk{args.kl_chunk}" if args.kl_chunk != DistillConfig.kl_chunk else "") + (
        switch_tag) + (
        "_ckpt" if args.gradient_checkpointing else "") + ("_teacher_fp8" if args.teacher_fp8 else "") + (
        f"_mb{args.micro_batch}" if args.micro_batch != 8 and not args.toy else "") + ("_toy" if args.toy else "")
    import jet_nemotron

    res = {"stamp": [stamp()], "jet_nemotron": str(Path(jet_nemotron.__file__).parent),
           "args": {k: str(v) for k, v in vars(args).items()}, "build_s": build_s,
           "ms_per_step": ms, "tok_per_s": tok_per_s,
           "mfu": tok_per_s * run["flops_per_token"]["total"] / peak if peak else None,
           "flops_per_token": run["flops_per_token"], "time_is": trace["time_is"],
           "ms_per_step_by_family": fam,
           "busy_ms_per_step": trace["busy_ms_per_step"], "busy_fraction": trace["busy_fraction"],
           # a larger KL chunk trades memory for fewer passes over the head gradient: its peak says what it costs
           "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None,
           # every step's record with its Unix time: `gpu_by_stage.py --runs` lines the card job's clock samples up
           # with them, to tell whether a profile and a run (575 against 528 ms a stage-1 step, 2026-12-07) ran
           # the card at the same clocks and power
           "history": run["history"],
           # the copies, casts and elementwise ops by input shape; each kernel's time a step, as a run's own
           # traced steps record it: the two compare kernel by kernel (benchmarks/trace_vs_profile.py)
           "glue_by_shape": trace["glue_by_shape"], "kernels": trace["kernels"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_distill_{tag}.json").write_text(json.dumps(res, indent=1, default=str))
    copies = res["glue_by_shape"]
    lines = [f"{c['ms_per_step']:9.2f} ms/step {c['calls_per_step']:7.1f} calls/step  {c['op']}  {c['shapes']}"
             for c in copies]
    (args.out / f"profile_distill_{tag}.txt").write_text(
        f"{stamp_line(res['stamp'][0])}\n\n{table}\n\ncopies, casts and "
        f"elementwise ops by input shape (device time, top {len(copies)}):\n" + "\n".join(lines) + "\n")
    print(table)
    print(f"{tag}: {ms:,.0f} ms a step, {res['tok_per_s']:,.0f} tok/s, MFU {res['mfu'] or float('nan'):.1%}; kernels busy "
          f"{res['busy_ms_per_step']:,.0f} ms a step ({res['busy_fraction']:.0%})"
          + (f"; peak {res['peak_gb']:.1f} GB allocated" if res["peak_gb"] is not None else ""))
    for f, v in res["ms_per_step_by_family"].items():
        print(f"  {f:22s} {v:9.1f} ms/step ({100 * v / ms:.0f}% of the step)")


if __name__ == "__main__":
    main()
