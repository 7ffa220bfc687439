"""Generated rows drawn ahead in worker processes (`convert/row_workers.py`): the same batches as the batch thread
draws, every row of a step from the workers, the workers stopped when a stage ends, and a distillation that trains
alike either way."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from convert.row_workers import AheadStream
from convert.tiny_teacher import build_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from convert.corpus import build_corpus

    tmp = tmp_path_factory.mktemp("rows")
    src = tmp / "src"
    src.mkdir()
    texts = []
    for f in (Path(json.__file__).parent / "decoder.py", Path(random.__file__)):
        texts.append(f.read_text())
        (src / f.name).write_text(texts[-1])
    tok = build_tokenizer(texts, vocab_size=512)
    data = build_corpus([src], tok, cache_dir=tmp / "cache", workers=1, progress=False, eval_fraction=0.0)
    return tok, data


ROWS = {"ratio": 0.2, "kinds": ["passkey", "kv"], "chat_ratio": 0.4}


def _samplers(corpus, workers, steps=5):
    from convert.distill import DistillConfig
    from convert.pipeline import stage_samplers

    tok, data = corpus
    cfg = DistillConfig(stage=1, steps=steps, batch_size=4, micro_batch=4)
    return stage_samplers(data, [cfg, DistillConfig(stage=2, steps=steps, batch_size=4, micro_batch=4)], 256, tok,
                          ROWS, row_workers=workers)


def test_workers_give_the_batch_threads_rows_and_draw_every_generated_row(corpus):
    plain, ahead = _samplers(corpus, 0), _samplers(corpus, 2)
    assert not any(isinstance(s, AheadStream) for m in plain for s in m.streams)
    wrapped = [s for m in ahead for s in m.streams if isinstance(s, AheadStream)]
    assert sorted(s.name for s in wrapped) == ["chat", "chat", "retrieval", "retrieval"]
    try:
        for p, a in zip(plain, ahead):
            for step in range(5):
                assert torch.equal(a.batch(step, 4), p.batch(step, 4))
        # each step asked for its own rows and the next three steps' first: none was drawn in this process
        assert all(s.drawn_here == 0 for s in wrapped) and all(s.pool is not None for s in wrapped)
        assert all(s.pending for s in wrapped if s.name == "chat")  # the steps after the last one, under way
    finally:
        for m in ahead:
            m.close()
    assert all(s.pool is None and not s.pending for s in wrapped)
    # a closed stream starts its workers again when asked, and a row never requested is drawn here, the same
    chat = next(s for s in wrapped if s.name == "chat")
    assert np.array_equal(chat.draw(10_000), chat.stream.draw(10_000)) and chat.drawn_here == 1
    chat.request([7])
    assert chat.pool is not None and np.array_equal(chat.draw(7), chat.stream.draw(7))
    chat.close()
    with pytest.raises(ValueError, match="at least one worker"):
        AheadStream(chat.stream, 0)


def test_a_distillation_trains_alike_with_row_workers_and_stops_them(corpus, monkeypatch):
    from convert.distill import DistillConfig, distill
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model
    from convert.tiny_teacher import TeacherSize, build_qwen2

    tok, _ = corpus
    teacher = build_qwen2(TeacherSize(vocab=len(tok), hidden=64, layers=2, intermediate=128), tok).eval()
    losses = {}
    for workers in (0, 2):
        (sampler, _) = _samplers(corpus, workers, steps=3)
        student = convert_model(teacher, parse_spec("jet,attn"))
        cfg = DistillConfig(stage=2, steps=3, batch_size=4, micro_batch=2, lr=1e-3, warmup_steps=1, log_every=1)
        losses[workers] = [h["kl"] for h in distill(student, teacher, sampler, cfg)["history"]]
        wrapped = [s for s in sampler.streams if isinstance(s, AheadStream)]
        assert all(s.pool is None for s in wrapped), "the stage's end stops its row workers"
        assert all(s.drawn_here == 0 for s in wrapped), "every generated row came from the workers"
    assert losses[0] == losses[2] and len(losses[0]) == 3


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_a_bad_worker_count_is_refused_naming_the_flag(corpus, bad):
    with pytest.raises(ValueError, match="--row-workers must be an integer >= 0"):
        _samplers(corpus, bad)


def test_the_gil_probe_writes_its_record(tmp_path):
    """benchmarks/generated_rows_gil.py at small sizes: a stamped record with the three loop times."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import generated_rows_gil

    out = tmp_path / "gil.json"
    generated_rows_gil.main(["--files", "30", "--ops", "200", "--repeats", "3", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["stamp"][0]["commit"] and rec["chat_row_ms"] > 0
    assert all(rec[k] > 0 for k in ("loop_ms_alone", "loop_ms_rows_on_a_thread", "loop_ms_rows_in_a_process"))
