"""benchmarks/humaneval_by_stage_kl.py: the recipe's long runs at any batch, and how their HumanEval passes follow the
held-out KL after each stage."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import humaneval_by_stage_kl as hsk  # noqa: E402
from test_humaneval_by_tokens import _record, _student  # noqa: E402


def _run(name, kl1, kl2, passed, tokens=30e6, **changes):
    return _student(name, tokens, passed, **changes) | {"held_out_kl_by_stage": [kl1, kl2]}


def test_the_long_runs_of_any_batch_give_each_stages_correlation(tmp_path, capsys):
    _record(tmp_path / "a", [_run("base", 1.3, 0.094, 80), _run("batch 8", 1.1, 0.096, 90, batch_size=8),
                             _run("short", 2.2, 0.2, 60, tokens=6e6),  # a 3-minute run: left out
                             _run("more chats", 1.0, 0.09, 95, chat_ratio=0.5)])  # another recipe: left out
    _record(tmp_path / "b", [_run("middle", 1.2, 0.092, 85)])
    res = hsk.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")])
    assert sorted(r["name"] for r in res["runs"]) == ["base", "batch 8", "middle"]
    # passes fall by 50 a nat of stage-1 KL, exactly; the final KL goes its own way
    one, two = res["measures"]["after stage 1"], res["measures"]["after stage 2"]
    assert one["r"] == pytest.approx(-1.0) and one["passes_per_nat"] == pytest.approx(-50.0)
    assert two["r"] == pytest.approx(0.5)  # deviations (0, .002, -.002) against (-5, 5, 0)
    assert (tmp_path / "out" / "humaneval_by_stage_kl.png").stat().st_size > 0
    assert "r = -1.00" in capsys.readouterr().out


def test_fewer_than_three_long_runs_are_refused(tmp_path):
    _record(tmp_path / "a", [_run("base", 1.3, 0.094, 80), _run("short", 2.2, 0.2, 60, tokens=6e6)])
    with pytest.raises(ValueError, match="1 runs of the recipe with at least 20 M tokens"):
        hsk.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")])


def test_any_recipe_takes_every_long_run_whatever_its_recipe(tmp_path):
    _record(tmp_path / "a", [_run("base", 1.3, 0.094, 80), _run("short", 2.2, 0.2, 60, tokens=6e6),
                             _run("more chats", 1.0, 0.09, 95, chat_ratio=0.5)])
    _record(tmp_path / "b", [_run("frozen MLPs", 1.2, 0.092, 85, train2="non-mlp", jet_lr2=1e-4)])
    res = hsk.main(["--results", str(tmp_path), "--out", str(tmp_path / "out"), "--any-recipe"])
    assert sorted(r["name"] for r in res["runs"]) == ["base", "frozen MLPs", "more chats"]  # still not the short one
    assert res["any_recipe"] and res["measures"]["after stage 1"]["r"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="1 runs of the recipe with"):  # without it: the base alone
        hsk.main(["--results", str(tmp_path), "--out", str(tmp_path / "out2")])
