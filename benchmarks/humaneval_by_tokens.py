"""How HumanEval grows with distillation tokens for the recipe, read from the committed real-model records, and how
many tokens the issue's goal (80% of the teacher's passes) would take on that trend.

Every `variants.json` under `results/real_model/` is read. A student counts as the recipe when its variant has the
recipe's settings that change what is learnt (`RECIPE`); settings that change only speed (fused kernels, frozen
weights held in bf16, compile) and the stage split are ignored, so the runs of one recipe on the H200 and the H100
and at 3 and 15 minutes line up on one axis: tokens distilled. The fit is passes against log2(tokens), least
squares. With runs at two budgets only, it is a trend to plan a lease by, not a law.

    python benchmarks/humaneval_by_tokens.py --out benchmarks/results/real_model/humaneval_by_tokens
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stamp import stamp  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "real_model"
# the settings that change what a student learns, at the recipe's values (convert/README.md, since 2026-12-04)
RECIPE = {"layer_map": "jet-nemotron-2b", "lr": [0.001, 3e-05, 3e-05], "mse_weight": 1.0, "retrieval_ratio": 0.1,
          "batch_size": 16, "local1": True, "train2": "all", "init": "attention", "local1_share": 0.0,
          "chat_ratio": 0.25, "chat_file": None, "retrieval_kinds": ["passkey", "kv"], "jet_lr2": None,
          "chat_docstrings": False, "split2": 0.0, "own_answers": 0, "batch_size2": None}
# keys added after the first records: a record without one predates it, when the recipe's value was the only one
LATER = {"chat_docstrings", "split2", "own_answers", "jet_lr2", "chat_file", "batch_size2"}
GOAL = 0.8  # issue 14: HumanEval pass@1 at least 80% of the teacher's


def points(results: Path, problems: int = 164, recipe: dict = RECIPE) -> tuple[list[dict], list[int]]:
    """(the students of `recipe` measured on all `problems`: record, name, tokens, passed, card, held-out KL after
    each stage; the teacher's passes in every record that measured it on them)."""
    students, teacher = [], []
    for path in sorted(results.glob("*/variants.json")):
        res = json.loads(path.read_text())
        run = res.get("teacher_humaneval_run") or {}
        if run.get("problems") == problems:
            teacher.append(run["passed"])
        for v in res["variants"]:
            he, var = v.get("humaneval_run") or {}, v["variant"]
            steps = var.get("steps") or v["steps"]
            if he.get("problems") != problems or (len(steps) > 2 and steps[2]):  # an 8K stage: another recipe
                continue
            if all(var[k] == want if k in var else k in LATER for k, want in recipe.items()):
                students.append({"record": path.parent.name, "name": v["name"], "tokens": v["tokens"],
                                 "passed": he["passed"], "card": res["stamp"][0]["card"],
                                 "kl_by_stage": v.get("held_out_kl_by_stage")})
    return students, teacher


def fit(students: list[dict]) -> dict:
    """passed = a + b log2(tokens), least squares; needs two budgets at least."""
    xs = [math.log2(s["tokens"]) for s in students]
    ys = [s["passed"] for s in students]
    if len(set(xs)) < 2:
        raise ValueError(f"the recipe's students span {len(set(xs))} token budget(s); a trend needs two")
    line = statistics.linear_regression(xs, ys)
    return {"intercept": line.intercept, "per_doubling": line.slope}


def main(argv: list[str] | None = None) -> dict:
    """Write humaneval_by_tokens.json and .png under --out; print the trend and the tokens the goal takes on it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    students, teacher = points(args.results)
    if not teacher:
        raise SystemExit(f"no record under {args.results} holds the teacher's HumanEval on 164 problems")
    t = statistics.median(teacher)
    line = fit(students)
    goal = math.ceil(GOAL * t)
    tokens_goal = 2 ** ((goal - line["intercept"]) / line["per_doubling"])
    best = max(students, key=lambda s: s["tokens"])
    res = {"stamp": [stamp(script="benchmarks/humaneval_by_tokens.py", reads="the committed records' variants.json")],
           "recipe": RECIPE, "students": students, "teacher_passed": teacher, "teacher_median": t,
           "goal_passed": goal, "fit": line, "tokens_for_goal": tokens_goal,
           "tokens_for_goal_over_largest_run": tokens_goal / best["tokens"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "humaneval_by_tokens.json").write_text(json.dumps(res, indent=1))
    print(f"{len(students)} students of the recipe in {len({s['record'] for s in students})} records; teacher "
          f"{t:g} of 164 (median of {len(teacher)})")
    print(f"trend: {line['per_doubling']:.1f} passes a doubling of tokens; the goal ({goal}) at "
          f"{tokens_goal / 1e6:.0f} M tokens, {res['tokens_for_goal_over_largest_run']:.1f}x the largest run's "
          f"{best['tokens'] / 1e6:.1f} M ({best['record']})")
    _plot(res, args.out / "humaneval_by_tokens.png")
    return res


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for card, marker in (("H200", "o"), ("H100", "s")):
        pts = [s for s in res["students"] if card in s["card"]]
        if pts:
            ax.scatter([s["tokens"] / 1e6 for s in pts], [s["passed"] for s in pts], marker=marker,
                       label=f"the recipe's students ({card})", zorder=3)
    lo = min(s["tokens"] for s in res["students"]) / 1.5
    xs = [lo * 1.1 ** i for i in range(int(math.log(res["tokens_for_goal"] * 1.5 / lo, 1.1)) + 1)]
    f = res["fit"]
    ax.plot([x / 1e6 for x in xs], [f["intercept"] + f["per_doubling"] * math.log2(x) for x in xs], "--",
            color="gray", label=f"trend: {f['per_doubling']:.1f} passes a doubling")
    ax.axhline(res["teacher_median"], color="C2", label=f"teacher ({res['teacher_median']:g})")
    ax.axhline(res["goal_passed"], color="C3", linestyle=":", label=f"goal: 80% of the teacher's ({res['goal_passed']})")
    ax.set_xscale("log")
    ax.set_xlabel("tokens distilled (M)")
    ax.set_ylabel("HumanEval passes of 164 (greedy)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
