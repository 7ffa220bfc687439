"""Passkey training rows (`convert.evaluation.passkey_rows`) match what `passkey_accuracy` asks and scores."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from convert.evaluation import PASSKEY_QUESTION, passkey_accuracy, passkey_prompt, passkey_rows
from convert.tiny_teacher import build_tokenizer


@pytest.fixture(scope="module")
def tok_and_filler():
    """A 512-token BPE and filler ids from one real stdlib file (random.py), built in well under a second."""
    text = Path(random.__file__).read_text()
    tok = build_tokenizer([text], vocab_size=512)
    return tok, tok(text, add_special_tokens=False)["input_ids"]


def _documents(row: list[int], eos: int) -> list[list[int]]:
    """Split a row at EOS; the row must end with one, so nothing is left after the last."""
    assert row[-1] == eos
    docs, cur = [], []
    for i in row:
        if i == eos:
            docs.append(cur)
            cur = []
        else:
            cur.append(i)
    return docs


def test_rows_have_the_passkey_format(tok_and_filler):
    tok, filler = tok_and_filler
    eos = tok.eos_token_id
    question = tok(PASSKEY_QUESTION, add_special_tokens=False)["input_ids"]
    rows = passkey_rows(tok, filler, n_rows=8, seq_len=200, seed=3, min_len=48)
    assert rows.shape == (8, 200) and rows.dtype == torch.long
    n_docs = 0
    for row in rows.tolist():
        for doc in _documents(row, eos):
            assert 48 - 1 <= len(doc) <= 200 - 1  # + its EOS: min_len..seq_len
            text = tok.decode(doc)
            keys = re.findall(r"\nPASSKEY = (\d{5})\n", text)
            assert len(keys) == 1, text  # one needle per document, and nothing looks like a second one
            key = keys[0]
            assert text.endswith(f"{PASSKEY_QUESTION}{key}")
            # the answer is the key tokenised on its own right after the question's tokens: what the model
            # must generate after the prompt passkey_accuracy builds
            answer = tok(key, add_special_tokens=False)["input_ids"]
            assert doc[-len(answer):] == answer
            assert doc[-len(answer) - len(question):-len(answer)] == question
            n_docs += 1
    assert n_docs > 8  # short documents share rows


def test_rows_are_deterministic_under_a_seed(tok_and_filler):
    tok, filler = tok_and_filler
    a = passkey_rows(tok, filler, 4, 128, seed=7)
    assert torch.equal(a, passkey_rows(tok, filler, 4, 128, seed=7))
    assert not torch.equal(a, passkey_rows(tok, filler, 4, 128, seed=8))


def test_answered_prompt_is_the_eval_prompt_plus_key(tok_and_filler):
    tok, filler = tok_and_filler
    ask, key = passkey_prompt(tok, filler, 150, random.Random(5))
    doc, key2 = passkey_prompt(tok, filler, 150, random.Random(5), answered=True)
    answer = tok(key, add_special_tokens=False)["input_ids"]
    assert key == key2 and len(ask) == len(doc) == 150
    question = tok(PASSKEY_QUESTION, add_special_tokens=False)["input_ids"]
    assert ask[-len(question):] == question and doc[-len(answer):] == answer


class _Oracle:
    """Stands in for a model: reads the needle from the prompt and answers with the key as training rows do."""

    def __init__(self, tok):
        self.tok = tok

    def eval(self):
        return self

    def generate(self, input_ids, **_):
        key = re.search(r"PASSKEY = (\d{5})", self.tok.decode(input_ids[0].tolist())).group(1)
        answer = torch.tensor([self.tok(key, add_special_tokens=False)["input_ids"]])
        return torch.cat([input_ids, answer], dim=1)


def test_the_trained_answer_scores_as_correct(tok_and_filler):
    tok, filler = tok_and_filler
    assert passkey_accuracy(_Oracle(tok), tok, filler, context=120, trials=5, device="cpu") == 1.0


def test_tests_join_the_training_split_only():
    from convert.tiny_teacher import stdlib_files

    eval_files = stdlib_files("eval")
    train, train_with_tests = stdlib_files("train"), stdlib_files("train", with_tests=True)
    assert stdlib_files("eval", with_tests=True) == eval_files
    assert set(train) < set(train_with_tests) and not set(eval_files) & set(train_with_tests)
