"""convert/eval/paired.py: the exact sign test that says whether two HumanEval scores differ by more than chance."""

import gzip
import json
import math

import pytest

from convert.eval.paired import main, ratio_interval, sign_test


def test_the_sign_test_counts_only_the_problems_the_two_disagree_on():
    """The v5 lease's own-answers student against its base (H100, 2026-12-05): 6 problems gained, 17 lost of 164.
    The p-value is the binomial tail summed by hand here, and the problems both pass or both fail do not move it."""
    base = set(range(17)) | set(range(100, 141))  # 58 passes
    student = set(range(17, 23)) | set(range(100, 141))  # 47 passes: 17 of base's lost, 6 gained
    r = sign_test(base, student, set(range(164)))
    tail = sum(math.comb(23, i) for i in range(7)) / 2 ** 23
    assert (r["gained"], r["lost"]) == (6, 17) and r["p"] == pytest.approx(2 * tail) and 0.03 < r["p"] < 0.04
    more_shared = sign_test(base | {160}, student | {160}, set(range(164)))
    assert more_shared == r
    assert sign_test(base, base, set(range(164))) == {"gained": 0, "lost": 0, "p": 1.0}
    assert sign_test(set(), set(range(10)), set(range(164)))["p"] == pytest.approx(2 / 2 ** 10)
    with pytest.raises(ValueError, match="not among those compared"):
        sign_test({200}, set(), set(range(164)))


def test_the_command_compares_two_answer_files_on_the_problems_they_share(tmp_path, capsys):
    def answers(name, passed, ids):
        path = tmp_path / name
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps({"task_id": f"HumanEval/{i}", "passed": i in passed}) + "\n" for i in ids)
        return path

    a = answers("a.jsonl.gz", {0, 1, 2}, range(6))
    b = answers("b.jsonl.gz", {2, 3, 4, 7}, range(8))  # 6 and 7 are not in a: left out
    r = main([str(a), str(b)])
    assert (r["gained"], r["lost"]) == (2, 2) and r["p"] == 1.0
    assert "6 problems" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "passed": true}\n{"passed": false}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        main([str(a), str(bad)])


def test_the_ratio_to_the_teacher_comes_with_an_interval_that_narrows_with_more_problems():
    """Issue 14's measure, the student's passes over the teacher's, with a paired bootstrap over the problems: the
    interval holds the ratio, is the same for the same seed, and is about half as wide on four times the problems."""
    teacher, student = set(range(0, 80)), set(range(0, 40)) | {150, 151}  # 42 of 80: 0.525
    r = ratio_interval(teacher, student, set(range(160)))
    assert r["ratio"] == pytest.approx(42 / 80) and r["low"] < r["ratio"] < r["high"]
    assert r == ratio_interval(teacher, student, set(range(160)))
    four = ratio_interval({i + k * 160 for i in teacher for k in range(4)},
                          {i + k * 160 for i in student for k in range(4)}, set(range(640)))
    assert four["ratio"] == r["ratio"]
    assert 0.4 < (four["high"] - four["low"]) / (r["high"] - r["low"]) < 0.6
    same = ratio_interval(teacher, teacher, set(range(160)))
    assert (same["ratio"], same["low"], same["high"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="teacher passes none"):
        ratio_interval(set(), student, set(range(160)))
    with pytest.raises(ValueError, match="student passes problems that are not among"):
        ratio_interval(teacher, {999}, set(range(160)))


def test_the_command_gives_the_ratio_when_asked(tmp_path, capsys):
    def answers(name, passed):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"task_id": f"HumanEval/{i}", "passed": i in passed}) + "\n"
                                for i in range(20)))
        return path

    r = main([str(answers("t.jsonl", set(range(10)))), str(answers("s.jsonl", set(range(8)))), "--ratio"])
    assert r["ratio"]["ratio"] == pytest.approx(0.8) and r["ratio"]["low"] <= 0.8 <= r["ratio"]["high"]
    assert "b's passes over a's: 80.0% (95% bootstrap interval over the problems " in capsys.readouterr().out
    assert "ratio" not in main([str(tmp_path / "t.jsonl"), str(tmp_path / "s.jsonl")])
