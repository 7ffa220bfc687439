"""A student measured along its teacher's own answers (`convert/answer_agreement.py`): chats split as HumanEval
prompts, the measures at the answer's positions only (checked against full logits), unchanged by batching, and the
teacher's own greedy answers recognised as its own."""

from __future__ import annotations

import pytest
import torch

from convert.answer_agreement import answer_agreement, answer_rows, split_chat
from convert.chat_data import answer_prompt, user_turn
from convert.layer_map import parse_spec
from convert.qwen_to_jet import convert_model
from convert.tiny_teacher import TeacherSize, build_qwen2, build_tokenizer, read_corpus, stdlib_files

HEAD = 'def add(x, y):\n    """Add."""\n'


@pytest.fixture(scope="module")
def models():
    tok = build_tokenizer(read_corpus(stdlib_files("train"), 100_000), 512)
    torch.manual_seed(0)
    teacher = build_qwen2(TeacherSize(vocab=len(tok), hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128),
                          tok).eval()
    student = convert_model(teacher, parse_spec("jet,jet,attn,jet"), progress=False).eval()
    # an untrained toy with tied embeddings predicts its input token whatever its layers do, and so would any
    # student converted from it: a head of its own makes a student clearly unlike its teacher
    student.lm_head.weight = torch.nn.Parameter(torch.randn_like(student.lm_head.weight))
    return tok, teacher, student


def _chat(instruction: str, head: str, body: str) -> list[dict]:
    return [{"role": "user", "content": user_turn(instruction, head)},
            {"role": "assistant", "content": f"```python\n{head}{body}\n```"}]


def test_a_teacher_answer_is_split_where_humaneval_prompts_and_other_chats_at_their_last_turn(models):
    tok = models[0]
    prompt, answer = split_chat(tok, _chat("Implement the function below.", HEAD, "    return x + y"))
    assert prompt == answer_prompt(tok, "Implement the function below.", HEAD)
    assert answer == "    return x + y\n```"
    other = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    prompt, answer = split_chat(tok, other)
    assert answer == "hi" and prompt == tok.apply_chat_template(other[:1], add_generation_prompt=True, tokenize=False)
    # an answer that does not begin with the user's head is not in that form: split at the last turn
    odd = [{"role": "user", "content": user_turn("Write it.", HEAD)},
           {"role": "assistant", "content": "```python\ndef other():\n    pass\n```"}]
    assert split_chat(tok, odd)[1] == odd[1]["content"]
    with pytest.raises(ValueError, match="assistant turn last"):
        split_chat(tok, other[:1])


def test_rows_keep_prompt_and_answer_tokenised_apart_and_refuse_a_long_chat(models):
    tok = models[0]
    rows = answer_rows(tok, [_chat("Write the body of this Python function.", HEAD, "    return x + y")])
    (ids, start), = rows
    prompt, answer = split_chat(tok, _chat("Write the body of this Python function.", HEAD, "    return x + y"))
    assert ids[:start] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[start:] == tok(answer, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match=r"chat 0: \d+ tokens, more than max_len 10"):
        answer_rows(tok, [_chat("Write it.", HEAD, "    return x + y")], max_len=10)


def _greedy_rows(tok, teacher, heads: list[str], new: int = 12) -> list[tuple[list[int], int]]:
    """Rows whose answers are the teacher's own greedy continuations, as teacher_answers.py writes them."""
    rows = []
    for head in heads:
        p = tok(answer_prompt(tok, "Implement the function below.", head), add_special_tokens=False)["input_ids"]
        x = torch.tensor([p])
        out = teacher.generate(x, max_new_tokens=new, do_sample=False, min_new_tokens=new,
                               pad_token_id=tok.pad_token_id)
        rows.append((out[0].tolist(), len(p)))
    return rows


def test_measures_match_full_logits_and_do_not_depend_on_the_batch(models):
    tok, teacher, student = models
    rows = _greedy_rows(tok, teacher, [HEAD, "def mul(a, b):\n", 'def name():\n    """The name."""\n'])
    got = answer_agreement(student, teacher, rows, batch=3, pad_id=tok.pad_token_id)
    # the same measures from each row's full logits, one row at a time
    kl = agree = tokens = exact = before = head_kl = head_agree = 0.0
    with torch.no_grad():
        for ids, start in rows:
            x = torch.tensor([ids])
            ls = torch.log_softmax(student(x).logits[0, start - 1: -1].float(), -1)
            lt = torch.log_softmax(teacher(x).logits[0, start - 1: -1].float(), -1)
            kl += (lt.exp() * (lt - ls)).sum().item()
            head_kl += (lt[:8].exp() * (lt[:8] - ls[:8])).sum().item()
            same = ls.argmax(-1) == lt.argmax(-1)
            agree, tokens = agree + same.sum().item(), tokens + same.numel()
            head_agree += same[:8].sum().item()
            exact += bool(same.all())
            before += (int((~same).nonzero()[0, 0]) if not same.all() else same.numel()) / same.numel()
    assert got["kl"] == pytest.approx(kl / tokens, rel=1e-4)
    assert got["top1"] == pytest.approx(agree / tokens)
    assert got["exact"] == pytest.approx(exact / 3) and got["before_miss"] == pytest.approx(before / 3)
    assert got["answers"] == 3 and got["answer_tokens"] == 36
    assert got["head_top1"] == pytest.approx(head_agree / 24) and got["head_kl"] == pytest.approx(head_kl / 24, rel=1e-4)
    # a student unlike its teacher: the measure must see that (else it could not rank students)
    assert got["kl"] > 1e-3 and got["top1"] < 1
    # right padding changes nothing the causal models see: one row a batch gives the same numbers
    one = answer_agreement(student, teacher, rows, batch=1, pad_id=tok.pad_token_id)
    for k in ("kl", "top1", "exact", "before_miss", "head_top1", "head_kl", "teacher_top1"):
        assert one[k] == pytest.approx(got[k], rel=1e-5, abs=1e-7), k


def test_the_teacher_against_its_own_greedy_answers_agrees_everywhere(models):
    tok, teacher, _ = models
    rows = _greedy_rows(tok, teacher, [HEAD, "def mul(a, b):\n"])
    got = answer_agreement(teacher, teacher, rows, batch=2, pad_id=tok.pad_token_id)
    assert got["kl"] == pytest.approx(0, abs=1e-6)
    assert got["top1"] == got["exact"] == got["before_miss"] == got["head_top1"] == 1.0
    assert got["teacher_top1"] == 1.0  # its answers are its argmax: the check that the chats are the teacher's
    # answers that are not the teacher's: its argmax is not their next token everywhere
    other = [(ids[:start] + [(37 * i + 5) % len(tok) for i in range(len(ids) - start)], start) for ids, start in rows]
    assert answer_agreement(teacher, teacher, other, pad_id=tok.pad_token_id)["teacher_top1"] < 0.5
    with pytest.raises(ValueError, match="at least one row"):
        answer_agreement(teacher, teacher, [])
