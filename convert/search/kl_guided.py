"""The cheap comparison: rank layers by what restoring each one alone buys, keep the top K (and M for windows).

KL-guided layer selection (arXiv 2512.20569; REFERENCE.md): starting from the all-JetBlock student, restore one
softmax-attention layer at a time, measure how much the distillation KL drops, keep the K layers whose restoration
helps most. Here the "KL" is whatever `--objective` combines (plain `lm` is the published method), measured on the
same supernet as the beam search, so the two methods differ only in the search. Sliding windows: the same sweep
with "swa", on top of the chosen attention layers. Cost: L + (L - K) sub-network evaluations, no matter K.
"""

from __future__ import annotations

from .objectives import Normaliser
from .placement import Scorer, single_layer_scores


def kl_guided(scorer: Scorer, norm: Normaliser, num_layers: int, attn: int, swa: int, progress: bool = True) -> dict:
    """Same result layout as `placement.beam_search` (rounds hold the ranking)."""
    base = tuple(["jet"] * num_layers)
    single = {"attn": single_layer_scores(scorer, norm, base, "attn", progress)}
    a = single["attn"]
    order = [i for _, i in sorted(zip(a["combined"], a["layers"]))]
    chosen = list(base)
    for i in order[:attn]:
        chosen[i] = "attn"
    rounds = [[{"layer": i, "combined": c} for c, i in sorted(zip(a["combined"], a["layers"]))]]
    if swa:
        single["swa"] = single_layer_scores(scorer, norm, tuple(chosen), "swa", progress)
        s = single["swa"]
        for _, i in sorted(zip(s["combined"], s["layers"]))[:swa]:
            chosen[i] = "swa"
        rounds.append([{"layer": i, "combined": c} for c, i in sorted(zip(s["combined"], s["layers"]))])
    best = tuple(chosen)
    return {"placement": best, "combined": norm.combined(scorer(best)), "rounds": rounds, "single": single}
