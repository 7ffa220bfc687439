"""benchmarks/humaneval_answers.py: how a student's HumanEval answers fail beside the teacher's."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import humaneval_answers as ha  # noqa: E402


def _write(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _row(i: int, passed: bool, result: str = "passed", completion: str = "    return 1\n") -> dict:
    return {"task_id": f"HumanEval/{i}", "passed": passed, "result": result, "completion": completion}


def test_failures_are_told_apart_and_compared_with_the_teachers_passes(tmp_path, capsys):
    loop = "    x = x + 1\n" * 40
    teacher = [_row(0, True), _row(1, True), _row(2, True), _row(3, False, "failed: AssertionError")]
    student = [_row(0, True), _row(1, False, "failed: AssertionError: Test 1"),
               _row(2, False, "failed: SyntaxError: '(' was never closed", loop),
               _row(3, True)]
    _write(tmp_path / "humaneval_teacher.jsonl.gz", teacher)
    _write(tmp_path / "humaneval_student-a.jsonl.gz", student)
    res = ha.compare(ha.read_answers(tmp_path / "humaneval_student-a.jsonl.gz"),
                     ha.read_answers(tmp_path / "humaneval_teacher.jsonl.gz"))
    assert res["passed"] == 2 and res["teacher_passed"] == 3 and res["kept"] == 1
    assert res["lost"] == ["HumanEval/1", "HumanEval/2"] and res["gained"] == ["HumanEval/3"]
    assert res["failures"] == {"wrong answer": 1, "syntax error": 1} and res["looping"] == 1
    assert ha.failure_kind(_row(5, False, "failed: NameError: name 'math' is not defined")) == "raises NameError"
    assert ha.failure_kind(_row(5, False, "timed out")) == "timed out"
    ha.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "student-a: 2 of 4 passed; of the teacher's 3: 1 kept, 2 lost; 1 the teacher fails" in out


def test_a_line_without_its_fields_is_named(tmp_path):
    path = _write(tmp_path / "humaneval_x.jsonl.gz", [_row(0, True), {"task_id": "HumanEval/1", "passed": False}])
    with pytest.raises(ValueError, match=r"humaneval_x.jsonl.gz: line 2 lacks \['completion', 'result'\]"):
        ha.read_answers(path)
    with pytest.raises(SystemExit, match="no humaneval_"):
        ha.main([str(tmp_path / "empty")])


def test_the_teachers_passes_are_split_by_where_the_students_answer_parts_from_the_teachers():
    """Written exactly as the teacher did, written otherwise and passed, or lost; a lost answer's first difference as a
    share of the teacher's answer, and whether it lies in the answer's first line (leading blank lines skipped)."""
    t_code = "\n    total = 0\n    for x in xs:\n        total += x\n    return total\n"
    teacher = {r["task_id"]: r for r in [_row(0, True, completion=t_code), _row(1, True, completion=t_code),
                                         _row(2, True, completion=t_code), _row(3, True, completion=t_code),
                                         _row(4, False, "failed: AssertionError", t_code)]}
    student = {r["task_id"]: r for r in [
        _row(0, True, completion=t_code),                                        # the same answer
        _row(1, True, completion="    return sum(xs)\n"),                        # another, and it passes
        _row(2, False, "failed: AssertionError", "\n    total = 1\n    return total\n"),  # parts in line 1
        _row(3, False, "failed: AssertionError", t_code.replace("return total", "return -total")),  # late
        _row(4, True, completion="    return sum(xs)\n")]}                       # the teacher failed it: not counted
    d = ha.divergence(teacher, student)
    assert (d["same"], d["other_passed"], d["lost"], d["lost_in_first_line"]) == (1, 1, 2, 1)
    late = t_code.index("return total") + len("return ")
    assert d["lost_at_median"] == pytest.approx(late / len(t_code))  # the larger of the two (index len // 2)
    assert ha.first_difference("abc", "abd") == 2 and ha.first_difference("ab", "abc") == 2
