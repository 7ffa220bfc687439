"""What a placement search leaves behind: the layer map (the converter's `jet-nemotron-layer-map/v1`, with the
per-layer scores under "search"), a heatmap PNG layer x objective, the search log and timings."""

from __future__ import annotations

import json
from pathlib import Path

from ..layer_map import LayerMap


def plot_heatmap(result: dict, objectives: list[str], path: Path, title: str) -> None:
    """One panel per swept kind ("attn", then "swa" on top of the chosen attention): layers down, objectives across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = [k for k in ("attn", "swa") if k in result["single"]]
    cols = objectives + ["combined"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.2 + 1.1 * len(cols) * len(kinds), 1.2 + 0.28 * result["num_layers"]),
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        m = np.full((result["num_layers"], len(cols)), np.nan)
        single = result["single"][kind]
        for j, k in enumerate(cols):
            for i, s in zip(single["layers"], single[k]):
                m[i, j] = 1.0 - s
        im = ax.imshow(np.clip(m, -0.25, 1.0), aspect="auto", cmap="viridis", vmin=-0.25, vmax=1.0)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j] == m[i, j]:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] < 0.5 else "black")
        chosen = [i for i, t in enumerate(result["placement"]) if t == kind]
        ax.set_yticks(range(m.shape[0]), [f"{i}{' *' if i in chosen else ''}" for i in range(m.shape[0])], fontsize=7)
        ax.set_xticks(range(len(cols)), cols, rotation=30, fontsize=8)
        base = single.get("base", {}).get("attn") or []
        final = [i for i, t in enumerate(result["placement"]) if t == "attn"]
        # the window sweep runs on the best attention set of its time; a wider beam may end on another one
        note = f" (attn at {base}" + (f"; the final map's: {final})" if base != final else ")") if base else \
            " (all others JetBlock)"
        ax.set_title(f"restore one layer as {kind}" + note, fontsize=9)
        ax.set_ylabel("layer (* = chosen)")
        fig.colorbar(im, ax=ax, fraction=0.05, label="gap closed (1 = source)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_supernet(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in ("loss", "kl", "mse"):
        ax.plot(steps, [h[key] for h in history], label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("supernet step (one sampled sub-network each)")
    ax.set_ylabel("nats/token (kl), relative (mse)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_map_json(result: dict, jet: dict, window: int | None, base_model: str, method: str,
                   weights: dict[str, float]) -> dict:
    """The searched map in `jet-nemotron-layer-map/v1`, per-layer scores per objective under "search"."""
    types = list(result["placement"])
    search = {"method": method, "objective": weights, "combined": result["combined"],
              "scores": {kind: dict(s) for kind, s in result["single"].items()},
              "scores_note": "normalised per objective: 0 = the source's score, 1 = all-JetBlock's; lower is better; "
                             "'attn' restores one attention layer on all-JetBlock, 'swa' one window on the chosen "
                             "attention layers",
              "endpoints": result.get("endpoints")}
    lm = LayerMap(types, jet={k: v for k, v in jet.items() if v is not None},
                  swa={"window_size": int(window)} if window and "swa" in types else {},
                  source="search", metadata={"base_model": base_model, "search": search})
    return lm.to_json()


def write_outputs(folder: Path, result: dict, layer_map: dict, log: list, summary: dict, objectives: list[str],
                  title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "layer_map.json").write_text(json.dumps(layer_map, indent=1))
    (folder / "search_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (folder / "search.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_heatmap(result, objectives, folder / "heatmap.png", title)
    if summary.get("supernet", {}).get("history"):
        plot_supernet(summary["supernet"]["history"], folder / "supernet_loss.png")
