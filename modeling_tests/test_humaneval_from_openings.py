"""benchmarks/humaneval_from_openings.py: the teacher continues from the student's opening of each lost answer."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import humaneval_from_openings as hfo  # noqa: E402


def test_an_opening_ends_with_the_line_of_the_first_difference():
    a = "    x = 1\n    y = 2\n    return x + y\n"
    assert hfo.opening(a, "    x = 1\n    y = 3\n") == "    x = 1\n    y = 2\n"
    assert hfo.opening(a, "    z = 1\n") == "    x = 1\n"
    assert hfo.opening("    return 1", "    return 2") == "    return 1"  # no newline after it: all of it


class _CharTokenizer:
    """One token a character: enough for the script's prompt assembly, without a vocabulary to build."""
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def test_the_teacher_is_scored_from_its_own_and_the_students_opening(tmp_path, monkeypatch):
    """Two lost problems: one parting in the first line, one in the last. The fake teacher adds nothing, so each
    continuation is the opening itself, which the sandbox then judges: its own openings pass, the student's fail."""
    from convert.eval import generation, models
    from convert.eval.humaneval import load_problems

    problems = load_problems(3)
    good0, good2 = problems[0]["canonical_solution"], "    return number % 1.0\n"
    rows = {"teacher": [(0, True, good0), (1, False, "    pass\n"), (2, True, good2)],
            "student-x": [(0, False, good0.replace("return False", "return True")), (1, False, "    pass\n"),
                          (2, False, "    return number - 1\n")]}
    for name, answers in rows.items():
        with gzip.open(tmp_path / f"humaneval_{name}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"task_id": f"HumanEval/{i}", "passed": p, "result": "x", "completion": c}) + "\n"
                         for i, p, c in answers)
    seen = []

    def fake_greedy(m, prompts, max_new_tokens, batch_size, stop_strings=None, desc=""):
        seen.extend(m.tok.decode(p) for p in prompts)
        return [[] for _ in prompts]

    monkeypatch.setattr(models, "load", lambda path: models.EvalModel(path, _CharTokenizer(), None, 1 << 20, None))
    monkeypatch.setattr(generation, "greedy", fake_greedy)
    res = hfo.main(["--teacher", "t.gguf", "--answers", str(tmp_path), "--out", str(tmp_path / "out")])
    s = res["summary"]
    assert (s["lost"], s["first_line"], s["control_passed"], s["teacher_passes_from_student_opening"]) == (2, 1, 2, 0)
    by_task = {r["task_id"]: r for r in res["problems"]}
    assert by_task["HumanEval/2"]["first_line"] and not by_task["HumanEval/0"]["first_line"]
    assert by_task["HumanEval/0"]["from_student_opening"]["result"].startswith("failed: AssertionError")
    assert seen[0].startswith(problems[0]["prompt"]) and seen[0].endswith(good0)  # prompt, then the opening
    assert json.loads((tmp_path / "out" / "from_openings.json").read_text())["summary"] == s


def test_the_teachers_odds_are_read_at_the_first_token_where_the_answers_part(tmp_path, monkeypatch):
    """--odds-only: one forward of the teacher's prompt and answer up to the parting token; the probabilities it
    reports are those of the teacher's own next token and the student's, at that token (one token a character
    here, so the parting token is the first differing character)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from convert.eval import models
    from convert.eval.humaneval import load_problems, prompt_text

    class Bytes(_CharTokenizer):
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 256 for c in text]}

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    t_code, s_code = "    return number % 1.0\n", "    return number - 1\n"
    for name, code in (("teacher", t_code), ("student-x", s_code)):
        with gzip.open(tmp_path / f"humaneval_{name}.jsonl.gz", "wt") as f:
            f.write(json.dumps({"task_id": "HumanEval/2", "passed": name == "teacher", "result": "x",
                                "completion": code}) + "\n")
    monkeypatch.setattr(models, "load", lambda path: models.EvalModel(path, Bytes(), model.config, 1 << 20, None,
                                                                      model))
    res = hfo.main(["--teacher", "t", "--answers", str(tmp_path), "--out", str(tmp_path / "o"), "--odds-only"])
    (row,) = res["problems"]
    j = hfo.first_difference(t_code, s_code)
    assert row["parting"]["token"] == j and row["first_line"]
    problem = load_problems(3)[2]
    ids = torch.tensor([Bytes()(prompt_text(Bytes(), problem)[0] + t_code[:j])["input_ids"]])
    probs = model(input_ids=ids).logits[0, -1].softmax(-1)
    assert row["parting"]["teacher_token_p"] == pytest.approx(probs[ord(t_code[j])].item(), rel=1e-4)
    assert row["parting"]["student_token_p"] == pytest.approx(probs[ord(s_code[j])].item(), rel=1e-4)
    assert row["parting"]["top1_p"] == pytest.approx(probs.max().item(), rel=1e-4)
    assert res["summary"]["with_a_parting_token"] == 1 and (tmp_path / "o" / "parting_odds.json").is_file()
