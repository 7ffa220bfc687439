"""Where distilled students lose HumanEval against their teacher: the problems the teacher passes, in quartiles of
the length of the teacher's own answer, and the share of them each student passes.

A student that agrees with its teacher on a fixed share of tokens deviates more often in a longer answer; if the
students' losses grow with the teacher's answer length, per-token fidelity (what more distillation tokens buy) is
what limits them, rather than some kinds of problem. Length also tracks difficulty, so this shows a pattern, not
its cause.

    python benchmarks/humaneval_by_length.py --teacher T.jsonl.gz --students A.jsonl.gz B.jsonl.gz ... --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from humaneval_answers import read_answers  # noqa: E402
from stamp import stamp  # noqa: E402


def by_length(teacher: dict, students: list[dict], groups: int = 4) -> list[dict]:
    """The teacher's passed problems in `groups` equal groups by its answer's length (characters), shortest first:
    [{"problems", "chars": [lo, hi], "passed": [share passed by each student], "mean"}]."""
    for s in students:
        missing = set(teacher) - set(s)
        if missing:
            raise ValueError(f"a student has no answer to {len(missing)} of the teacher's problems, e.g. "
                             f"{sorted(missing)[0]}")
    ids = sorted((i for i in teacher if teacher[i]["passed"]), key=lambda i: (len(teacher[i]["completion"]), i))
    if len(ids) < groups:
        raise ValueError(f"the teacher passes {len(ids)} problems: fewer than {groups} groups")
    out = []
    for g in range(groups):
        part = ids[g * len(ids) // groups:(g + 1) * len(ids) // groups]
        lens = [len(teacher[i]["completion"]) for i in part]
        shares = [sum(s[i]["passed"] for i in part) / len(part) for s in students]
        out.append({"problems": len(part), "chars": [min(lens), max(lens)], "passed": shares,
                    "mean": statistics.mean(shares)})
    return out


def main(argv: list[str] | None = None) -> dict:
    """Write humaneval_by_length.json and .png under --out; print one line a group."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="the teacher's answer file")
    ap.add_argument("--students", type=Path, nargs="+", required=True, help="the students' answer files")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    groups = by_length(read_answers(args.teacher), [read_answers(p) for p in args.students], args.groups)
    for g in groups:
        print(f"teacher's answers of {g['chars'][0]}-{g['chars'][1]} characters ({g['problems']} problems): the "
              f"students pass {g['mean']:.2f} of them ({', '.join(f'{x:.2f}' for x in g['passed'])})")
    res = {"stamp": [stamp(script="benchmarks/humaneval_by_length.py")], "teacher": str(args.teacher),
           "students": [str(p) for p in args.students], "groups": groups}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "humaneval_by_length.json").write_text(json.dumps(res, indent=1))
    _plot(groups, len(args.students), args.out / "humaneval_by_length.png")
    return res


def _plot(groups: list[dict], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = range(len(groups))
    ax.bar(x, [g["mean"] for g in groups], color="C0", alpha=0.6, label=f"mean of {n} students")
    for i, g in enumerate(groups):
        ax.scatter([i] * len(g["passed"]), g["passed"], color="C0", s=12, zorder=3)
    ax.set_xticks(list(x), [f"{g['chars'][0]}-{g['chars'][1]}" for g in groups])
    ax.set_xlabel("length of the teacher's answer (characters), problems the teacher passes")
    ax.set_ylabel("share the students pass")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
