"""PostNAS search on the real Qwen2.5-Coder-1.5B-Instruct (28 layers, the shape of Jet-Nemotron-2B's base), one H200.

Two parts, each one call of the device tool (<= 10 minutes), each writing JSON / PNG under OUT:

    hardware   `search hardware` at the 2B state size (12 x 96 x 256 fp32 = 1,179,648 bytes per layer and
               sequence) over the paper's nine Table 2 shapes (`--all-shapes`: every valid shape with 4 / 8 / 12 /
               16 heads, 21, about twice as long): one JetBlock layer at hidden 1536, bf16, prefill 1 x 8192 and a
               decode step of 256 sequences. Expected: 1-3 minutes, <= 5 (Triton compiles its kernels once per
               (dk, dv), estimated 5-15 s a shape; the timing itself is well under a second a shape).
               -> OUT/hardware/{hardware.json, hardware.md, hardware.png, layer_map.json}
    placement  `search placement` with K = 2 attention and M = 2 sliding-window (1152) layers, the jet-nemotron-2b
               preset's budget: supernet 200 steps x 8 rows x 1024 tokens (1.6 M tokens) in bf16, then a beam
               search (width 2) scored on retrieval (passkey, 8 prompts of 2048 tokens over held-out code) and, with
               weight 0 (reported in the heatmap, not steering), lm / code / mc. Expected: ~8-12 minutes.
               -> OUT/placement/{layer_map.json, heatmap.png, search.json, search_log.jsonl, supernet_loss.png}
               Resumable: rerun the same command with --resume (checkpoints and scores in OUT/placement.ckpt).

    python benchmarks/search_real.py --part hardware --source /path/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --out $OUT
    python benchmarks/search_real.py --part placement --source ...gguf --out $OUT \\
        --data "$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')"/{_inductor,nn} \\
        --eval-data "$(python -c 'import email, os; print(os.path.dirname(email.__file__))')"
    python benchmarks/search_real.py --part placement --toy --out /tmp/sr   # CPU smoke test, numbers meaningless

Training text and held-out text must not overlap (whole packages: torch's _inductor and nn sources to train on, the
stdlib's email package for the haystack and lm rows; not all of torch/, whose .json files `--data` would read as
JSON lines). The GGUF needs the `gguf` package. Prints where each minute went.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert.search.hardware import PAPER_SHAPES, search_hardware, valid_shapes  # noqa: E402
from convert.search.run import EvalConfig, search_placement  # noqa: E402
from convert.search.train import SupernetConfig  # noqa: E402
from stamp import stamp  # noqa: E402

STATE_2B = 12 * 96 * 256 * 4


def hardware(args) -> dict:
    shapes = set(PAPER_SHAPES) | (set(valid_shapes(STATE_2B, heads=[4, 8, 12, 16])) if args.all_shapes else set())
    shapes = sorted(shapes, key=lambda s: (s[1], s[2]))
    return search_hardware(args.source, STATE_2B, args.out / "hardware", "jet-nemotron-2b", batch=1,
                           prefill_len=8192, decode_batch=256, overwrite=True, shapes=shapes)


def placement(args) -> dict:
    toy = args.toy
    train = SupernetConfig(steps=4 if toy else args.steps, batch_size=2 if toy else 8, micro_batch=2 if toy else 4,
                           lr=1e-3, warmup_steps=1 if toy else 20, mixed_precision="no" if toy else "bf16",
                           save_every=2 if toy else 50)
    ev = EvalConfig(retrieval_n=2 if toy else 8, retrieval_length=96 if toy else 2048, lm_rows=2 if toy else 4,
                    lm_length=64 if toy else 1024, code_n=2 if toy else 16)
    return search_placement(args.source, args.out / "placement", args.attn, args.swa, args.objective, args.data,
                            args.eval_data, args.beam, args.method, 16 if toy else args.window,
                            seq_len=64 if toy else 1024, train=train, ev=ev, max_tokens=args.max_tokens,
                            resume=args.resume, overwrite=True)


def toy_source(work: Path) -> tuple[str, list[str]]:
    """A tiny random Qwen2 + BPE and a text file, for the CPU smoke test."""
    from convert.tiny_teacher import TeacherSize, build_qwen2, build_tokenizer, read_corpus, stdlib_files

    texts = read_corpus(stdlib_files("train"), max_chars=200_000)
    tok = build_tokenizer(texts, vocab_size=512)
    size = TeacherSize(vocab=len(tok), hidden=64, layers=6, heads=4, kv_heads=2, intermediate=128)
    build_qwen2(size, tok, seed=0).save_pretrained(work / "qwen")
    tok.save_pretrained(work / "qwen")
    (work / "data.txt").write_text("\n".join(texts))
    return str(work / "qwen"), [str(work / "data.txt")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("hardware", "placement"), required=True)
    ap.add_argument("--source", help="the Qwen2.5-Coder-1.5B-Instruct .gguf (or any Qwen folder)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", nargs="+", help="supernet training text (folders of .py files)")
    ap.add_argument("--eval-data", nargs="+", help="held-out text: haystack and lm rows")
    ap.add_argument("--attn", type=int, default=2)
    ap.add_argument("--swa", type=int, default=2)
    ap.add_argument("--window", type=int, default=1152)
    ap.add_argument("--objective", default="retrieval,lm:0,code:0,mc:0")
    ap.add_argument("--method", default="beam")
    ap.add_argument("--beam", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=3_000_000, help="tokens of --data to tokenise")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--all-shapes", action="store_true", help="hardware: all 21 valid shapes, not Table 2's nine")
    ap.add_argument("--toy", action="store_true", help="tiny random model on the CPU (smoke test)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.toy:
        args.source, args.data = toy_source(args.out)
    if not args.source:
        ap.error("--source is required (or --toy)")
    if args.part == "placement" and not args.data:
        ap.error("--data is required for --part placement")
    t0 = time.perf_counter()
    result = hardware(args) if args.part == "hardware" else placement(args)
    wall = time.perf_counter() - t0
    st = stamp()
    if args.part == "placement":  # the library's files, stamped here: benchmark records carry card, commit, date
        for name in ("search.json", "layer_map.json"):
            f = args.out / "placement" / name
            f.write_text(json.dumps({**json.loads(f.read_text()), "stamp": [st]}, indent=1))
    (args.out / f"{args.part}_wall.json").write_text(json.dumps({"stamp": [st], "part": args.part, "wall_s": wall,
                                                                   "timings_s": result.get("timings_s")}, indent=1))
    print(f"{args.part}: {wall / 60:.1f} minutes; results under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
