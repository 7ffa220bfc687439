"""Chat-formatted code rows (`convert.chat_data`): functions cut from corpus text, packed in the chat template, mixed
into a stage's rows at the asked fraction, and refused where they cannot be built."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from convert.chat_data import INSTRUCTIONS, ChatCodeStream, functions
from convert.tiny_teacher import build_tokenizer

SOURCE = '''import os


def area(w, h):
    """Area of a w x h rectangle.

    Both sides in metres.
    """
    return w * h


class Box:
    def volume(self,
               depth):
        return self.w * self.h * depth

    def empty(self):
        """No body."""

def one_liner(): return 1


def cut_off(x):
    y = x + 1
'''


def test_functions_are_whole_blocks_with_their_head_and_docstring():
    found = {whole.split("(")[0]: (head, whole) for head, whole in functions(SOURCE)}
    # cut_off runs to the end of the text (maybe cut), `empty` has no body, `one_liner` no block: all skipped
    assert sorted(found) == ["def area", "def volume"]
    head, whole = found["def area"]
    assert head == 'def area(w, h):\n    """Area of a w x h rectangle.\n\n    Both sides in metres.\n    """\n'
    assert whole == head + "    return w * h\n"
    head, whole = found["def volume"]  # a method: dedented, its two-line signature in the head
    assert head == "def volume(self,\n           depth):\n" and whole == head + "    return self.w * self.h * depth\n"
    assert not whole.startswith(" ")


def test_tab_indented_methods_are_found_whole():
    """The `def` line's indent and its body's are both measured with tabs expanded: a tab-indented method's body
    (two tabs under one) was measured as 2 columns under 8 and the method skipped."""
    text = "class C:\n\tdef f(self, x):\n\t\ty = x + 1\n\t\treturn y\n\n\tdef g(self):\n\t\treturn 2\nz = 1\n"
    found = dict(functions(text))
    assert found == {"def f(self, x):\n": "def f(self, x):\n\ty = x + 1\n\treturn y\n",
                     "def g(self):\n": "def g(self):\n\treturn 2\n"}


@pytest.fixture(scope="module")
def tok_and_code():
    text = Path(json.__file__).parent.joinpath("decoder.py").read_text() + "\n\n" + Path(random.__file__).read_text()
    tok = build_tokenizer([text], vocab_size=512)
    return tok, np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.uint32)


def test_rows_are_chats_of_corpus_functions_and_a_pure_function_of_their_index(tok_and_code):
    tok, code = tok_and_code
    s = ChatCodeStream(tok, code, 512, seed=3, window=1024)
    row = s.draw(4)
    assert row.shape == (512,) and np.array_equal(row, s.draw(4)) and not np.array_equal(row, s.draw(5))
    text = tok.decode(row.tolist())
    assert "<|im_start|>user\n" in text and "<|im_start|>assistant\n```python\ndef " in text
    assert any(i in text for i in INSTRUCTIONS)
    # chats follow each other as turns do, ended by the template: no corpus file separator between them
    assert tok.eos_token_id not in row.tolist() and text.count("<|im_start|>user\n") >= 2
    # the assistant's function is one of the corpus's, and the user turn holds its head
    first = text.split("<|im_start|>assistant\n```python\n", 1)[1].split("```", 1)[0]
    source = tok.decode(code.tolist())
    assert first.splitlines()[0].strip() in source
    user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert first.startswith(user.split("```python\n", 1)[1].rstrip("`"))


def test_chat_rows_are_refused_without_a_template_or_without_code(tok_and_code):
    tok, code = tok_and_code
    plain = build_tokenizer(["just some words " * 50], vocab_size=300)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        ChatCodeStream(plain, code, 256, window=512)
    prose = np.asarray(tok("the cat sat on the mat. " * 400, add_special_tokens=False)["input_ids"], np.uint32)
    with pytest.raises(ValueError, match="no(ne)? .*function|held none"):
        ChatCodeStream(tok, prose, 256, window=512)


def test_a_stage_mixes_chat_and_retrieval_rows_at_their_ratios(tok_and_code, tmp_path):
    from convert.corpus import build_corpus
    from convert.distill import DistillConfig
    from convert.pipeline import stage_samplers

    tok, _ = tok_and_code
    src = tmp_path / "src"
    src.mkdir()
    for f in (Path(json.__file__).parent / "decoder.py", Path(random.__file__)):
        (src / f.name).write_text(f.read_text())
    data = build_corpus([src], tok, cache_dir=tmp_path / "cache", workers=1, progress=False, eval_fraction=0.0)
    cfg = DistillConfig(stage=1, steps=4, batch_size=4, micro_batch=4)
    (mix,) = stage_samplers(data, [cfg], 256, tok, {"ratio": 0.2, "kinds": ["passkey"], "chat_ratio": 0.3})
    names = [s.name for s in mix.streams]
    served = dict(zip(names, mix.weights))
    assert served["chat"] == pytest.approx(0.3, abs=0.002) and served["retrieval"] == pytest.approx(0.2, abs=0.002)
    with pytest.raises(ValueError, match="chat-ratio"):
        stage_samplers(data, [cfg], 256, tok, {"ratio": 0.5, "kinds": ["passkey"], "chat_ratio": 0.5})


def test_docstring_rows_ask_only_for_functions_whose_head_holds_a_docstring(tok_and_code, tmp_path):
    from convert.chat_data import has_docstring
    from convert.pipeline import _retrieval_identity, check_generated_rows

    found = dict(functions(SOURCE))
    assert [has_docstring(h) for h in found] == [True, False]  # area (a docstring), volume (a signature only)
    tok, code = tok_and_code
    heads = {True: [], False: []}
    for docstrings in (True, False):
        s = ChatCodeStream(tok, code, 512, seed=3, window=1024, docstrings=docstrings)
        for k in range(6):
            text = tok.decode(s.draw(k).tolist())
            for user in text.split("<|im_start|>user\n")[1:]:
                head = user.split("```python\n", 1)[1].split("```", 1)[0]
                if "<|im_end|>" in user:  # a chat cut by the row's end has no whole head
                    heads[docstrings].append(head)
    assert heads[True] and all(has_docstring(h) for h in heads[True])
    assert not all(has_docstring(h) for h in heads[False])  # the corpus has both: the option made the difference
    # the option is part of a run's identity only when on (a run from before it keeps its identity), and it is
    # refused where it means nothing
    base = {"ratio": 0.1, "kinds": ["passkey"], "chat_ratio": 0.25}
    assert _retrieval_identity(base) == _retrieval_identity(base | {"chat_docstrings": False})
    assert _retrieval_identity(base | {"chat_docstrings": True})["chat_docstrings"] is True
    chats = tmp_path / "c.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "Write f."},
                                              {"role": "assistant", "content": "def f(): pass"}]}) + "\n")
    for bad in (base | {"chat_ratio": 0, "chat_docstrings": True},
                base | {"chat_file": str(chats), "chat_docstrings": True}):
        with pytest.raises(ValueError, match="--chat-docstrings"):
            check_generated_rows(bad)
    prose = np.asarray(tok("def f(x):\n    return x\n\n" * 300, add_special_tokens=False)["input_ids"], np.uint32)
    with pytest.raises(ValueError, match="functions with a docstring"):
        ChatCodeStream(tok, prose, 256, window=512, docstrings=True)
