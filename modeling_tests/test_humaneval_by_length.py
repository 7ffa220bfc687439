"""benchmarks/humaneval_by_length.py: the teacher's passed problems in groups by its answer's length, and what each
student passes of each group."""

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import humaneval_by_length as hbl  # noqa: E402


def _answers(path, rows):
    with gzip.open(path, "wt") as f:
        for task, passed, completion in rows:
            f.write(json.dumps({"task_id": task, "passed": passed, "result": "passed" if passed else "failed: ",
                                "completion": completion}) + "\n")
    return path


def test_students_are_scored_on_the_teachers_passed_problems_shortest_first(tmp_path, capsys):
    # the teacher passes p0..p7 (answers of 1..8 characters) and fails p8; student a passes the four shortest,
    # b every other one; both pass p8, which counts for neither
    teacher = _answers(tmp_path / "t.jsonl.gz", [(f"p{i}", i < 8, "x" * (i + 1)) for i in range(9)])
    a = _answers(tmp_path / "a.jsonl.gz", [(f"p{i}", i < 4 or i == 8, "") for i in range(9)])
    b = _answers(tmp_path / "b.jsonl.gz", [(f"p{i}", i % 2 == 0 or i == 8, "") for i in range(9)])
    res = hbl.main(["--teacher", str(teacher), "--students", str(a), str(b), "--groups", "2", "--out",
                    str(tmp_path / "out")])
    short, long_ = res["groups"]
    assert (short["chars"], long_["chars"]) == ([1, 4], [5, 8])
    assert short["passed"] == [1.0, 0.5] and long_["passed"] == [0.0, 0.5]
    assert (short["mean"], long_["mean"]) == (0.75, 0.25)
    assert (tmp_path / "out" / "humaneval_by_length.png").stat().st_size > 0
    assert "1-4 characters (4 problems): the students pass 0.75" in capsys.readouterr().out


def test_a_student_without_some_answers_or_a_broken_file_is_named(tmp_path):
    teacher = hbl.read_answers(_answers(tmp_path / "t.jsonl.gz", [("p0", True, "x"), ("p1", True, "xx")]))
    with pytest.raises(ValueError, match="no answer to 1 of the teacher's problems, e.g. p1"):
        hbl.by_length(teacher, [{"p0": {"passed": True, "completion": ""}}], groups=2)
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt") as f:
        f.write('{"task_id": "p0"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl.gz: line 1 lacks \['completion', 'passed', 'result'\]"):
        hbl.read_answers(tmp_path / "bad.jsonl.gz")
