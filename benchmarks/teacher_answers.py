"""Ask the real teacher for functions and keep its answers as chats to distil on (`convert/teacher_answers.py`).

    python benchmarks/teacher_answers.py --teacher /tmp/distill_real/teacher_fp32 --site-packages $SP \\
        --n 4096 --time-budget-s 150 --out $OUT/teacher_answers.jsonl.gz          # GPU
    python benchmarks/teacher_answers.py --toy --out /tmp/ta/answers.jsonl.gz      # tiny teacher, CPU plumbing

The heads come from the site-packages' .py files, `--held-out` (default pandas, the distillation's held-out
package) excluded. Writes OUT (jsonl.gz of {"messages": [user, assistant]}) and OUT.meta.json: the stamp (commit,
card, date, versions), the settings, and what the run kept, dropped and took (tok/s). The file is meant to be
committed: generated once on the GPU, then any distillation draws its chat rows from it at no GPU cost
(`--chat-file`, variant key `chat_file`).
"""

from __future__ import annotations

import argparse
import site
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from stamp import stamp  # noqa: E402

from convert.teacher_answers import answer_chats, function_heads, write_chats  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="the teacher: a model folder or a .gguf file")
    ap.add_argument("--site-packages", type=Path, nargs="*", help="folders of .py files (default: this Python's)")
    ap.add_argument("--held-out", nargs="*", default=["pandas"], help="corpus held-out patterns never asked about")
    ap.add_argument("--n", type=int, default=4096, help="function heads to ask about")
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--time-budget-s", type=float, help="stop starting batches after this many seconds")
    ap.add_argument("--no-compile", action="store_true", help="eager decoding (default on CUDA: compiled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="the chat file (.jsonl or .jsonl.gz)")
    ap.add_argument("--toy", action="store_true", help="a tiny random teacher with a chat template (CPU check)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise SystemExit("--n, --batch-size and --max-new-tokens must be >= 1")
    t0 = time.perf_counter()
    if args.toy:
        m, sources = _toy_teacher(), args.site_packages or [HERE.parent / "convert"]
        held_out = args.held_out if args.site_packages else []
    else:
        if not args.teacher:
            raise SystemExit("--teacher is required (or --toy)")
        from convert.eval.models import load

        m = load(args.teacher)
        sources, held_out = args.site_packages or [Path(site.getsitepackages()[0])], args.held_out
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    heads = function_heads(sources, held_out, args.n, args.seed)
    heads_s = time.perf_counter() - t0
    if not heads:
        raise SystemExit(f"no function heads found in {[str(s) for s in sources]}")
    print(f"{len(heads):,} function heads from {len(sources)} source(s) in {heads_s:.1f} s")
    chats, stats = answer_chats(m, heads, args.max_new_tokens, args.batch_size,
                                 compiled=False if args.no_compile else None, time_budget_s=args.time_budget_s)
    if not chats:
        raise SystemExit(f"the teacher kept no answer of {stats['asked']} asked: nothing written to {args.out}")
    meta = {"stamp": [stamp()], "teacher": "toy" if args.toy else str(args.teacher),
            "sources": [str(s) for s in sources], "held_out": held_out, "n": args.n, "seed": args.seed,
            "stats": stats, "seconds": {"load": load_s, "heads": heads_s, "generate": stats["seconds"]}}
    write_chats(args.out, chats, meta)
    print(f"wrote {len(chats):,} chats to {args.out} (+ .meta.json)")


def _toy_teacher():
    """A tiny random Qwen2 with a chat template, wrapped for generation (its answers are noise: plumbing only)."""
    from convert.eval.models import wrap
    from convert.tiny_teacher import TeacherSize, build_qwen2, build_tokenizer, read_corpus, stdlib_files

    tok = build_tokenizer(read_corpus(stdlib_files("train"), 200_000), 512)
    teacher = build_qwen2(TeacherSize(vocab=len(tok), hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128),
                          tok).eval()
    return wrap(teacher, tok, "toy teacher")


if __name__ == "__main__":
    main()
