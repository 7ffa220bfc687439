"""The teacher's own answers as chat rows (`convert/teacher_answers.py`, `--chat-file`): heads from train files only,
asked in HumanEval's form, answers kept only when they close their block and parse, written and read back, and
drawn by the chat rows of a distillation, whose run identity follows the file's bytes."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.chat_data import INSTRUCTIONS, ChatCodeStream, read_chats, user_turn
from convert.eval import generation
from convert.eval.generation import left_pad
from convert.eval.humaneval import INSTRUCTION, prompt_text
from convert.eval.models import wrap
from convert.pipeline import _retrieval_identity, check_generated_rows
from convert.teacher_answers import _answer_text, answer_chats, function_heads, write_chats
from convert.tiny_teacher import TeacherSize, build_qwen2, build_tokenizer, read_corpus, stdlib_files

ROOT = Path(__file__).resolve().parents[1]
FILE = '''def {name}(x, y):
    """Add {name}."""
    return x + y


def helper_{name}(a):
    return a * 2


VALUE = 1
'''


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(read_corpus(stdlib_files("train"), 100_000), 512)


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "site"
    for pkg, names in (("alpha", ["a1", "a2"]), ("beta", ["b1"]), ("pandas", ["p1", "p2"])):
        for n in names:
            f = src / pkg / f"{n}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(FILE.format(name=n))
    (src / "alpha" / "notes.txt").write_text("def not_python(x):\n    return x\n")
    return src


def test_heads_come_from_train_py_files_only_distinct_and_reproducible(tmp_path):
    src = _tree(tmp_path)
    heads = function_heads([src], held_out=["pandas"], n=100, seed=3)
    texts = [h for _, h in heads]
    assert len(texts) == len(set(texts)) == 6  # two functions in each of 3 train files
    assert not any("p1" in h or "p2" in h or "not_python" in h for h in texts)
    assert all(i in INSTRUCTIONS for i, _ in heads)
    assert heads == function_heads([src], held_out=["pandas"], n=100, seed=3)
    assert len(function_heads([src], held_out=["pandas"], n=4)) == 4


def test_an_answer_is_kept_only_when_it_closes_its_block_and_parses():
    head = 'def add(x, y):\n    """Add."""\n'
    assert _answer_text(head, "    return x + y\n```\nMore words.") == f"```python\n{head}    return x + y\n```"
    assert _answer_text(head, "    return x + y\n") is None  # ran out of tokens inside the block
    assert _answer_text(head, "    return x +\n```") is None  # does not parse
    assert _answer_text(head, "```") is None  # no body
    # a student's own answers are kept as written, closed at their fence or at the end
    assert _answer_text(head, "    return x +\n```\nMore.", keep_all=True) == f"```python\n{head}    return x +\n```"
    assert _answer_text(head, "    return x + y\n", keep_all=True) == f"```python\n{head}    return x + y\n```"
    assert _answer_text(head, "```", keep_all=True) == f"```python\n{head}\n```"


def test_answer_chats_asks_in_humaneval_form_and_keeps_what_parses(tok, monkeypatch):
    teacher = wrap(build_qwen2(TeacherSize(vocab=len(tok), hidden=32, layers=1, heads=2, kv_heads=1,
                                           intermediate=64), tok).eval(), tok, "teacher")
    heads = [(INSTRUCTION, 'def add(x, y):\n    """Add."""\n'), (INSTRUCTIONS[1], "def neg(x):\n"),
             (INSTRUCTIONS[2], "def bad(x):\n")]
    answers = {"add": "    return x + y\n```", "neg": "    return -x\n", "bad": "    return (\n```"}
    seen = {}

    def fake_greedy(m, prompts, max_new_tokens, batch_size=64, stop_strings=None, compiled=None, desc="",
                    pad_to=None):
        seen.setdefault("prompts", []).extend(prompts)
        seen["pad_to"], seen["stops"] = pad_to, stop_strings
        out = []
        for p in prompts:
            name = next(k for k in answers if f"def {k}(" in tok.decode(p))
            out.append(tok(answers[name], add_special_tokens=False)["input_ids"])
        return out

    monkeypatch.setattr(generation, "greedy", fake_greedy)
    chats, stats = answer_chats(teacher, heads, max_new_tokens=16, batch_size=2)
    # the prompt of the HumanEval instruction is HumanEval's own prompt for that function
    assert tok.decode(seen["prompts"][0]) == prompt_text(tok, {"prompt": heads[0][1]})[0]
    assert seen["pad_to"] == max(len(p) for p in seen["prompts"]) and seen["stops"] == ["```"]
    assert stats["asked"] == 3 and stats["answered"] == 1
    assert stats["dropped_unclosed"] == 1 and stats["dropped_unparsed"] == 1
    assert chats == [[{"role": "user", "content": user_turn(INSTRUCTION, heads[0][1])},
                      {"role": "assistant", "content": f"```python\n{heads[0][1]}    return x + y\n```"}]]
    # keep_all (a student's own answers): all three kept, the failures still counted
    every, stats = answer_chats(teacher, heads, max_new_tokens=16, batch_size=2, keep_all=True)
    assert len(every) == 3 and every[0] == chats[0] and stats["answered"] == 3 and stats["keep_all"]
    assert stats["dropped_unclosed"] == 1 and stats["dropped_unparsed"] == 1
    assert all(c[1]["content"].startswith(f"```python\n{h}") and c[1]["content"].endswith("\n```")
               for c, (_, h) in zip(every, heads))


def test_chats_written_and_read_back_and_bad_files_named(tmp_path):
    chat = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "```python\ndef f(): pass\n```"}]
    path = write_chats(tmp_path / "c.jsonl.gz", [chat, chat], {"note": 1})
    assert read_chats(path) == [chat, chat]
    assert json.loads((tmp_path / "c.jsonl.gz.meta.json").read_text()) == {"note": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl.gz", "c.jsonl.gz.meta.json"]  # no temporary left
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": chat}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2"):
        read_chats(bad)
    bad.write_text(json.dumps({"messages": chat[:1]}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: .*assistant turn last"):
        read_chats(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_chats(tmp_path / "missing.jsonl")


def test_chat_rows_draw_from_the_file_reproducibly(tmp_path, tok):
    chats = [[{"role": "user", "content": f"Write f{i}."},
              {"role": "assistant", "content": f"```python\ndef f{i}(x):\n    return x + {i}\n```"}] for i in range(5)]
    stream = ChatCodeStream(tok, np.zeros(0, dtype=np.uint32), 256, seed=1, chats=chats)
    row = stream.draw(7)
    assert row.shape == (256,) and np.array_equal(row, ChatCodeStream(tok, None, 256, seed=1, chats=chats).draw(7))
    text = tok.decode(row.tolist())
    assert "<|im_start|>assistant" in text and "def f" in text and "return x +" in text


def test_a_chat_file_is_checked_and_enters_the_run_identity_by_its_bytes(tmp_path):
    chat = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "```python\ndef f(): pass\n```"}]
    f = write_chats(tmp_path / "c.jsonl", [chat])
    with pytest.raises(ValueError, match="--chat-file .* --chat-ratio > 0"):
        check_generated_rows({"ratio": 0.1, "chat_ratio": 0.0, "chat_file": str(f)})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        check_generated_rows({"ratio": 0.1, "chat_ratio": 0.1, "chat_file": str(tmp_path / "nope.jsonl")})
    r = {"ratio": 0.1, "chat_ratio": 0.1, "chat_file": str(f)}
    check_generated_rows(r)
    first = _retrieval_identity(r)
    assert first["chat_file_sha256"] and "chat_file_sha256" not in _retrieval_identity({**r, "chat_file": None})
    write_chats(f, [chat, chat])
    assert _retrieval_identity(r)["chat_file_sha256"] != first["chat_file_sha256"]


def test_left_pad_to_a_given_width_and_refuses_a_narrower_one():
    ids, mask = left_pad([[1, 2], [3]], 0, width=4)
    assert ids.tolist() == [[0, 0, 1, 2], [0, 0, 0, 3]] and mask.sum().item() == 3
    with pytest.raises(ValueError, match="shorter than the longest prompt"):
        left_pad([[1, 2, 3]], 0, width=2)


def test_variant_chat_file_must_exist_and_needs_chat_rows(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import distill_variants as dv

    spec = tmp_path / "v.json"
    spec.write_text(json.dumps([{"name": "answers", "chat_file": str(tmp_path / "none.jsonl.gz")}]))
    with pytest.raises(SystemExit, match="chat_file .* must exist"):
        dv.variant_list(str(spec), None)
    chat = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "```python\ndef f(): pass\n```"}]
    f = write_chats(tmp_path / "c.jsonl.gz", [chat])
    spec.write_text(json.dumps([{"name": "answers", "chat_file": str(f), "chat_ratio": 0.0}]))
    with pytest.raises(SystemExit, match="needs chat_ratio > 0"):
        dv.variant_list(str(spec), None)
    spec.write_text(json.dumps([{"name": "answers", "chat_file": str(f)}]))
    assert dv.chat_file_of(dv.variant_list(str(spec), None)[0]) == str(f)
    with gzip.open(f, "rt") as fh:
        assert json.loads(fh.readline())["messages"] == chat


def test_stage_rows_take_their_chats_from_the_file(tmp_path, tok):
    """stage_samplers with a chat file: the chat stream serves the file's chats at the asked fraction."""
    from convert.corpus import build_corpus
    from convert.distill import DistillConfig
    from convert.pipeline import stage_samplers

    src = _tree(tmp_path)
    data = build_corpus([src], tok, cache_dir=tmp_path / "cache", workers=1, progress=False, eval_fraction=0.0)
    chat = [{"role": "user", "content": "Write zebra."},
            {"role": "assistant", "content": "```python\ndef zebra(x):\n    return x\n```"}]
    f = write_chats(tmp_path / "c.jsonl", [chat])
    cfg = DistillConfig(stage=1, steps=2, batch_size=2, micro_batch=2)
    (mix,) = stage_samplers(data, [cfg], 128, tok, {"ratio": 0.0, "chat_ratio": 0.5, "chat_file": str(f)})
    chat_stream = next(s for s in mix.streams if s.name == "chat")
    assert chat_stream.chats == [chat] and "def zebra(x)" in tok.decode(chat_stream.draw(0).tolist())
    assert dict(zip([s.name for s in mix.streams], mix.weights))["chat"] == pytest.approx(0.5, abs=0.002)


def test_the_session_script_writes_the_answers_and_their_record(tmp_path, monkeypatch):
    """benchmarks/teacher_answers.py --toy (tiny teacher; its decoding replaced by a fixed valid body): the chat file
    and its meta (stamp, counts, seconds), heads never from the held-out package."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import teacher_answers as script

    def fake_greedy(m, prompts, max_new_tokens, batch_size=64, stop_strings=None, compiled=None, desc="",
                    pad_to=None):
        return [m.tok("    return None\n```", add_special_tokens=False)["input_ids"] for _ in prompts]

    monkeypatch.setattr(generation, "greedy", fake_greedy)
    out = tmp_path / "answers.jsonl.gz"
    script.main(["--toy", "--site-packages", str(_tree(tmp_path)), "--n", "50", "--batch-size", "4",
                 "--out", str(out)])
    chats = read_chats(out)
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert len(chats) == 6 and meta["stats"]["answered"] == 6 and meta["held_out"] == ["pandas"]
    assert not any("p1" in c[0]["content"] for c in chats) and meta["stamp"][0]["date"]
    assert all(c[1]["content"].endswith("    return None\n```") for c in chats)


def test_a_variant_can_name_this_sessions_answers(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import distill_variants as dv

    spec = tmp_path / "v.json"
    spec.write_text(json.dumps([{"name": "answers", "chat_file": "@answers"}]))
    with pytest.raises(SystemExit, match="needs --answers"):
        dv.variant_list(str(spec), None)
    chat = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": "```python\ndef f(): pass\n```"}]
    f = write_chats(tmp_path / "a.jsonl.gz", [chat])
    assert dv.chat_file_of(dv.variant_list(str(spec), None, f)[0]) == str(f)
    # answers that a failed step never wrote fail that variant when it runs, not the whole list up front
    missing = tmp_path / "never.jsonl.gz"
    assert dv.chat_file_of(dv.variant_list(str(spec), None, missing)[0]) == str(missing)


def test_toy_variants_draw_chat_rows_from_a_file_and_missing_answers_fail_alone(tmp_path):
    """distill_variants --toy: a variant whose chat rows come from a committed chat file runs; one whose '@answers'
    file was never written (a failed answers step) is recorded as failed, and the others still run."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import distill_variants as dv

    spec = tmp_path / "v.json"
    spec.write_text(json.dumps([{"name": "from-file", "steps": [2, 1, 0], "chat_ratio": 0.3,
                                 "chat_file": str(ROOT / "modeling_tests" / "data" / "chats.jsonl")},
                                {"name": "answers", "steps": [2, 1, 0], "chat_file": "@answers"}]))
    out = tmp_path / "out"
    dv.main(["--toy", "--variants", str(spec), "--answers", str(tmp_path / "never.jsonl.gz"), "--out", str(out),
             "--corpus-cache", str(tmp_path / "cache"), "--stdlib-ppl", "3000"])
    res = json.loads((out / "variants.json").read_text())
    # jet-nemotron eval's perplexity in the same process: teacher and student, and a column of the table
    assert res["teacher_stdlib_ppl"] > 1 and res["variants"][0]["stdlib_ppl"] > 1
    assert "stdlib ppl (x teacher)" in (out / "variants.md").read_text()
    assert [v["name"] for v in res["variants"]] == ["from-file"] and res["variants"][0]["steps"] == [2, 1, 0]
    assert [f["name"] for f in res["failed"]] == ["answers"] and "never.jsonl.gz" in res["failed"][0]["error"]


def test_the_card_sentence_on_generated_rows():
    from convert.model_card import generated_rows

    assert generated_rows(None) == ""
    assert generated_rows({"ratio": 0.1, "kinds": ["passkey", "kv"]}) == (
        "Of every stage's rows, 10% generated long-range retrieval documents (passkey, kv) over that text.")
    assert generated_rows({"ratio": 0.1, "kinds": ["passkey"], "chat_ratio": 0.1}).endswith(
        "and 10% chats in the tokenizer's template, from the corpus's own Python functions.")
