"""Evaluate a model (and optionally its teacher, side by side): perplexity on held-out text and passkey retrieval.

    python examples/evaluate_model.py --model out/jet-2b --baseline Qwen/Qwen2.5-1.5B --text heldout.txt \\
        --seq-len 2048 --passkey-contexts 2048 4096 8192

Prints a table and writes JSON next to `--out`. Perplexity is exp(mean next-token NLL) over packed rows of
`--seq-len` tokens; passkey accuracy is the fraction of trials whose greedy answer starts with a 5-digit key planted
at a random depth of the text (convert/evaluation.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate(model_path: str, text: str, seq_len: int, passkey_contexts: list[int] | None, trials: int,
             max_rows: int = 64) -> dict:
    """Perplexity and passkey accuracy of one model on `text`. `passkey_contexts` None: 1K, 2K and 4K tokens,
    those below the model's maximum; a context at or above it is an error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convert.evaluation import passkey_accuracy, perplexity

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)  # no prompt: config.json names our code
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True,
                                                 dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model = model.to(device).eval()
    limit = model.config.max_position_embeddings
    if passkey_contexts is None:
        passkey_contexts = [c for c in (1024, 2048, 4096) if c < limit]
    beyond = [c for c in passkey_contexts if c >= limit]
    if beyond or seq_len > limit:
        raise ValueError(f"{model_path} handles at most {limit} positions; asked for passkey contexts {beyond} "
                         f"and --seq-len {seq_len}")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_rows = min(max_rows, len(ids) // seq_len)
    if n_rows == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one row of --seq-len {seq_len}")
    rows = torch.tensor(ids[: n_rows * seq_len]).view(n_rows, seq_len)
    result = {"model": model_path, "tokens": rows.numel(), "perplexity": perplexity(model, rows, device=device)}
    for ctx in passkey_contexts:
        result[f"passkey@{ctx}"] = passkey_accuracy(model, tok, ids, ctx, trials, device)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--baseline", help="a second model to evaluate on the same text (e.g. the teacher)")
    parser.add_argument("--text", required=True, type=Path, help="UTF-8 held-out text")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--passkey-contexts", type=int, nargs="*", default=None,
                        help="tokens per passkey trial (default 1K, 2K, 4K below the model's maximum)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write (folders are made)")
    args = parser.parse_args(argv)
    if not args.text.is_file():
        raise SystemExit(f"--text {args.text} is not a file")
    text = args.text.read_text(encoding="utf-8")
    results = [evaluate(m, text, args.seq_len, args.passkey_contexts, args.trials)
               for m in [args.model] + ([args.baseline] if args.baseline else [])]
    keys = [k for k in results[0] if k != "model"]
    print(" | ".join(["model"] + keys))
    for r in results:
        print(" | ".join([r["model"]] + [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
