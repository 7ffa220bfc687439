"""Whether two models' pass-or-fail results on the same problems differ by more than chance: an exact sign test.

Two students scored on the same 164 HumanEval problems are paired: most problems both pass or both fail, and only the
problems one passes and the other fails say anything about which is better. Under "neither is better" each of those
is a fair coin, so the chance of a split at least as lopsided as the one seen is a binomial tail (McNemar's exact
test). At 3 minutes of distillation one recipe scored 57, 63, 59 and 58 on four leases; a gap of a few problems is
that noise, and this test says so with a number instead of a rule of thumb.

    python -m convert.eval.paired A.jsonl.gz B.jsonl.gz   # HumanEval answer files ({"task_id", "passed"} a line)
    python -m convert.eval.paired TEACHER.jsonl.gz STUDENT.jsonl.gz --ratio   # + the student's share of the
                                                                                # teacher's passes, with an interval
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path


def _within(problems: set, **passed: set) -> None:
    """Each named set of passed problems must lie among `problems`; else an error naming the set."""
    for name, ids in passed.items():
        if not ids <= problems:
            raise ValueError(f"{name} passes problems that are not among those compared: {sorted(ids - problems)[:5]}")


def sign_p(a_wins: int, b_wins: int) -> float:
    """Two-sided exact probability of a split of a_wins + b_wins at least this uneven if each went either way with
    chance 1/2 (1 when there is none)."""
    n, k = a_wins + b_wins, min(a_wins, b_wins)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def sign_test(a_passed: set, b_passed: set, problems: set) -> dict:
    """b against a over `problems`: `gained` (b passes, a fails), `lost` (a passes, b fails) and `p`, the two-sided
    exact probability of a split of gained + lost at least this uneven if each went either way with chance 1/2."""
    _within(problems, a=a_passed, b=b_passed)
    gained, lost = len(b_passed - a_passed), len(a_passed - b_passed)
    return {"gained": gained, "lost": lost, "p": sign_p(gained, lost)}


def ratio_interval(teacher: set, student: set, problems: set, draws: int = 10_000, level: float = 0.95,
                   seed: int = 0) -> dict:
    """The student's passes over the teacher's on `problems` (issue 14's measure) and a percentile bootstrap
    interval for it: each draw resamples the problems with replacement, keeping each problem's two results together
    (they are paired: both models answer it). It says how far the ratio could move with other problems of the same
    kind; not how far another lease of the same recipe would move it (a fifth of the greedy answers flip between
    leases, which `sign_test` between two leases measures). {"ratio", "low", "high", "draws", "level"}."""
    import numpy as np

    _within(problems, teacher=teacher, student=student)
    if not teacher:
        raise ValueError("the teacher passes none of the problems: no ratio")
    ids = sorted(problems)
    t = np.array([i in teacher for i in ids], dtype=np.int64)
    s = np.array([i in student for i in ids], dtype=np.int64)
    picks = np.random.default_rng(seed).integers(0, len(ids), size=(draws, len(ids)))
    t_sum = t[picks].sum(axis=1)
    ratios = s[picks].sum(axis=1)[t_sum > 0] / t_sum[t_sum > 0]  # a draw without a teacher pass has no ratio
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return {"ratio": len(student) / len(teacher), "low": float(low), "high": float(high), "draws": draws,
            "level": level}


def passed_ids(path: Path) -> tuple[set, set]:
    """(passed task ids, all task ids) of a HumanEval answer file (jsonl, gzipped or not)."""
    opener = gzip.open if path.suffix == ".gz" else open
    passed, every = set(), set()
    with opener(path, "rt") as f:
        for i, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                every.add(row["task_id"])
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{path}: line {i} is not an answer with a task_id ({err})") from None
            if row.get("passed"):
                passed.add(row["task_id"])
    return passed, every


def main(argv: list[str] | None = None) -> dict:
    """Print and return b against a on the problems both answer files hold."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="the reference's answers")
    ap.add_argument("b", type=Path, help="the answers compared with them")
    ap.add_argument("--ratio", action="store_true", help="a is the teacher: also b's passes over a's, with a "
                                                         "bootstrap interval over the problems")
    args = ap.parse_args(argv)
    (pa, ea), (pb, eb) = passed_ids(args.a), passed_ids(args.b)
    common = ea & eb
    if not common:
        raise SystemExit(f"{args.a} and {args.b} share no problems")
    r = sign_test(pa & common, pb & common, common)
    print(f"{len(common)} problems: {args.a.name} {len(pa & common)}, {args.b.name} {len(pb & common)}; "
          f"b gains {r['gained']}, loses {r['lost']}; p = {r['p']:.3f} (two-sided exact sign test)")
    if args.ratio:
        q = ratio_interval(pa & common, pb & common, common)
        print(f"b's passes over a's: {q['ratio']:.1%} ({q['level']:.0%} bootstrap interval over the problems "
              f"{q['low']:.1%}-{q['high']:.1%}, {q['draws']:,} draws)")
        r = r | {"ratio": q}
    return r


if __name__ == "__main__":
    main()
