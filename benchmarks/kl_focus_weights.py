"""Where `--kl-focus` puts the weight, on the real teacher, before a GPU run is spent on it (`DistillConfig.kl_focus`,
`convert/kl.py`): each token's KL counts w = 1 + F (1 - the teacher's top probability there).

On the teacher's own next-token distributions over whole standard-library files (the files of
`sharpened_target_cost.py`), for each F: the mean w (the loss's and, at most, the gradient's scale against the plain
mean, which the gradient clip sees), the share of the tokens where the teacher is unsure (top probability under 0.6)
and the share of the weight they carry; and w at the tokens where run m's student parted from the teacher's passing
HumanEval answers (`humaneval_from_openings/parting_odds.json`, the teacher's own token being its first choice).

    python benchmarks/kl_focus_weights.py --teacher qwen.gguf --out DIR    # CPU, about 5 minutes on 2 cores
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
sys.path.insert(0, str(HERE))

from sharpened_target_cost import FILES, ODDS  # noqa: E402
from stamp import stamp  # noqa: E402

UNSURE = 0.6  # a top probability under this is "unsure": the parting tokens' median was 0.43


def weight_summary(p_max: torch.Tensor, focus: float, parting_p: list[float]) -> dict:
    """For top probabilities p_max [n] and one focus F: mean w, the unsure tokens' share of tokens and of the weight,
    and the median w at the parting tokens' top probabilities."""
    w = 1 + focus * (1 - p_max)
    unsure = p_max < UNSURE
    at_parting = sorted(1 + focus * (1 - p) for p in parting_p)
    return {"focus": focus, "mean_w": w.mean().item(), "unsure_token_share": unsure.float().mean().item(),
            "unsure_weight_share": (w[unsure].sum() / w.sum()).item(),
            "parting_w_median": at_parting[len(at_parting) // 2] if at_parting else None}


def main(argv: list[str] | None = None) -> dict:
    """Write kl_focus_weights.json under --out; print one line a focus."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the teacher (.gguf, folder or Hub id)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--focuses", default="0,1,2,4")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens a file (its first)")
    args = ap.parse_args(argv)
    focuses = [float(x) for x in args.focuses.split(",")]

    from convert.eval.models import load

    m = load(args.teacher, device=torch.device("cpu"), dtype=torch.float32)
    lib = Path(sysconfig.get_paths()["stdlib"])
    p_max = []
    for name in FILES:
        ids = m.tok((lib / name).read_text(), return_tensors="pt").input_ids[:, : args.tokens]
        with torch.inference_mode():
            p_max.append(torch.softmax(m.model(input_ids=ids).logits[0, :-1].float(), -1).amax(-1))
        print(f"{name}: {p_max[-1].numel()} tokens, the teacher's top probability under {UNSURE} at "
              f"{(p_max[-1] < UNSURE).float().mean().item():.1%} of them")
    p = torch.cat(p_max)
    odds = json.loads(ODDS.read_text())["problems"]
    parting = [o["parting"]["teacher_token_p"] for o in odds if o["parting"]]
    rows = [weight_summary(p, f, parting) for f in focuses]
    for r in rows:
        print(f"focus {r['focus']:g}: mean w {r['mean_w']:.3f}; unsure tokens {r['unsure_token_share']:.1%} of the "
              f"tokens carry {r['unsure_weight_share']:.1%} of the weight; w at run m's {len(parting)} parting "
              f"tokens, median {r['parting_w_median']:.2f}")
    res = {"stamp": [stamp(script="benchmarks/kl_focus_weights.py")], "teacher": args.teacher, "files": list(FILES),
           "tokens": p.numel(), "unsure_below": UNSURE, "top_p_quartiles": p.quantile(
               torch.tensor([0.25, 0.5, 0.75])).tolist(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kl_focus_weights.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
