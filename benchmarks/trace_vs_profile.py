"""A run's own traced steps (`convert/step_trace.py`, `TRACE_STEPS` in the session) beside the card job's profile of
the same step at random weights (`profile_distill.py`): wall and kernel time a step, by kernel family, and the kernels
whose time differs most. Where the run's step is longer at the same clocks (2026-12-07: 579 against 537 ms a stage-1
step on an H100), this says whether its kernels take longer, which ones, or whether the card waits between them.

    python benchmarks/trace_vs_profile.py RUN_TRACE.json PROFILE.json [--top 15] [--out diff.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from stamp import stamp  # noqa: E402

from convert.step_trace import by_family  # noqa: E402


def compare(run: dict, prof: dict, top: int = 15) -> dict:
    """{"wall", "busy", "families", "kernels"}: each a (run, profile, difference) in ms a step; families and kernels
    by the largest difference first. A kernel absent from one side counts 0 there (records before ac0a60b kept each
    side's longest 200 kernels, so there a short kernel's absence may be the cut, not the step)."""
    for name, rec in (("run trace", run), ("profile", prof)):
        if "kernels" not in rec:
            raise ValueError(f"{name} has no kernel table (a profile from before 2026-12-07 evening, or not a trace)")
    wall = (run["wall_ms_per_step"], prof["ms_per_step"])
    busy = (run["busy_ms_per_step"], sum(k["ms_per_step"] for k in prof["kernels"]))
    fr, fp = by_family(run["kernels"]), by_family(prof["kernels"])
    fams = sorted(((f, fr.get(f, 0.0), fp.get(f, 0.0)) for f in set(fr) | set(fp)), key=lambda t: -abs(t[1] - t[2]))
    kr = {k["name"]: k["ms_per_step"] for k in run["kernels"]}
    kp = {k["name"]: k["ms_per_step"] for k in prof["kernels"]}
    kern = sorted(((n, kr.get(n, 0.0), kp.get(n, 0.0)) for n in set(kr) | set(kp)), key=lambda t: -abs(t[1] - t[2]))
    return {"wall": [*wall, wall[0] - wall[1]], "busy": [*busy, busy[0] - busy[1]],
            "families": [[f, a, b, a - b] for f, a, b in fams],
            "kernels": [[n, a, b, a - b] for n, a, b in kern[:top]]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a traced run's stage{N}_steps{a}-{b}.json")
    ap.add_argument("profile", type=Path, help="profile_distill_*.json of the same stage")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    diff = compare(json.loads(args.run.read_text()), json.loads(args.profile.read_text()), args.top)
    print(f"{'ms a step':58s} {'run':>9s} {'profile':>9s} {'run - profile':>14s}")
    for label, row in (("wall", diff["wall"]), ("kernels busy", diff["busy"])):
        print(f"{label:58s} {row[0]:9.1f} {row[1]:9.1f} {row[2]:+14.1f}")
    print("by family:")
    for f, a, b, d in diff["families"]:
        print(f"  {f:56s} {a:9.1f} {b:9.1f} {d:+14.1f}")
    print(f"the {args.top} kernels that differ most:")
    for n, a, b, d in diff["kernels"]:
        print(f"  {n[:56]:56s} {a:9.2f} {b:9.2f} {d:+14.2f}")
    if args.out:
        args.out.write_text(json.dumps({"stamp": [stamp(reads=[str(args.run), str(args.profile)])], **diff}, indent=1))
    return diff


if __name__ == "__main__":
    main()
