"""Beam search over placements of K full-attention and M sliding-window layers, scored through the supernet.

A placement is a tuple of "jet" / "attn" / "swa" per layer. The search grows placements one layer at a time from
all-JetBlock: K rounds that each turn one more "jet" layer into "attn", then M rounds into "swa" (the paper's
order: full attention is placed for retrieval first; sliding windows serve what stays local). Each round extends
every placement in the beam by every free layer, scores the new ones (`Scorer`, memoised: the same set reached
along two paths is scored once) and keeps the `width` best by the combined normalised objective.

Cost, in sub-network evaluations (each one forward pass over every eval set, no training):
    first "attn" round: L;  round r > 1: <= width * (L - r + 1);  "swa" rounds likewise
    total <= L + width * ((K - 1) * L + M * L)  (fewer after de-duplication)
e.g. L = 28, K = 2, M = 2, width 4: <= 28 + 4 * 84 = 364 (257 distinct at most); L = 24, K = 2, width 1: 47.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .objectives import Normaliser, score


@dataclass
class Scorer:
    """Scores placements on the eval sets (memoised; every evaluation appended to `log`, and to `cache_path` as
    JSON lines so a killed search resumes without re-scoring)."""

    net: object
    sets: dict
    device: object
    autocast: bool = False
    cache_path: Path | None = None
    memo: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self):
        if self.cache_path is not None and Path(self.cache_path).is_file():
            for line in Path(self.cache_path).read_text().splitlines():
                rec = json.loads(line)
                self.memo[tuple(rec["placement"])] = rec["scores"]

    def __call__(self, placement: tuple[str, ...]) -> dict:
        placement = tuple(placement)
        if placement not in self.memo:
            t0 = time.perf_counter()
            self.net.set_placement(placement)
            scores = score(self.net, self.sets, self.device, self.autocast)
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.memo[placement] = scores
            rec = {"placement": list(placement), "scores": scores, "seconds": dt}
            self.log.append(rec)
            if self.cache_path is not None:
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        return self.memo[placement]

    @property
    def evaluations(self) -> int:
        return len(self.memo)


def _with(placement: tuple[str, ...], i: int, kind: str) -> tuple[str, ...]:
    return placement[:i] + (kind,) + placement[i + 1:]


def single_layer_scores(scorer: Scorer, norm: Normaliser, base: tuple[str, ...], kind: str,
                        progress: bool = False) -> dict:
    """Restore one layer at a time to `kind` on top of `base`: {"layers": [i...], objective: [normalised score per
    layer], "combined": [...]} (layers already not "jet" in `base` are left out)."""
    free = [i for i, t in enumerate(base) if t == "jet"]
    out: dict = {"layers": free, "combined": [], "base": {k: [i for i, t in enumerate(base) if t == k]
                                                         for k in ("attn", "swa")}}
    for k in norm.weights:
        out[k] = []
    from tqdm.auto import tqdm

    for i in tqdm(free, desc=f"one layer as {kind}", unit="layer", disable=not progress, leave=False):
        s = scorer(_with(base, i, kind))
        n = norm.normalised(s)
        for k in norm.weights:
            out[k].append(n[k])
        out["combined"].append(norm.combined(s))
    return out


def beam_search(scorer: Scorer, norm: Normaliser, num_layers: int, attn: int, swa: int, width: int,
                progress: bool = True) -> dict:
    """Returns {"placement": best tuple, "combined": its score, "rounds": [[(placement, combined), ...]...],
    "single": {"attn": single-layer scores from all-jet, "swa": single-layer "swa" scores on the best attn set}}."""
    from tqdm.auto import tqdm

    if width < 1:
        raise ValueError(f"--beam must be >= 1, got {width}")
    beam = [tuple(["jet"] * num_layers)]
    rounds, single = [], {}
    plan = ["attn"] * attn + ["swa"] * swa
    bar = tqdm(total=len(plan), desc="beam search", unit="round", disable=not progress)
    for r, kind in enumerate(plan):
        if kind == "swa" and "swa" not in single:
            single["swa"] = single_layer_scores(scorer, norm, beam[0], "swa", progress)
        if r == 0:
            single["attn"] = single_layer_scores(scorer, norm, beam[0], "attn", progress)
        cands = sorted({_with(p, i, kind) for p in beam for i, t in enumerate(p) if t == "jet"})
        ranked = sorted(((norm.combined(scorer(c)), c) for c in cands), key=lambda x: (x[0], x[1]))
        beam = [c for _, c in ranked[:width]]
        rounds.append([{"placement": list(c), "combined": s} for s, c in ranked[: max(width, 8)]])
        bar.update(1)
        bar.set_postfix(best=f"{ranked[0][0]:.4f}", evals=scorer.evaluations)
    bar.close()
    if not plan:
        single["attn"] = single_layer_scores(scorer, norm, beam[0], "attn")
    best = beam[0]
    return {"placement": best, "combined": norm.combined(scorer(best)), "rounds": rounds, "single": single}
