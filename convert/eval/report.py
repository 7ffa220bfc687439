"""The report of `jet-nemotron eval`: eval.json, eval.md (MODEL | baseline | ratio), retrieval.png (needle grid
heatmaps side by side), speed.png (tok/s vs context).

`summary(results)` is the one list of rows both the markdown table and the model card show.
"""

from __future__ import annotations

import json
from pathlib import Path


def _rows_of(suite: str, r: dict) -> list[tuple[str, float, bool]]:
    """(metric, value, higher is better) of one model's result of one suite."""
    if "error" in r:  # the suite failed on this model (e.g. out of GPU memory): one row saying so
        return [(f"{suite} (failed)", r["error"], True)]
    if suite == "ppl":
        return [(f"perplexity ({r['tokens']:,} tokens, windows of {r['window']:,})", r["perplexity"], False)]
    if suite == "niah":
        out = []
        for task in ("passkey", "niah", "multi_needle", "kv", "variable_tracking"):
            for n, acc in r.get(task, {}).get("by_length", {}).items():
                out.append((f"{task} @{int(n):,}", acc, True))
        return out
    if suite == "humaneval":
        out = [(f"HumanEval pass@1 ({r['problems']} problems)", r["pass@1"], True)]
        if r.get("decode_agreement") is not None:  # `decode_agreement.py`: the decode path writes the forward's argmax
            out.append(("HumanEval decoded tokens that are the full forward's argmax", r["decode_agreement"], True))
        return out
    if suite == "speed":
        out = []
        for row in r["rows"]:
            c = f"{row['ctx']:,}"
            out += [(f"prefill tok/s @{c}", row["prefill_tok_s"], True),
                    (f"decode tok/s @{c}, batch 1", row["decode_batch1_tok_s"], True),
                    (f"decode tok/s @{c}, largest batch", row["decode_max_batch_tok_s"], True),
                    (f"cache MB/sequence @{c}", row["cache_MB_per_seq"], False)]
        return out
    if suite == "lm-eval":
        return [(f"lm-eval {task} {metric}", v, "perplexity" not in metric and "bits" not in metric)
                for task, metrics in r.items() for metric, v in metrics.items() if metric != "sample_len"]
    raise ValueError(f"unknown suite {suite!r}")


def summary(results: dict) -> list[dict]:
    """[{metric, model, baseline, ratio}] over every suite in `results` (baseline and ratio None without one)."""
    rows = []
    for suite, per in results["suites"].items():
        if "model" not in per:  # a run cut during the baseline of an earlier suite has no later ones
            continue
        base = dict((k, v) for k, v, _ in _rows_of(suite, per["baseline"])) if per.get("baseline") else {}
        mine = _rows_of(suite, per["model"])
        for metric, value, _ in mine:
            b = base.get(metric)
            numbers = isinstance(value, (int, float)) and isinstance(b, (int, float)) and b != 0
            rows.append({"metric": metric, "model": value, "baseline": b, "ratio": value / b if numbers else None})
        seen = {m for m, _, _ in mine}
        rows += [{"metric": k, "model": None, "baseline": v, "ratio": None} for k, v in base.items() if k not in seen]
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and abs(v) < 1 and v != 0:
        return f"{v:.3f}"
    return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"


def markdown(results: dict) -> str:
    model, base = Path(results["model"]).name, Path(results["baseline"]).name if results.get("baseline") else None
    head = f"| metric | {model} |" + (f" {base} | ratio ({model} / {base}) |" if base else "")
    sep = "|---|---:|" + ("---:|---:|" if base else "")
    lines = [head, sep]
    for r in summary(results):
        cells = [r["metric"], _fmt(r["model"])] + ([_fmt(r["baseline"]), f"{r['ratio']:.2f}x" if r["ratio"] else "-"]
                                                   if base else [])
        lines.append("| " + " | ".join(cells) + " |")
    seconds = ", ".join(f"{s} {sum(p.get('seconds', {}).values()):.0f} s" for s, p in results["suites"].items())
    stamps = "".join(f"\nMeasured at commit {st.get('commit')} on {st.get('card')}, {st.get('date')}."
                     for st in results.get("stamp", []))
    return "\n".join(lines) + f"\n\nWall time per suite (all models): {seconds}.{stamps}\n"


def plot_retrieval(results: dict, path: Path) -> bool:
    """Heatmaps of the needle grid (length x depth), one per model side by side; False when there is no grid."""
    per = results["suites"].get("niah") or {}
    models = [(results[role], per[role]) for role in ("model", "baseline")
              if role in per and "grid" in per[role].get("niah", {})]  # a failed model has no grid
    if not models:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False, layout="constrained")
    for ax, (name, r) in zip(axes[0], models):
        g, lengths, depths = r["niah"]["grid"], r["lengths"], r["niah"]["depths"]
        im = ax.imshow([list(row) for row in zip(*g)], vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{n / 1000:.0f}K" if n >= 1000 else str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        for i, row in enumerate(g):
            for j, acc in enumerate(row):
                ax.text(i, j, f"{acc:.0%}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("context (tokens)")
        if ax is axes[0][0]:
            ax.set_ylabel("needle depth")
        ax.set_title(f"{Path(name).name}: needle accuracy ({r['trials']} trials/cell)", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_speed(results: dict, path: Path) -> bool:
    """Decode tok/s (batch 1 and largest batch) and prefill tok/s against context, both models."""
    per = results["suites"].get("speed") or {}
    models = [(results[role], per[role]) for role in ("model", "baseline") if "rows" in per.get(role, {})]
    if not models:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, r) in enumerate(models):
        ctx, label, c = [row["ctx"] for row in r["rows"]], Path(name).name, f"C{k}"  # one colour per model
        axes[0].plot(ctx, [row["decode_max_batch_tok_s"] for row in r["rows"]], "-o", color=c,
                     label=f"{label}, largest batch")
        axes[0].plot(ctx, [row["decode_batch1_tok_s"] for row in r["rows"]], "--o", color=c, label=f"{label}, batch 1")
        axes[1].plot(ctx, [row["prefill_tok_s"] for row in r["rows"]], "-o", color=c, label=label)
    for ax, title in ((axes[0], "decode"), (axes[1], "prefill, one sequence")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("tok/s")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"speed on {models[0][1]['device']} ({models[0][1]['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(results: dict, folder: Path) -> list[Path]:
    """eval.json, eval.md and the PNGs into `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(results, indent=1))
    (folder / "eval.md").write_text(markdown(results))
    written = [folder / "eval.json", folder / "eval.md"]
    for name, fn in (("retrieval.png", plot_retrieval), ("speed.png", plot_speed)):
        if fn(results, folder / name):
            written.append(folder / name)
    return written
