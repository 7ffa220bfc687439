"""Whether two groups of runs (two recipes, each run on several leases) differ on HumanEval by more than the leases do.

`convert.eval.paired` compares two answer files; a recipe change is a difference between groups, each run a lease
with its own noise (four leases of one 15-minute recipe passed 84-88 problems). Two tests, neither assuming more
than the answer files hold:
- a permutation test over runs: of every way to split the runs into two groups of these sizes, the share whose
  totals differ at least as much as the real split's (exact; with four runs a group, 70 splits, so p >= 1/35);
- a sign test over problems: each problem's pass rate in group a against group b, counting the problems where
  either is higher (a problem passed in 3 of 4 runs of a and 1 of 4 of b counts once, for a).
Beside them, how alike a group's runs are: the problems two of its runs disagree on, on average, within each group
and across, and the problems every run of a group passes or none does.

    python benchmarks/humaneval_groups.py --a DIR_A1 DIR_A2 ... --b DIR_B1 ... --out DIR
       # each DIR a record folder of benchmarks/results/real_model/ with one student's humaneval_*.jsonl.gz
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert.eval.paired import passed_ids, sign_p  # noqa: E402
from humaneval_answers import TEACHER, student_files  # noqa: E402
from stamp import stamp  # noqa: E402


def student_file(record: Path) -> Path:
    """The one student answer file of a record folder (the teacher's is `humaneval_teacher.jsonl.gz`)."""
    files = student_files(record)
    if len(files) != 1:
        raise ValueError(f"{record}: expected one student's humaneval_*.jsonl.gz besides {TEACHER}, found "
                         f"{[p.name for p in files] or 'none'}")
    return files[0]


def compare(a: dict[str, set], b: dict[str, set], problems: set) -> dict:
    """Group a against group b: {run: passed problems} each, every run scored on `problems`."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each group needs two runs at least, to see its own spread; got {len(a)} and {len(b)}")
    runs = {**a, **b}
    if len(runs) != len(a) + len(b):
        raise ValueError(f"a run is in both groups: {sorted(set(a) & set(b))}")
    for name, ids in runs.items():
        if not ids <= problems:
            raise ValueError(f"{name} passes problems that are not among those compared: {sorted(ids - problems)[:5]}")
    total = {name: len(ids) for name, ids in runs.items()}
    gap = statistics.mean(total[r] for r in a) - statistics.mean(total[r] for r in b)
    splits = list(itertools.combinations(runs, len(a)))
    as_far = sum(abs(statistics.mean(total[r] for r in s) - statistics.mean(total[r] for r in runs if r not in s))
                 >= abs(gap) - 1e-9 for s in splits)
    rate = {g: {p: sum(p in ids for ids in grp.values()) / len(grp) for p in problems}
            for g, grp in (("a", a), ("b", b))}
    a_higher = sum(rate["a"][p] > rate["b"][p] for p in problems)
    b_higher = sum(rate["b"][p] > rate["a"][p] for p in problems)

    def disagree(pairs) -> float:
        return statistics.mean(len(runs[x] ^ runs[y]) for x, y in pairs)

    return {"passed": total, "mean_a": statistics.mean(total[r] for r in a),
            "mean_b": statistics.mean(total[r] for r in b),
            "permutation": {"splits": len(splits), "p": as_far / len(splits)},
            "problems": {"a_higher": a_higher, "b_higher": b_higher, "sign_p": sign_p(a_higher, b_higher)},
            "disagree": {"within_a": disagree(itertools.combinations(a, 2)),
                         "within_b": disagree(itertools.combinations(b, 2)),
                         "across": disagree(itertools.product(a, b))},
            "every_run_passes": {"a": len(set.intersection(*a.values())), "b": len(set.intersection(*b.values()))},
            "some_run_passes": {"a": len(set.union(*a.values())), "b": len(set.union(*b.values()))}}


def main(argv: list[str] | None = None) -> dict:
    """Write humaneval_groups.json under --out and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, nargs="+", required=True, help="record folders of group a")
    ap.add_argument("--b", type=Path, nargs="+", required=True, help="record folders of group b")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    groups, problems = {}, None
    for g, records in (("a", args.a), ("b", args.b)):
        groups[g] = {}
        for record in records:
            passed, every = passed_ids(student_file(record))
            if problems is not None and every != problems:
                raise ValueError(f"{record}: scored on {len(every)} problems, the first record on {len(problems)}")
            problems = every
            groups[g][record.name] = passed
    res = compare(groups["a"], groups["b"], problems)
    res["stamp"] = [stamp(script="benchmarks/humaneval_groups.py", reads="the records' student answer files")]
    res["groups"] = {g: sorted(grp) for g, grp in groups.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "humaneval_groups.json").write_text(json.dumps(res, indent=1))
    print(f"a: {res['mean_a']:.2f} passes a run ({len(args.a)} runs), b: {res['mean_b']:.2f} ({len(args.b)}); "
          f"permutation p = {res['permutation']['p']:.3f} over {res['permutation']['splits']} splits; problems "
          f"a higher {res['problems']['a_higher']}, b higher {res['problems']['b_higher']} (sign p = "
          f"{res['problems']['sign_p']:.3f}); two runs disagree on {res['disagree']['within_a']:.1f} problems "
          f"within a, {res['disagree']['within_b']:.1f} within b, {res['disagree']['across']:.1f} across")
    return res


if __name__ == "__main__":
    main()
