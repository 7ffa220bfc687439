"""How far the real teacher moves with its MLPs in FP8 (`convert/teacher_fp8.py`), beside how far it moves in the
bf16 that every distillation already runs it in: both against the fp32 teacher, on the CPU (the FP8 arithmetic
through its PyTorch reference), before a card is spent timing it.

Per token of whole standard-library files: KL(fp32 teacher || variant), the share of tokens whose first choice stays
the fp32 teacher's, and the perplexity ratio. The students' held-out KL to the teacher is about 0.08 nats a token
(runs l-n), the yardstick for what a target's error may cost.

    python benchmarks/teacher_fp8_error.py --teacher qwen.gguf --out DIR    # CPU, about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stamp import stamp  # noqa: E402

FILES = ("json/decoder.py", "textwrap.py")


def compare(ref: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> dict:
    """Logits [n, V] of the fp32 teacher and of a variant, next tokens [n] -> sums over the n tokens: KL(ref ||
    other), first choices kept, and both cross-entropies."""
    lr, lo = torch.log_softmax(ref.float(), -1), torch.log_softmax(other.float(), -1)
    return {"kl": (lr.exp() * (lr - lo)).sum().item(), "top1": (ref.argmax(-1) == other.argmax(-1)).sum().item(),
            "ce_ref": -lr.gather(-1, labels[:, None]).sum().item(), "ce": -lo.gather(-1, labels[:, None]).sum().item()}


def main(argv: list[str] | None = None) -> dict:
    """Write teacher_fp8_error.json under --out; print one line a variant."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the teacher (.gguf, folder or Hub id)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens a file (its first)")
    ap.add_argument("--projections", default="gate_proj,up_proj,down_proj", help="the MLP projections in FP8")
    args = ap.parse_args(argv)

    from convert.eval.models import load
    from convert.teacher_fp8 import with_fp8_mlps

    m = load(args.teacher, device=torch.device("cpu"), dtype=torch.float32)
    fp8, swapped = with_fp8_mlps(m.model, tuple(args.projections.split(",")))
    lib = Path(sysconfig.get_paths()["stdlib"])
    rows = [m.tok((lib / f).read_text(), return_tensors="pt").input_ids[:, : args.tokens] for f in FILES]
    logits = {"fp32": [], "fp8 MLPs": [], "bf16": []}
    with torch.inference_mode():
        for ids in rows:
            logits["fp32"].append(m.model(input_ids=ids).logits[0, :-1].float())
            logits["fp8 MLPs"].append(fp8(input_ids=ids).logits[0, :-1].float())
        del fp8
        bf16 = m.model.to(torch.bfloat16)
        for ids in rows:
            logits["bf16"].append(bf16(input_ids=ids).logits[0, :-1].float())
    n = sum(ids.shape[1] - 1 for ids in rows)
    res = {"stamp": [stamp(script="benchmarks/teacher_fp8_error.py")], "teacher": args.teacher, "files": list(FILES),
           "tokens": n, "fp8_projections": swapped, "projections": args.projections, "variants": {}}
    for name in ("bf16", "fp8 MLPs"):
        tot = {"kl": 0.0, "top1": 0, "ce_ref": 0.0, "ce": 0.0}
        for ref, other, ids in zip(logits["fp32"], logits[name], rows):
            for k, v in compare(ref, other, ids[0, 1:]).items():
                tot[k] += v
        r = {"kl": tot["kl"] / n, "top1_kept": tot["top1"] / n,
             "ppl_ratio": float(torch.tensor((tot["ce"] - tot["ce_ref"]) / n).exp())}
        res["variants"][name] = r
        print(f"{name}: KL to the fp32 teacher {r['kl']:.5f} nats/token, first choice kept at {r['top1_kept']:.4f} "
              f"of {n} tokens, perplexity x{r['ppl_ratio']:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher_fp8_error.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
