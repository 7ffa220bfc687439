"""benchmarks/humaneval_groups.py: two groups of runs against each other, by runs (permutation) and by problems
(sign test), and how alike each group's runs are."""

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import humaneval_groups as hg  # noqa: E402

N = 20  # problems


def _record(folder: Path, passed: set, name: str = "humaneval_student.jsonl.gz", teacher: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / name, "wt") as f:
        for i in range(N):
            f.write(json.dumps({"task_id": f"HumanEval/{i}", "passed": i in passed}) + "\n")
    if teacher:  # the teacher's file beside it is not a run of either group
        with gzip.open(folder / "humaneval_teacher.jsonl.gz", "wt") as f:
            f.write(json.dumps({"task_id": "HumanEval/0", "passed": True}) + "\n")
    return folder


def test_two_groups_compared_by_runs_and_by_problems(tmp_path, capsys):
    a = [_record(tmp_path / "a1", set(range(10))), _record(tmp_path / "a2", set(range(2, 12)))]
    b = [_record(tmp_path / "b1", set(range(5))), _record(tmp_path / "b2", set(range(4)))]
    res = hg.main(["--a", *map(str, a), "--b", *map(str, b), "--out", str(tmp_path / "out")])
    assert res["passed"] == {"a1": 10, "a2": 10, "b1": 5, "b2": 4} and (res["mean_a"], res["mean_b"]) == (10, 4.5)
    # of the 6 ways to split 4 runs in two pairs, the real one and its mirror are the farthest apart
    assert res["permutation"] == {"splits": 6, "p": pytest.approx(2 / 6)}
    # pass rates a / b: problems 0-1 at 1/2 against 1 (b higher), 2-3 at 1 against 1, 4 at 1 against 1/2, 5-9 at 1
    # against 0, 10-11 at 1/2 against 0 (a higher on 4-11): 8 against 2, p = 2 (1 + 10 + 45) / 2^10
    assert res["problems"]["a_higher"] == 8 and res["problems"]["b_higher"] == 2
    assert res["problems"]["sign_p"] == pytest.approx(2 * 56 / 2 ** 10)
    # a1 ^ a2 = {0, 1, 10, 11}; b1 ^ b2 = {4}; across: a1 ^ b1 = 5-9, a1 ^ b2 = 4-9, a2 ^ b1 = {0, 1, 5-11},
    # a2 ^ b2 = {0, 1, 4-11}
    assert res["disagree"] == {"within_a": 4, "within_b": 1, "across": pytest.approx((5 + 6 + 9 + 10) / 4)}
    assert res["every_run_passes"] == {"a": 8, "b": 4} and res["some_run_passes"] == {"a": 12, "b": 5}
    assert json.loads((tmp_path / "out" / "humaneval_groups.json").read_text())["groups"] == {
        "a": ["a1", "a2"], "b": ["b1", "b2"]}
    assert "permutation p = 0.333 over 6 splits" in capsys.readouterr().out


def test_bad_groups_are_refused_with_the_problem_named(tmp_path):
    one = _record(tmp_path / "one", {1})
    two = _record(tmp_path / "two", {2})
    three = _record(tmp_path / "three", {3})
    with pytest.raises(ValueError, match="each group needs two runs at least"):
        hg.main(["--a", str(one), "--b", str(two), str(three), "--out", str(tmp_path / "o")])
    _record(tmp_path / "double", {1}, "humaneval_other.jsonl.gz")
    double = _record(tmp_path / "double", {1})
    with pytest.raises(ValueError, match="expected one student's humaneval_"):
        hg.main(["--a", str(one), str(double), "--b", str(two), str(three), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="a run is in both groups"):
        hg.main(["--a", str(one), str(two), "--b", str(two), str(three), "--out", str(tmp_path / "o")])
