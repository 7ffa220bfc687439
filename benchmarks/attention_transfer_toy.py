"""CPU toy ablation of stage 1: end-to-end (KL + attention MSE) vs attention transfer (`DistillConfig.local`) vs
half of each, at equal wall clock, from one conversion of a pretrained tiny Qwen2 (the demo's teacher: 6 layers,
hidden 128, 300 steps on stdlib text; map jet,jet,attn,jet,swa,jet). Each arm's steps = its budget / its own
ms per step measured over 10 steps. Held-out KL on the stdlib's held-out files.

    python benchmarks/attention_transfer_toy.py --out benchmarks/results      # ~4 minutes on 2 CPU cores

A toy: it says whether the mechanism helps at this scale, not at 1.5B (that is distill_variants.py's
`attention-transfer` on the GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from stamp import stamp  # noqa: E402

from convert.data import pack_documents  # noqa: E402
from convert.demo import DEMO_MAP, make_teacher  # noqa: E402
from convert.distill import DistillConfig, distill, eval_kl  # noqa: E402
from convert.layer_map import parse_spec  # noqa: E402
from convert.qwen_to_jet import convert_model  # noqa: E402
from convert.tiny_teacher import read_corpus, stdlib_files  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=60.0, help="wall clock of each arm")
    ap.add_argument("--teacher-steps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as td:
        teacher, tok = make_teacher(Path(td) / "teacher", steps=args.teacher_steps)
    teacher.eval()
    rows = pack_documents((("train", t) for t in read_corpus(stdlib_files("train"), 600_000)), tok, 128,
                          eval_fraction=0.0).train
    held = pack_documents((("eval", t) for t in read_corpus(stdlib_files("eval"), 100_000)), tok, 128,
                          eval_fraction=0.0).train[:64]
    base = convert_model(teacher, parse_spec(DEMO_MAP), window=32).float()

    def cfg(steps: int, local: bool) -> DistillConfig:
        return DistillConfig(stage=1, steps=steps, batch_size=16, micro_batch=16, lr=3e-3, warmup_steps=5,
                             log_every=5, local=local)

    ms = {local: distill(copy.deepcopy(base), teacher, rows, cfg(10, local))["history"][-1]["ms_per_step"]
          for local in (False, True)}
    res = {"stamp": [stamp()], "budget_s": args.budget_s, "held_out_kl_converted": eval_kl(base, teacher, held),
           "ms_per_step": {"end_to_end": ms[False], "local": ms[True]}, "arms": {}}
    T = args.budget_s
    for name, plan in (("end-to-end", [(False, T)]), ("attention transfer", [(True, T)]),
                       ("transfer then end-to-end", [(True, T / 2), (False, T / 2)])):
        student, t, steps = copy.deepcopy(base), time.perf_counter(), []
        for local, seconds in plan:
            n = max(1, int(seconds * 1000 / ms[local]))
            distill(student, teacher, rows, cfg(n, local))
            steps.append(n)
        res["arms"][name] = {"steps": steps, "wall_s": time.perf_counter() - t,
                             "held_out_kl": eval_kl(student, teacher, held)}
        print(f"{name}: steps {steps}, held-out KL {res['arms'][name]['held_out_kl']:.4f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_transfer_toy.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
