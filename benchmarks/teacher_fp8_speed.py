"""The distilling teacher's forward with its MLPs in FP8 (`convert/teacher_fp8.py`) against bf16, side by side in one
process on one card: random weights of the real 1.5B shape, the teacher as distillation runs it (bf16, the
project's norm / activation / rotary kernels, `distill_loss.teacher_targets`), rows of 2,048 tokens.

Prints ms a forward, the ratio, tok/s, and each one's model TFLOP/s as a fraction of the card's bf16 dense peak (the
FP8 product's own peak is twice that); and how far FP8 moves the final hidden states. Writes teacher_fp8_speed.json.

    python benchmarks/teacher_fp8_speed.py --out DIR          # GPU (Hopper), about a minute
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from shapes import QWEN25_1_5B  # noqa: E402
from stamp import stamp  # noqa: E402


def time_ms(fn) -> float:
    """Median ms of `fn()` by `triton.testing.do_bench`, as `kernel_speed.bench` times, over about 2 s of runs (a
    forward takes 100-200 ms)."""
    from triton.testing import do_bench

    fn()  # kernels compiled and tuned outside the timing
    torch.cuda.synchronize()
    return do_bench(fn, warmup=500, rep=2000, return_mode="median")


def main(argv: list[str] | None = None) -> dict:
    """Write teacher_fp8_speed.json under --out; print one line a teacher."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=8, help="rows a forward (stage 1 takes 8, stage 2 4-8)")
    ap.add_argument("--seq-len", type=int, default=2048)
    args = ap.parse_args(argv)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from convert.distill_loss import teacher_targets
    from convert.teacher_fp8 import with_fp8_mlps
    from convert.teacher_kernels import with_teacher_kernels
    from convert.throughput import peak_flops

    dev = torch.device("cuda")
    cfg = Qwen2Config(**QWEN25_1_5B, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)
    torch.manual_seed(0)
    with dev:  # initialised on the card: the CPU would take tens of seconds for 1.8 B random weights
        bf16, _ = with_teacher_kernels(Qwen2ForCausalLM(cfg).eval().to(torch.bfloat16))
    fp8, swapped = with_fp8_mlps(bf16)
    ids = torch.randint(0, cfg.vocab_size, (args.rows, args.seq_len), device=dev)
    tokens = ids.numel()
    # the forward's model FLOPs a token: 2 x the decoder's weights (the head is the KL's, not this forward's) plus
    # attention's 2 x 2 x L / 2 x d a layer (causal)
    decoder = sum(p.numel() for n, p in bf16.model.named_parameters() if "embed_tokens" not in n)
    flops = 2 * decoder + 2 * args.seq_len * cfg.hidden_size * cfg.num_hidden_layers
    peak, note = peak_flops(dev, True, None)
    res = {"stamp": [stamp(script="benchmarks/teacher_fp8_speed.py")], "rows": args.rows, "seq_len": args.seq_len,
           "fp8_projections": swapped, "gflop_per_token": flops / 1e9, "peak_note": note, "teachers": {}}
    outs = {}
    for name, model in (("bf16", bf16), ("fp8 MLPs", fp8)):
        ms = time_ms(lambda: teacher_targets(model, ids, []))
        outs[name] = teacher_targets(model, ids, [])[0].float()
        tflops = flops * tokens / (ms / 1e3) / 1e12
        res["teachers"][name] = {"ms": ms, "tok_per_s": tokens / (ms / 1e3), "tflops": tflops,
                                 "of_bf16_peak": tflops * 1e12 / peak}
        print(f"{name}: {ms:.1f} ms a forward of {args.rows} x {args.seq_len}, {tokens / (ms / 1e3):,.0f} tok/s, "
              f"{tflops:.0f} TFLOP/s = {tflops * 1e12 / peak:.1%} of {note}")
    res["speedup"] = res["teachers"]["bf16"]["ms"] / res["teachers"]["fp8 MLPs"]["ms"]
    res["hidden_rel_err"] = ((outs["fp8 MLPs"] - outs["bf16"]).norm() / outs["bf16"].norm()).item()
    print(f"FP8 MLPs: {res['speedup']:.2f}x the bf16 teacher's speed; final hidden states {res['hidden_rel_err']:.3%} "
          f"from bf16's (random weights)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher_fp8_speed.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
