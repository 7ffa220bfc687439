"""What building generated rows beside the training thread costs that thread: a loop of small torch ops (a stand-in
for a step's kernel launches, which are Python too) timed alone, with chat rows built on a thread of the same process
(the batch thread's way before `convert/row_workers.py`), and with them built in a forked process (its way now).

    python benchmarks/generated_rows_gil.py --tokenizer /path/to/qwen.gguf   # the real tokenizer (a GGUF or folder)
    python benchmarks/generated_rows_gil.py                                  # a tokenizer trained on the stdlib here

Writes benchmarks/results/generated_rows_gil.json (stamped) and prints the ratios. CPU only; the loop and the rows
get a core each where the machine has two.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from stamp import stamp  # noqa: E402


def _launch_loop(n: int) -> float:
    """Seconds for `n` tiny torch ops issued from Python (one a call, as a step's kernel launches are)."""
    x = torch.randn(64)
    t = time.perf_counter()
    for _ in range(n):
        x = x + 1.0
    return time.perf_counter() - t


def _rows_until(stream, stop, k0: int) -> None:
    k = k0
    while not stop.is_set():
        stream.draw(k)
        k += 1


def main(argv: list[str] | None = None) -> None:
    from convert.chat_data import ChatCodeStream

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", help="a GGUF file or tokenizer folder (default: one trained on the stdlib here)")
    ap.add_argument("--files", type=int, default=120, help="stdlib files in the haystack")
    ap.add_argument("--ops", type=int, default=3000, help="small ops a timed loop")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "generated_rows_gil.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted(glob.glob(str(Path(json.__file__).parents[1] / "*.py")))[: args.files]
    texts = [Path(f).read_text(errors="ignore") for f in files]
    if args.tokenizer:
        from convert.export import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    else:
        from convert.tiny_teacher import build_tokenizer

        tok = build_tokenizer(texts, vocab_size=4096)
    ids: list[int] = []
    for text in texts:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = ChatCodeStream(tok, np.asarray(ids, dtype=np.uint32), 2048, seed=0)
    t = time.perf_counter()
    for k in range(8):
        stream.draw(k)
    row_ms = (time.perf_counter() - t) / 8 * 1e3

    def median_loop() -> float:
        return sorted(_launch_loop(args.ops) for _ in range(args.repeats))[args.repeats // 2]

    def beside(kind) -> float:  # the loop's median while chat rows are built on a thread or in a forked process
        stop = threading.Event() if kind is threading else kind.Event()
        worker = (threading.Thread if kind is threading else kind.Process)(target=_rows_until,
                                                                         args=(stream, stop, 100))
        worker.start()
        time.sleep(0.5)
        try:
            return median_loop()
        finally:
            stop.set()
            worker.join()

    alone = median_loop()
    on_thread = beside(threading)
    in_process = beside(mp.get_context("fork"))
    res = {"stamp": [stamp()], "tokenizer": args.tokenizer or "trained on the stdlib here (4,096 tokens)",
           "haystack_tokens": len(ids), "chat_row_ms": row_ms, "ops": args.ops, "loop_ms_alone": alone * 1e3,
           "loop_ms_rows_on_a_thread": on_thread * 1e3, "loop_ms_rows_in_a_process": in_process * 1e3,
           "slowdown_thread": on_thread / alone, "slowdown_process": in_process / alone}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"one chat row {row_ms:.0f} ms; a loop of {args.ops:,} small ops: alone {alone * 1e3:.1f} ms, chat rows on a "
          f"thread {on_thread * 1e3:.1f} ms ({on_thread / alone:.2f}x), in a process {in_process * 1e3:.1f} ms "
          f"({in_process / alone:.2f}x)")


if __name__ == "__main__":
    main()
