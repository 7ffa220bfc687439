"""benchmarks/humaneval_by_tokens.py: the recipe's students picked out of variants.json records, the trend of their
HumanEval passes against tokens, and the tokens the goal takes on it."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import humaneval_by_tokens as hbt  # noqa: E402


def _record(folder: Path, variants: list, teacher: int | None = None) -> None:
    folder.mkdir(parents=True)
    res = {"stamp": [{"card": "NVIDIA H200"}], "variants": variants}
    if teacher is not None:
        res["teacher_humaneval_run"] = {"passed": teacher, "problems": 164}
    (folder / "variants.json").write_text(json.dumps(res))


def _student(name, tokens, passed, steps=(10, 5, 0), problems=164, **changes):
    var = dict(hbt.RECIPE, steps=list(steps), fused_adam=True, split=[0.55, 0.45, 0.0]) | changes
    return {"name": name, "tokens": tokens, "steps": list(steps), "variant": var,
            "humaneval_run": {"passed": passed, "problems": problems}}


def test_the_recipes_students_give_the_trend_and_the_goals_tokens(tmp_path, capsys):
    _record(tmp_path / "a", [_student("base", 2 ** 22, 50), _student("more chats", 2 ** 22, 70, chat_ratio=0.5),
                             _student("8K stage", 2 ** 22, 70, steps=(10, 5, 3)),
                             _student("40 problems", 2 ** 22, 30, problems=40)], teacher=100)
    older = _student("base, before own answers existed", 2 ** 24, 60)
    del older["variant"]["own_answers"]  # an older record lacks a later key: its default, the recipe's
    _record(tmp_path / "b", [older], teacher=104)
    res = hbt.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")])
    assert [s["name"] for s in res["students"]] == ["base", "base, before own answers existed"]
    assert res["fit"]["per_doubling"] == pytest.approx(5.0) and res["teacher_median"] == 102
    assert res["goal_passed"] == math.ceil(0.8 * 102) == 82
    assert res["tokens_for_goal"] == pytest.approx(2 ** (24 + (82 - 60) / 5))
    assert res["stamp"][0]["script"] == "benchmarks/humaneval_by_tokens.py"
    assert (tmp_path / "out" / "humaneval_by_tokens.png").stat().st_size > 0
    assert "5.0 passes a doubling" in capsys.readouterr().out


def test_one_budget_is_no_trend(tmp_path):
    _record(tmp_path / "a", [_student("base", 2 ** 22, 50), _student("again", 2 ** 22, 54)], teacher=100)
    with pytest.raises(ValueError, match="1 token budget"):
        hbt.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")])
