"""Whether HumanEval follows the held-out KL after stage 1 or the final one, over the committed long runs of the
recipe (any batch size), read from the real-model records.

The students are `humaneval_by_tokens.py`'s recipe at any batch, with no 8K stage, measured on all 164 problems,
with at least --min-tokens distilled (default 20 M: the 15-minute runs; the 3-minute ones sit at another stage-2
KL altogether). For each measure the script gives Pearson's r with the passes and the least-squares slope, and
plots both. With a handful of runs and a spread of about 6 problems between leases of one recipe, it shows a lead
to test, not a law.

    python benchmarks/humaneval_by_stage_kl.py --out benchmarks/results/real_model/humaneval_by_stage_kl
    python benchmarks/humaneval_by_stage_kl.py --any-recipe \
        --out benchmarks/results/real_model/humaneval_by_stage_kl_any

`--any-recipe` takes every long run on all 164 problems whatever its recipe (frozen MLPs, the JetBlocks' own rate, a
sharpened target): the question is whether stage 1's end point predicts HumanEval across the runs a lease makes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import humaneval_by_tokens as hbt  # noqa: E402
from stamp import stamp  # noqa: E402

ANY_BATCH = {k: v for k, v in hbt.RECIPE.items() if k not in ("batch_size", "batch_size2")}


def main(argv: list[str] | None = None) -> dict:
    """Write humaneval_by_stage_kl.json and .png under --out; print r and the slope for each measure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=hbt.RESULTS)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--min-tokens", type=float, default=20e6)
    ap.add_argument("--any-recipe", action="store_true", help="every long run, whatever its recipe")
    args = ap.parse_args(argv)
    students, _ = hbt.points(args.results, recipe={} if args.any_recipe else ANY_BATCH)
    which = "runs of any recipe" if args.any_recipe else "runs of the recipe"
    runs = [s for s in students if s["tokens"] >= args.min_tokens and s["kl_by_stage"]
            and len(s["kl_by_stage"]) == 2 and None not in s["kl_by_stage"]]
    if len(runs) < 3:
        raise ValueError(f"{len(runs)} {which} with at least {args.min_tokens / 1e6:g} M tokens and a "
                         f"held-out KL after both stages; a correlation needs 3")
    passed = [s["passed"] for s in runs]
    measures = {}
    for i, name in enumerate(("after stage 1", "after stage 2")):
        kl = [s["kl_by_stage"][i] for s in runs]
        try:
            r = statistics.correlation(kl, passed)
        except statistics.StatisticsError as err:  # every run at one value of a measure
            raise ValueError(f"held-out KL {name} against HumanEval: {err}") from err
        slope = statistics.linear_regression(kl, passed).slope  # passes per nat of held-out KL
        measures[name] = {"r": r, "passes_per_nat": slope}
        print(f"held-out KL {name}: {min(kl):.3f}-{max(kl):.3f}, r = {r:+.2f} with HumanEval's "
              f"{min(passed)}-{max(passed)} passes over {len(runs)} runs")
    res = {"stamp": [stamp(script="benchmarks/humaneval_by_stage_kl.py", reads="the committed records' "
                           "variants.json")], "any_recipe": args.any_recipe, "min_tokens": args.min_tokens,
           "runs": runs, "measures": measures}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "humaneval_by_stage_kl.json").write_text(json.dumps(res, indent=1))
    _plot(runs, measures, args.min_tokens, args.out / "humaneval_by_stage_kl.png", which)
    return res


def _plot(runs: list[dict], measures: dict, min_tokens: float, path: Path, which: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for i, (ax, (name, m)) in enumerate(zip(axes, measures.items())):
        for s in runs:
            ax.scatter(s["kl_by_stage"][i], s["passed"], marker="s" if "H100" in s["card"] else "o", color="C0")
            ax.annotate(s["record"].replace("acceptance_", ""), (s["kl_by_stage"][i], s["passed"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"held-out KL {name}: r = {m['r']:+.2f} (n = {len(runs)})", fontsize=9)
        ax.set_xlabel("held-out KL (nats a token)")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.2)
    axes[0].set_ylabel("HumanEval passes of 164 (greedy)")
    fig.suptitle(f"{which} with at least {min_tokens / 1e6:g} M tokens (squares: H100, circles: H200)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
