"""`jet-nemotron eval` at full size on one GPU: a converted + distilled student beside its real teacher.

    python benchmarks/eval_real.py --model runs/student --baseline /path/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
        --out "$OUT"

Runs, each suite on both models before the next (both stay loaded, so a run cut short still compares):
- ppl: held-out code, the stdlib's held-out split (`convert.tiny_teacher.stdlib_files("eval")`, ~5% of the
  files by a hash of their path, never trained on by this project's recipes) unless --text names other files;
  windows of 4,096 tokens.
- niah: passkey, needle grid (1K..32K x 11 depths), multi-needle, key-value, variable tracking; --trials prompts
  a cell, the haystack the same held-out text. The longest length is 32,000 so prompt + answer fit a 32,768 model.
- humaneval: all 164 problems, greedy, left-padded in one batch on the static cache (halved if it does not fit),
  512 new tokens at most.
- speed: prefill and decode tok/s at 4K..32K, batch 1 and the largest batch that fits (capped), cache bytes.
Writes OUT/eval/{eval.json, eval.md, retrieval.png, speed.png} (a cut run leaves them in OUT/eval.tmp-PID/)
and prints the table; eval.json has the seconds each suite took per model, and the load times.

Measured on one H200 (2026-12-02, `benchmarks/results/real_model/student_vs_teacher_eval.json`): loading both
(the student folder and the saved fp32 teacher, as bf16) 3 s; ppl 6 s for both; niah to 32K (4 lengths x 11
depths x 3 prompts + 4 tasks) 97 s for both; humaneval 36 s for the student (164 prompts in one batch then). The
teacher's HumanEval ran out of memory in that run (one batch of 164 beside the loaded student), hence batches of
64 and memory released after every generate(). speed is not yet measured here: benchmarks/generation.py, the same
machinery, took over 3 minutes a model and context (a compile and CUDA-graph capture per batch shape).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.eval.suite import EvalOptions, run_eval  # noqa: E402
from convert.tiny_teacher import stdlib_files  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stamp import stamp  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the student (Jet-Nemotron folder) or any model folder / .gguf")
    ap.add_argument("--baseline", help="the teacher (folder or .gguf)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/eval_real")))
    ap.add_argument("--suite", default="ppl,niah,humaneval,speed")
    ap.add_argument("--text", nargs="*", help="held-out text (default: the stdlib's held-out split)")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384,32000")
    ap.add_argument("--trials", type=int, default=3, help="prompts per grid cell and per task and length")
    ap.add_argument("--speed-contexts", default="4096,8192,16384,32000")
    ap.add_argument("--speed-max-batch", type=int, default=1024)
    ap.add_argument("--ppl-max-tokens", type=int, help="score at most this many held-out tokens")
    ap.add_argument("--humaneval-limit", type=int, help="only the first N problems (a smoke run)")
    ap.add_argument("--humaneval-max-new-tokens", type=int, default=512)
    ap.add_argument("--humaneval-batch", type=int, default=256,
                    help="prompts a generate() call; a batch out of memory is halved. 164 in one batch once ran a "
                         "teacher out of memory while static caches still kept the 32K length of an earlier cell "
                         "(fixed in d508a7d), the likely cause")
    ap.add_argument("--humaneval-compile", action="store_true",
                    help="compile the decode step for HumanEval (one batch of 164: compiling costs more than it saves)")
    args = ap.parse_args(argv)
    text = args.text or [str(p) for p in stdlib_files("eval")]
    opt = EvalOptions(text=text, ppl_window=4096, ppl_max_tokens=args.ppl_max_tokens,
                      lengths=[int(x) for x in args.lengths.split(",")],
                      depths=[i / 10 for i in range(11)], trials=args.trials,
                      humaneval_batch=args.humaneval_batch, humaneval_max_new_tokens=args.humaneval_max_new_tokens,
                      humaneval_limit=args.humaneval_limit, humaneval_compiled=args.humaneval_compile,
                      speed_contexts=[int(x) for x in args.speed_contexts.split(",")],
                      speed_max_batch=args.speed_max_batch)
    t = time.perf_counter()
    run_eval(args.model, args.baseline, args.suite, args.out / "eval", opt, overwrite=True, meta={"stamp": [stamp()]})
    print(f"eval_real: {time.perf_counter() - t:.0f} s in all")


if __name__ == "__main__":
    main()
