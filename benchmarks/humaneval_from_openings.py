"""Whether a student loses a HumanEval problem by how it opens its answer or by how it carries it out: the teacher
continues, greedily, from the student's own answer up to the end of the line where it first parts from the
teacher's, on every problem the teacher passes and the student fails.

If the teacher, given the student's opening, fails as well, the opening was the loss (a different approach that
the teacher cannot carry to a pass either); if it passes, the student lost the problem after its opening. A control
gives the teacher its own answer up to the same line and must pass (it checks that this machine's teacher is the
one that wrote the answers: a different card or dtype can change a greedy answer).

    python benchmarks/humaneval_from_openings.py --teacher qwen.gguf --answers RECORD_FOLDER --out DIR

RECORD_FOLDER holds `humaneval_teacher.jsonl.gz` and one student's `humaneval_*.jsonl.gz` (a record of
`benchmarks/record_run.py`). Runs on the CPU in fp32 (about 25 minutes for 32 problems on 2 cores), or on a card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from humaneval_answers import TEACHER, first_difference, in_first_line, read_answers, student_files  # noqa: E402
from stamp import stamp  # noqa: E402


def opening(answer: str, other: str) -> str:
    """`answer` up to the end of the line holding its first difference from `other` (the whole of it if that line
    is its last)."""
    k = first_difference(answer, other)
    end = answer.find("\n", k)
    return answer if end < 0 else answer[:end + 1]


def cases(teacher: dict, student: dict) -> list[dict]:
    """The problems the teacher passes and the student fails, with each model's opening up to that line and
    whether the difference lies in the answer's first line."""
    out = []
    for task, t in teacher.items():
        s = student[task]
        if not t["passed"] or s["passed"]:
            continue
        k = first_difference(t["completion"], s["completion"])
        out.append({"task_id": task, "student_opening": opening(s["completion"], t["completion"]),
                    "teacher_opening": opening(t["completion"], s["completion"]),
                    "first_line": in_first_line(t["completion"], k)})
    return out


def continue_from(m, problems: dict, rows: list[dict], key: str, max_new_tokens: int, batch_size: int) -> list[dict]:
    """The model's greedy continuation of each row's `key` opening after its HumanEval prompt, run in the sandbox."""
    from convert.eval.generation import greedy
    from convert.eval.humaneval import CHAT_STOPS, cut, program, prompt_text, run_sandboxed

    texts = [prompt_text(m.tok, problems[r["task_id"]])[0] + r[key] for r in rows]
    ids = [m.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    new = greedy(m, ids, max_new_tokens, batch_size, stop_strings=CHAT_STOPS, desc=f"from the {key}")
    out = []
    for r, n in zip(rows, new):
        completion = r[key] + cut(m.tok.decode(n, skip_special_tokens=True), CHAT_STOPS)
        result = run_sandboxed(program(problems[r["task_id"]], completion))
        out.append({"task_id": r["task_id"], "passed": result == "passed", "result": result,
                    "completion": completion})
    return out


def parting_odds(m, problems: dict, teacher: dict, student: dict, rows: list[dict]) -> None:
    """Into each row: at the first token where the student's answer parts from the teacher's (both tokenised after
    the prompt), the teacher's probability of its own token, of the student's, and of its runner-up: whether the
    teacher was sure there or nearly undecided. One forward of the teacher's text a row."""
    import torch

    from convert.eval.humaneval import prompt_text

    for r in rows:
        head = m.tok(prompt_text(m.tok, problems[r["task_id"]])[0], add_special_tokens=False)["input_ids"]
        t_ids = m.tok(teacher[r["task_id"]]["completion"], add_special_tokens=False)["input_ids"]
        s_ids = m.tok(student[r["task_id"]]["completion"], add_special_tokens=False)["input_ids"]
        j = first_difference(t_ids, s_ids)
        if j >= min(len(t_ids), len(s_ids)):
            continue  # one answer is the other's prefix: no parting token
        ids = torch.tensor([head + t_ids[:j]], device=m.model.device)
        with torch.inference_mode():
            probs = m.model(input_ids=ids).logits[0, -1].float().softmax(-1)
        top2 = probs.topk(2)
        r["parting"] = {"token": j, "teacher_token_p": probs[t_ids[j]].item(),
                        "student_token_p": probs[s_ids[j]].item(), "top1_p": top2.values[0].item(),
                        "top2_p": top2.values[1].item(), "teacher_token_is_top1": int(top2.indices[0]) == t_ids[j],
                        "student_token_is_runner_up": int(top2.indices[1]) == s_ids[j]}


def main(argv: list[str] | None = None) -> dict:
    """Write from_openings.json under --out; print the counts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the teacher (.gguf, folder or Hub id)")
    ap.add_argument("--answers", type=Path, required=True, help="a record folder with the teacher's and one "
                                                                "student's humaneval_*.jsonl.gz")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--odds-only", action="store_true", help="only the teacher's odds at each parting token "
                                                              "(parting_odds.json; one forward a problem)")
    args = ap.parse_args(argv)
    students = student_files(args.answers)
    if len(students) != 1:
        raise SystemExit(f"{args.answers}: want one student's humaneval_*.jsonl.gz beside the teacher's, "
                         f"found {[p.name for p in students]}")
    teacher = read_answers(args.answers / TEACHER)
    student_rows = read_answers(students[0])
    rows = cases(teacher, student_rows)

    from convert.eval.humaneval import load_problems
    from convert.eval.models import load

    problems = {p["task_id"]: p for p in load_problems()}
    m = load(args.teacher)
    if args.odds_only:
        parting_odds(m, problems, teacher, student_rows, rows)
        return _odds_summary(rows, args.out, args)
    own = continue_from(m, problems, rows, "teacher_opening", args.max_new_tokens, args.batch_size)
    theirs = continue_from(m, problems, rows, "student_opening", args.max_new_tokens, args.batch_size)
    for r, a, b in zip(rows, own, theirs):
        r |= {"from_own_opening": a, "from_student_opening": b}
    first = [r for r in rows if r["first_line"]]
    summary = {"lost": len(rows), "first_line": len(first),
               "control_passed": sum(r["from_own_opening"]["passed"] for r in rows),
               "teacher_passes_from_student_opening": sum(r["from_student_opening"]["passed"] for r in rows),
               "of_first_line": sum(r["from_student_opening"]["passed"] for r in first)}
    print(f"{summary['lost']} problems the teacher passes and the student fails ({summary['first_line']} parting in "
          f"the first line): from its own opening the teacher passes {summary['control_passed']} (control); from "
          f"the student's it passes {summary['teacher_passes_from_student_opening']} "
          f"({summary['of_first_line']} of the first-line ones)")
    res = {"stamp": [stamp(script="benchmarks/humaneval_from_openings.py")], "answers": str(args.answers),
           "student": students[0].name, "summary": summary, "problems": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "from_openings.json").write_text(json.dumps(res, indent=1))
    return res


def _odds_summary(rows: list[dict], out: Path, args) -> dict:
    """parting_odds.json under `out`; print how sure the teacher was where the students part from it."""
    import statistics

    got = [r for r in rows if "parting" in r]
    sure = [r["parting"]["teacher_token_p"] for r in got]
    summary = {"lost": len(rows), "with_a_parting_token": len(got),
               "teacher_token_p_median": statistics.median(sure) if sure else None,
               "student_token_p_median": statistics.median(r["parting"]["student_token_p"] for r in got) if got
               else None,
               "teacher_sure": sum(p >= 0.8 for p in sure), "teacher_undecided": sum(p < 0.5 for p in sure),
               "student_token_is_runner_up": sum(r["parting"]["student_token_is_runner_up"] for r in got)}
    print(f"{summary['with_a_parting_token']} parting tokens: the teacher's own token at a median p = "
          f"{summary['teacher_token_p_median']:.2f}, the student's at {summary['student_token_p_median']:.2f}; "
          f"teacher sure (p >= 0.8) at {summary['teacher_sure']}, under 0.5 at {summary['teacher_undecided']}; the "
          f"student's token is the teacher's runner-up at {summary['student_token_is_runner_up']}")
    res = {"stamp": [stamp(script="benchmarks/humaneval_from_openings.py --odds-only")], "answers": str(args.answers),
           "summary": summary, "problems": [{"task_id": r["task_id"], "first_line": r["first_line"],
                                             **({"parting": r["parting"]} if "parting" in r else {})} for r in rows]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "parting_odds.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
