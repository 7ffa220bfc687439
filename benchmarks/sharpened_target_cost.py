"""What a sharpened KL target costs in perplexity and buys in margin, on the real teacher, before a GPU run is spent on
it (`DistillConfig.kl_top1`, `convert/kl.py`).

A student that reached its target q = (1 - b) p_t + b onehot(argmax p_t) exactly would score the held-out text at
the cross-entropy of q, not of p_t: this measures that cost (the ceiling of what the share can add to the issue's
perplexity ratio), and what the same share does to the teacher's margin at the tokens where run m's student parted
from the teacher's passing HumanEval answers (`humaneval_from_openings/parting_odds.json`): there the student must
rank the teacher's first choice above its own, whose margin under q is (1 - b) (p_own - p_student's) + b.

    python benchmarks/sharpened_target_cost.py --teacher qwen.gguf --out DIR    # CPU, about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stamp import stamp  # noqa: E402

ODDS = HERE / "results" / "real_model" / "humaneval_from_openings" / "parting_odds.json"
# whole standard-library files: code the teacher did not see in our corpus, and the same on every machine's CPython
FILES = ("json/decoder.py", "textwrap.py", "fractions.py", "heapq.py")


def target_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, shares: list[float]) -> dict[float, float]:
    """Mean cross-entropy (nats a token) of `labels` [n] under q_b for each share b, from teacher logits [n, V]."""
    log_p = torch.log_softmax(logits.float(), -1)
    p_label = log_p.gather(-1, labels[:, None])[:, 0].exp()
    first = logits.argmax(-1) == labels
    return {b: -torch.log((1 - b) * p_label + b * first).mean().item() for b in shares}


def main(argv: list[str] | None = None) -> dict:
    """Write sharpened_target_cost.json under --out; print one line a share."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the teacher (.gguf, folder or Hub id)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shares", default="0,0.05,0.1,0.15,0.2,0.3")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens a file (its first)")
    args = ap.parse_args(argv)
    shares = [float(x) for x in args.shares.split(",")]

    from convert.eval.models import load

    m = load(args.teacher, device=torch.device("cpu"), dtype=torch.float32)
    lib = Path(sysconfig.get_paths()["stdlib"])
    totals, n = dict.fromkeys(shares, 0.0), 0
    for name in FILES:
        ids = m.tok((lib / name).read_text(), return_tensors="pt").input_ids[:, : args.tokens]
        with torch.inference_mode():
            logits = m.model(input_ids=ids).logits[0, :-1]
        ce = target_cross_entropy(logits, ids[0, 1:], shares)
        k = ids.shape[1] - 1
        totals = {b: totals[b] + ce[b] * k for b in shares}
        n += k
        print(f"{name}: {k} tokens, teacher {ce[0.0] if 0.0 in ce else float('nan'):.3f} nats/token")
    odds = json.loads(ODDS.read_text())["problems"]
    gaps = [o["parting"]["teacher_token_p"] - o["parting"]["student_token_p"] for o in odds if o["parting"]]
    base = totals[shares[0]] / n
    rows = []
    for b in shares:
        ce = totals[b] / n
        margin = sorted((1 - b) * g + b for g in gaps)
        rows.append({"share": b, "nats_per_token": ce, "ppl_ratio_to_share0": math.exp(ce - base),
                     "parting_margin_median": margin[len(margin) // 2]})
        print(f"share {b:.2f}: {ce:.4f} nats/token, perplexity x{math.exp(ce - base):.3f} of share {shares[0]:g}; "
              f"the teacher's lead at run m's {len(gaps)} parting tokens, median {margin[len(margin) // 2]:.3f}")
    res = {"stamp": [stamp(script="benchmarks/sharpened_target_cost.py")], "teacher": args.teacher,
           "files": list(FILES), "tokens": n, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sharpened_target_cost.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
