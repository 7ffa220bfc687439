"""How far the real teacher moves with its MLPs in FP8 (`convert/teacher_fp8.py`), beside how far it moves in the
bf16 that every distillation already runs it in: both against the fp32 teacher, on the CPU (the FP8 arithmetic
through its PyTorch reference), before a card is spent timing it.

Per token of whole standard-library files: KL(fp32 teacher || variant), the share of tokens whose first choice stays
the fp32 teacher's, and the perplexity ratio. The students' held-out KL to the teacher is about 0.08 nats a token
(runs l-n), the yardstick for what a target's error may cost. And per layer, the normalised MSE of each attention
output against the fp32 teacher's: the targets of attention transfer (stage 1), where the students end at 0.01-0.2
(run n's `held_out_mse_by_layer`).

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


def quantize_blocks(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x [M, K] rounded to e4m3 with one scale a block of rows x cols (its largest entry at 448), multiplied back out:
    [M, K] fp32. The DeepSeek-style scales a blockwise FP8 product takes (1 x 128 for inputs, 128 x 128 for weights);
    emulated here only, to measure their error before building them."""
    from convert.teacher_fp8 import E4M3_MAX

    m, k = x.shape
    b = x.float().reshape(m // rows, rows, k // cols, cols)
    amax = b.abs().amax(dim=(1, 3), keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return ((b / scale).to(torch.float8_e4m3fn).float() * scale).reshape(m, k)


class BlockFp8Linear(torch.nn.Module):
    """A frozen nn.Linear [N, K] with the weight in 128 x 128 blocks and each input in 1 x 128 blocks, emulated."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.w = quantize_blocks(linear.weight.detach(), 128, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = quantize_blocks(x.reshape(-1, x.shape[-1]), 1, 128)
        return (x2 @ self.w.t()).to(x.dtype).reshape(*x.shape[:-1], self.w.shape[0])


def attention_outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits [n - 1, V] fp32 of `ids` [1, n], every layer's attention output [n, d] fp32) of one forward."""
    outs, hooks = [], []
    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, o: outs.append(o[0][0].float())))
    try:
        logits = model(input_ids=ids).logits[0, :-1].float()
    finally:
        for h in hooks:
            h.remove()
    return logits, outs


def main(argv: list[str] | None = None) -> dict:
    """Write teacher_fp8_error.json under --out; print one line a variant."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the teacher (.gguf, folder or Hub id)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens a file (its first)")
    ap.add_argument("--projections", default="gate_proj,up_proj,down_proj", help="the MLP projections in FP8")
    ap.add_argument("--blocks", action="store_true", help="scales a block of 1 x 128 (inputs) and 128 x 128 "
                                                          "(weights), emulated, instead of a row each")
    args = ap.parse_args(argv)

    from convert.eval.models import load
    from convert.teacher_fp8 import with_fp8_mlps

    m = load(args.teacher, device=torch.device("cpu"), dtype=torch.float32)
    # --blocks: the emulated block scales in place of a scale a row
    fp8, swapped = with_fp8_mlps(m.model, tuple(args.projections.split(",")),
                                 **({"linear": BlockFp8Linear} if args.blocks else {}))
    lib = Path(sysconfig.get_paths()["stdlib"])
    rows = [m.tok((lib / f).read_text(), return_tensors="pt").input_ids[:, : args.tokens] for f in FILES]
    from convert.distill_loss import normalised_mse

    logits = {"fp32": [], "fp8 MLPs": [], "bf16": []}
    attn = {k: [] for k in logits}
    with torch.inference_mode():
        for ids in rows:
            for name, model in (("fp32", m.model), ("fp8 MLPs", fp8)):
                lg, at = attention_outputs(model, ids)
                logits[name].append(lg)
                attn[name].append(at)
        del fp8
        bf16 = m.model.to(torch.bfloat16)
        for ids in rows:
            lg, at = attention_outputs(bf16, ids)
            logits["bf16"].append(lg)
            attn["bf16"].append(at)
    n = sum(ids.shape[1] - 1 for ids in rows)
    res = {"stamp": [stamp(script="benchmarks/teacher_fp8_error.py")], "teacher": args.teacher, "files": list(FILES),
           "tokens": n, "fp8_projections": swapped, "projections": args.projections,
           "scales": "blocks of 1 x 128 (inputs), 128 x 128 (weights)" if args.blocks else "a row each", "variants": {}}
    for name in ("bf16", "fp8 MLPs"):
        tot = {"kl": 0.0, "top1": 0, "ce_ref": 0.0, "ce": 0.0}
        for ref, other, ids in zip(logits["fp32"], logits[name], rows):
            for k, v in compare(ref, other, ids[0, 1:]).items():
                tot[k] += v
        r = {"kl": tot["kl"] / n, "top1_kept": tot["top1"] / n,
             "ppl_ratio": float(torch.tensor((tot["ce"] - tot["ce_ref"]) / n).exp())}
        # per layer, over the files' tokens together: the attention targets' error, normalised as stage 1's loss
        layers = len(attn["fp32"][0])
        by_layer = [normalised_mse(torch.cat([a[i] for a in attn[name]]),
                                   torch.cat([a[i] for a in attn["fp32"]])).item() for i in range(layers)]
        r["attention_nmse_by_layer"] = by_layer
        r["attention_nmse_median"] = sorted(by_layer)[layers // 2]
        r["attention_nmse_max"] = max(by_layer)
        res["variants"][name] = r
        print(f"{name}: KL to the fp32 teacher {r['kl']:.5f} nats/token, first choice kept at {r['top1_kept']:.4f} "
              f"of {n} tokens, perplexity x{r['ppl_ratio']:.4f}; attention outputs' normalised MSE median "
              f"{r['attention_nmse_median']:.2e}, largest {r['attention_nmse_max']:.2e} over {layers} layers")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher_fp8_error.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
