"""Read the HumanEval answers a run wrote (`distill_variants.py`: OUT/humaneval_<name>.jsonl.gz, one line a problem:
task_id, passed, result, completion) and say how each student fails beside the teacher:

    python benchmarks/humaneval_answers.py benchmarks/results/real_model/knobs_3min            # a results folder
    python benchmarks/humaneval_answers.py DIR --teacher humaneval_teacher.jsonl.gz --show 3    # + 3 lost answers

Per file: passes, the teacher's passes kept and lost, passes the teacher lacks, and the failures by kind: a wrong
answer (an assertion fails), an error raised (by its exception), code that does not parse, and the answers that
loop (their end repeats: cut at the token limit, mostly). Why a score moved is read here, not guessed from it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

TEACHER = "humaneval_teacher.jsonl.gz"  # the teacher's answer file in a record folder


def read_answers(path: Path) -> dict[str, dict]:
    """{task_id: row} of one answers file; a row without the four fields is an error naming the file and line."""
    out = {}
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f, 1):
            row = json.loads(line)
            missing = {"task_id", "passed", "result", "completion"} - set(row)
            if missing:
                raise ValueError(f"{path}: line {i} lacks {sorted(missing)}")
            out[row["task_id"]] = row
    return out


def failure_kind(row: dict) -> str:
    """'passed', 'wrong answer', 'syntax error', 'timed out' or 'raises <Exception>' from a row's result text."""
    r = row["result"]
    if row["passed"]:
        return "passed"
    if "timed out" in r:
        return "timed out"
    m = re.match(r"failed: (\w+)", r)
    name = m.group(1) if m else "other"
    if name == "AssertionError":
        return "wrong answer"
    if name in ("SyntaxError", "IndentationError"):
        return "syntax error"
    return f"raises {name}"


def looks_looping(completion: str, tail: int = 60, repeats: int = 3) -> bool:
    """True when the answer's last `tail` characters occur `repeats` times or more in it: the loop a student falls
    into when it runs to the token limit (in `knobs_3min/` this finds 20 / 8 / 90 / 4 / 1 answers where the run
    counted 24 / 11 / 92 / 5 / 1 cut at the limit)."""
    c = completion.rstrip()
    return len(c) >= repeats * tail and c.count(c[-tail:]) >= repeats


def compare(student: dict[str, dict], teacher: dict[str, dict] | None) -> dict:
    """Counts of one student's answers, against the teacher's where given."""
    kinds = Counter(failure_kind(r) for r in student.values())
    res = {"problems": len(student), "passed": kinds.pop("passed", 0), "failures": dict(kinds.most_common()),
           "looping": sum(looks_looping(r["completion"]) for r in student.values() if not r["passed"])}
    if teacher is not None:
        t_pass = {k for k, r in teacher.items() if r["passed"]}
        s_pass = {k for k, r in student.items() if r["passed"]}
        res |= {"teacher_passed": len(t_pass), "kept": len(s_pass & t_pass), "lost": sorted(t_pass - s_pass),
                "gained": sorted(s_pass - t_pass), "divergence": divergence(teacher, student)}
    return res


def first_difference(a: Sequence, b: Sequence) -> int:
    """The first index where `a` and `b` differ (characters of two answers, or their token ids); the shorter's
    length if one is the other's prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def in_first_line(answer: str, k: int) -> bool:
    """Whether index `k` of `answer` lies in its first line (leading blank lines skipped)."""
    return "\n" not in answer[:k].lstrip("\n")


def student_files(folder: Path) -> list[Path]:
    """The students' answer files of a record folder: every humaneval_*.jsonl.gz but the teacher's."""
    return sorted(p for p in folder.glob("humaneval_*.jsonl.gz") if p.name != TEACHER)


def divergence(teacher: dict, student: dict) -> dict:
    """How a student's answers part from the teacher's on the problems the teacher passes: written exactly as the
    teacher did, written otherwise and passed, and for the lost ones where the student's answer first differs, as a
    share of the teacher's answer, and how many already differ in its first line (another approach from the start,
    not an answer that drifts late)."""
    same, other, lost_at, first_line = 0, 0, [], 0
    for task, t in teacher.items():
        if not t["passed"]:
            continue
        a, b = t["completion"], student[task]["completion"]
        if a == b:
            same += 1
        elif student[task]["passed"]:
            other += 1
        else:
            k = first_difference(a, b)
            lost_at.append(k / max(1, len(a)))
            first_line += in_first_line(a, k)
    lost_at.sort()
    return {"same": same, "other_passed": other, "lost": len(lost_at), "lost_in_first_line": first_line,
            "lost_at_median": lost_at[len(lost_at) // 2] if lost_at else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder holding humaneval_*.jsonl.gz files")
    ap.add_argument("--teacher", default=TEACHER, help="the teacher's file in that folder")
    ap.add_argument("--show", type=int, default=0, help="print this many lost answers of each student")
    args = ap.parse_args(argv)
    files = sorted(args.folder.glob("humaneval_*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no humaneval_*.jsonl.gz in {args.folder}")
    t_path = args.folder / args.teacher
    teacher = read_answers(t_path) if t_path.is_file() else None
    for path in files:
        rows = read_answers(path)
        res = compare(rows, None if path == t_path else teacher)
        name = path.name[len("humaneval_"):-len(".jsonl.gz")]
        line = f"{name}: {res['passed']} of {res['problems']} passed"
        if "kept" in res:
            line += (f"; of the teacher's {res['teacher_passed']}: {res['kept']} kept, {len(res['lost'])} lost; "
                     f"{len(res['gained'])} the teacher fails")
        print(line)
        if "divergence" in res:
            d = res["divergence"]
            at = "" if d["lost_at_median"] is None else f" at a median {d['lost_at_median']:.0%} of its length"
            print(f"  the teacher's passes: {d['same']} written as the teacher did, {d['other_passed']} otherwise and "
                  f"passed; the {d['lost']} lost part from its answer{at}, {d['lost_in_first_line']} in its first line")
        fails = ", ".join(f"{k} {n}" for k, n in res["failures"].items())
        print(f"  failures: {fails or 'none'}; looping (the answer's end repeats): {res['looping']}")
        if args.show and "lost" in res:
            for task in res["lost"][: args.show]:
                print(f"  --- {task} ({rows[task]['result']})")
                print("\n".join("    " + ln for ln in rows[task]["completion"].splitlines()[:15]))


if __name__ == "__main__":
    main()
