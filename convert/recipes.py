"""Named distillation recipes: the flag values of a measured run, so that `jet-nemotron distill --recipe NAME`
reproduces it with one flag. A flag given on the command line wins over the recipe's value (the recipe only
changes the defaults), so `--recipe 15min --micro-batch2 8` is the same recipe on a card with room for 8 rows.

`15min` is issue 14's 15-minute recipe on one card, runs l and m of the README's table
(`benchmarks/variants/acceptance_v8_15min.json` and `acceptance_v9_15min.json`): stage 1 as attention transfer
(batch 16, lr 1e-3), then stage 2 with the MLPs frozen and held in bf16 and the JetBlocks at their own peak lr of
1e-4 (the rest 3e-5), each stage ending by its half of 14.5 minutes (the step counts are caps); 25% chat rows and
10% generated retrieval rows, which need an instruct teacher with a chat template and a code corpus. On an H200
(run m) it distilled 37.7 M tokens of a 1.5B Qwen to a held-out perplexity 1.05x the teacher's. Stage 2 takes 4 rows
of 2,048 tokens a forward, which fits an 80 GB card (59.6 GB at the peak, H100 profile); run m took 8 on the H200.
Stage 2's residual stream runs in bf16 (`residual_bf16`) since run o (`acceptance_v12_15min.json`, H100): the same
held-out KL as run m (0.082), HumanEval within the recipe's spread (86 of 117), and 3.9% off a stage-2 step.
Stage 2 leaves the embeddings and the tied head as converted too (`train2` "mixers": the JetBlocks, kept attention
and norms train) since run p (`acceptance_v13_15min.json`, H100): the same held-out KL (0.082) and HumanEval (86,
+4 / -4 against o), 1.6% off a profiled stage-2 step, and no optimizer state for the 233 M embedding weights.
With mixers, stage 2 at 4 rows peaks at 47.7 GB on an H100 and at 8 rows at 75.4 GB, 6% less time a step in
profiles of two leases (`benchmarks/results/profiles/stage2_mb8_h100/`). A 5-minute run of the recipe held 8 rows
through both stages on an H100 (`benchmarks/results/real_model/mfu_v13_5min_h100/`: 1,040 ms a stage-2 step, 39.7%
MFU, no allocator retries; run p at 4 rows 1,053-1,056 ms on another lease); the recipe keeps 4 until a 15-minute
run has held 8 (three times the stage-2 steps, with their evaluations and fragmentation).
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "15min": {
        "batch_size": 16, "micro_batch": 8, "micro_batch2": 4,
        "stage1_steps": 1000, "stage2_steps": 20000, "stage3_steps": 0,
        "time_budget_min": 14.5, "time_split": "0.5,0.5",
        "lr1": 1e-3, "lr2": 3e-5, "jet_lr2": 1e-4, "warmup": 30,
        "train2": "mixers", "bf16": True, "frozen_bf16": True, "residual_bf16": True,
        "fused_adam": True,
        "retrieval_ratio": 0.1, "chat_ratio": 0.25,
    },
}


def recipe_defaults(name: str) -> dict:
    """The flag values (by parameter name) of recipe `name`; an unknown name is an error naming the known ones."""
    if name not in RECIPES:
        raise ValueError(f"--recipe: no recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return dict(RECIPES[name])
