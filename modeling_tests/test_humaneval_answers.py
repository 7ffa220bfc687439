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
