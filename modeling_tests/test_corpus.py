"""The distillation corpus (convert/corpus.py): cached parallel tokenisation, stale caches, held-out files,
epoch-wise sampling, retrieval rows, MFU's FLOP count, and a killed run on the corpus path resuming bit-exactly."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from convert.corpus import MixtureSampler, WindowStream, build_corpus, build_source
from convert.tiny_teacher import build_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    text = "\n".join(f"def {rng.choice(WORDS)}_{i}(x):\n    return x + {i}  # {rng.choice(WORDS)}"
                     for i in range(300))
    return build_tokenizer([text, "FILE_ marker pkg_a pkg_b"], vocab_size=300)


def make_tree(root, n_files=12, pkgs=("pkg_a", "pkg_b", "pkg_c")):
    """A site-packages-like tree: each file holds its own marker line, so a token stream shows its files."""
    rng = random.Random(1)
    for i in range(n_files):
        pkg = pkgs[i % len(pkgs)]
        f = root / pkg / f"mod{i}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        body = "\n".join(f"{rng.choice(WORDS)}_{j} = {rng.randint(0, 99)}" for j in range(40))
        f.write_text(f"# FILE_{pkg}_{i}\n{body}\n")
    (root / "pkg_a" / "data.bin").write_bytes(b"\x00\x01")  # not a text suffix: ignored
    return root


def test_build_matches_the_tokenizer_and_a_rerun_hits_the_cache(tmp_path, tok):
    src = make_tree(tmp_path / "sp")
    a = build_source(src, tok, tmp_path / "cache", held_out=["pkg_b"], workers=2, progress=False)
    assert not a.cache_hit and a.manifest["counts"]["train"]["units"] == 8
    # every train document is one file's exact tokenisation followed by EOS, in the manifest's order
    offsets = np.load(a.folder / "train_docs.npy")
    assert offsets[-1] == len(a.train) and len(offsets) - 1 == 8
    texts = {f.read_text() for f in src.rglob("*.py") if "pkg_b" not in f.parts}
    want = {tuple(tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for t in texts}
    got = {tuple(a.train[offsets[i]:offsets[i + 1]].tolist()) for i in range(8)}
    assert got == want
    b = build_source(src, tok, tmp_path / "cache", held_out=["pkg_b"], workers=1, progress=False)
    assert b.cache_hit and b.folder == a.folder and np.array_equal(b.train, a.train)  # serial == parallel
    c = build_source(src, tok, tmp_path / "cache", held_out=["pkg_c"], workers=1, progress=False)
    assert not c.cache_hit and c.folder != a.folder  # another split is another cache entry


@pytest.mark.parametrize("change", ["edit", "touch", "add", "remove"])
def test_a_changed_source_is_never_silently_reused(tmp_path, tok, capsys, change):
    src = make_tree(tmp_path / "sp")
    first = build_source(src, tok, tmp_path / "cache", workers=1, progress=False)
    f = src / "pkg_a" / "mod0.py"
    if change == "edit":
        f.write_text(f.read_text().replace("FILE_", "EDITED_FILE_"))
    elif change == "touch":  # same bytes, newer mtime: the tokens cannot be trusted without reading it
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "add":
        (src / "pkg_a" / "new.md").write_text("# a new file\n")
    else:
        f.unlink()
    with pytest.raises(ValueError, match=r"is stale: .* changed since it was tokenised \(1 file\(s\) "
                                         + {"edit": "changed", "touch": "changed", "add": "added",
                                            "remove": "removed"}[change]):
        build_source(src, tok, tmp_path / "cache", workers=1, progress=False, on_stale="error")
    again = build_source(src, tok, tmp_path / "cache", workers=1, progress=False)
    assert not again.cache_hit and "rebuilding" in capsys.readouterr().out
    if change in ("edit", "add", "remove"):
        assert not np.array_equal(again.train, first.train) or not np.array_equal(again.eval, first.eval)
    assert build_source(src, tok, tmp_path / "cache", workers=1, progress=False).cache_hit


def test_held_out_files_are_disjoint_from_training(tmp_path, tok):
    src = make_tree(tmp_path / "sp", n_files=40)
    by_name = build_source(src, tok, tmp_path / "c", held_out=["pkg_b"], workers=1, progress=False)
    by_hash = build_source(src, tok, tmp_path / "c", eval_fraction=0.2, workers=1, progress=False)
    for s in (by_name, by_hash):
        train, held = tok.decode(s.train.tolist()), tok.decode(s.eval.tolist())
        files_train = {m.split()[0] for m in train.split("# FILE_")[1:]}
        files_held = {m.split()[0] for m in held.split("# FILE_")[1:]}
        assert files_held and files_train and not files_train & files_held
        assert len(files_train) + len(files_held) == 40
    assert {f.split("_")[1] for f in tok.decode(by_name.eval.tolist()).split("# FILE_")[1:]} == {"b"}


def test_max_tokens_keeps_whole_documents_from_across_the_source(tmp_path, tok):
    src = make_tree(tmp_path / "sp", n_files=30)
    full = build_source(src, tok, tmp_path / "c", eval_fraction=0, workers=1, progress=False)
    cap = len(full.train) // 3
    part = build_source(src, tok, tmp_path / "c", eval_fraction=0, max_tokens=cap, workers=1, progress=False)
    longest = int(np.diff(np.load(full.folder / "train_docs.npy")).max())
    assert cap - longest < len(part.train) <= cap  # whole files: at most one file short of the budget
    assert part.train[-1] == tok.eos_token_id
    pkgs = {m.split("_")[1] for m in tok.decode(part.train.tolist()).split("# FILE_")[1:]}
    assert pkgs == {"a", "b", "c"}  # hash order, not the alphabetically first package


def test_jsonl_rows_and_mixing_weights(tmp_path, tok):
    src = make_tree(tmp_path / "sp", n_files=12)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"content": f"row_{i} = '{WORDS[i % 11]}'\n" * 20}) for i in range(40)))
    corpus = build_corpus([src, rows], tok, weights=[3, 1], text_field="content", cache_dir=tmp_path / "c",
                          eval_fraction=0.1, workers=1, progress=False)
    assert corpus.sources[1].manifest["settings"]["kind"] == "rows"
    s = corpus.sampler(16, seed=0)
    assert s.weights == [0.75, 0.25]
    text = [tok.decode(s.row(g).tolist()) for g in range(1000)]  # one cycle
    from_rows = sum("row_" in t and "FILE_" not in t for t in text)
    assert 200 <= from_rows <= 300


def test_windows_do_not_repeat_before_the_epoch_ends_and_batches_are_a_function_of_the_step():
    tokens = np.arange(10 * 8, dtype=np.uint32)  # 10 windows of 8, each recognisable by its first token
    a = WindowStream(tokens, 8, seed=3, name="a")
    b = WindowStream(np.arange(1000, 1000 + 7 * 8, dtype=np.uint32), 8, seed=4, name="b")
    mix = MixtureSampler([a, b], [0.5, 0.5], 8, seed=0, cycle=10)
    starts = torch.cat([mix.batch(s, 4) for s in range(10)])[:, 0].tolist()  # 40 rows, 20 of each stream
    first_a = [x for x in starts if x < 1000][:10]
    first_b = [x for x in starts if x >= 1000][:7]
    assert sorted(first_a) == list(range(0, 80, 8)) and sorted(first_b) == list(range(1000, 1056, 8))
    assert [x for x in starts if x < 1000][10:] != first_a  # epoch 2 is a new permutation
    again = MixtureSampler([a, b], [0.5, 0.5], 8, seed=0, cycle=10)
    assert torch.equal(again.batch(7, 4), mix.batch(7, 4))  # no state: a resumed run asks for step 7 directly
    later = MixtureSampler([a, b], [0.5, 0.5], 8, seed=0, cycle=10, row_offset=12)
    assert torch.equal(later.batch(0, 4), mix.batch(3, 4))  # a later stage continues the walk


def test_retrieval_rows_hold_their_answers(tok):
    from convert.retrieval_data import RetrievalStream, kv_prompt

    hay = np.asarray(tok(" ".join(WORDS * 200), add_special_tokens=False)["input_ids"], np.uint32)
    ids, answer = kv_prompt(tok, hay.tolist(), 200, random.Random(0), n_pairs=4, answered=True)
    text = tok.decode(ids)
    name = text.rsplit("assert ", 1)[1].split(" ==")[0]
    assert len(ids) == 200 and text.endswith(answer) and f"{name} = '{answer}" in text
    s = RetrievalStream(tok, hay, 256, seed=1)
    r = s.draw(5)
    assert r.shape == (256,) and r[-1] == tok.eos_token_id and np.array_equal(r, s.draw(5))
    assert "assert " in tok.decode(r.tolist()) and not np.array_equal(r, s.draw(6))


def test_table_rows_hold_their_answer_in_one_block(tok):
    """A table document: all pairs in one block, the asked key among them, the answer its value; a table too long
    for its document is refused (the stream then halves the pairs), and a table-only stream's rows ask tables."""
    from convert.retrieval_data import RetrievalStream, table_prompt

    hay = np.asarray(tok(" ".join(WORDS * 200), add_special_tokens=False)["input_ids"], np.uint32)
    ids, answer = table_prompt(tok, hay.tolist(), 400, random.Random(0), n_pairs=8, answered=True)
    text = tok.decode(ids)
    block = text[text.index("REGISTRY = {"):text.index("}\n")]
    key = text.rsplit("assert REGISTRY['", 1)[1].split("'")[0]
    assert len(ids) == 400 and text.endswith(answer) and block.count(": '") == 8
    assert f"    '{key}': '{answer}," in block
    with pytest.raises(ValueError, match="a table of 8 pairs needs more than 20 tokens"):
        table_prompt(tok, hay.tolist(), 20, random.Random(0), n_pairs=8)
    s = RetrievalStream(tok, hay, 256, kinds=("table",), seed=1)
    rows = [tok.decode(s.draw(k).tolist()) for k in range(6)]
    assert all("REGISTRY = {" in r and "assert REGISTRY['" in r for r in rows)


def test_flops_per_token_counts_the_matmuls_the_model_runs():
    from torch.utils.flop_counter import FlopCounterMode

    from convert.throughput import flops_per_token
    from test_convert_conversion import tiny_qwen

    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model

    teacher = tiny_qwen("qwen2", layers=4)
    student = convert_model(teacher, parse_spec("jet,attn,swa,jet"), window=8)
    x = torch.randint(0, 101, (2, 16))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        teacher(input_ids=x)
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    linear = sum(v for k, v in counts.items() if k.split(".")[1] in ("mm", "addmm"))
    student.requires_grad_(True)
    f = flops_per_token(student, teacher, 16)
    t_mix = 4 * 4 * 16 * (17 / 2) * 4  # 4 layers x 4 H hd c, hd = 16, c = (L + 1) / 2
    assert f["teacher"] - t_mix == pytest.approx(linear / x.numel())
    # attention transfer runs the teacher for its layers' attention inputs and outputs, without the head, and stops at
    # the last one's attention (layer 3's MLP does not run)
    from convert.distill_loss import teacher_targets

    with FlopCounterMode(display=False) as fc:
        teacher_targets(teacher, x, [0, 3], inputs=True, final=False)
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    linear_local = sum(v for k, v in counts.items() if k.split(".")[1] in ("mm", "addmm"))
    assert linear_local < linear
    assert flops_per_token(student, teacher, 16, local=True)["teacher"] - t_mix == pytest.approx(
        linear_local / x.numel())
    # stage 1 (JetBlocks only) needs no weight gradients outside them: fewer FLOPs than training everything
    from convert.distill import set_trainable

    set_trainable(student, "jet")
    assert f["student"] > flops_per_token(student, teacher, 16)["student"]


def test_killed_run_on_the_corpus_path_resumes_bit_exactly(tmp_path, tok):
    from convert.distill import DistillConfig, distill
    from convert.layer_map import parse_spec
    from convert.pipeline import stage_samplers
    from convert.qwen_to_jet import convert_model
    from test_convert_conversion import tiny_qwen

    corpus = build_corpus([make_tree(tmp_path / "sp", n_files=30)], tok, cache_dir=tmp_path / "c", workers=1,
                          progress=False)
    cfg = dict(stage=1, steps=6, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=2, save_every=2, log_every=2)

    def run(ckpt=None, stop=None, resume=False):
        teacher = tiny_qwen("qwen2", layers=2, vocab=len(tok))
        student = convert_model(teacher, parse_spec("jet,attn"))
        c = DistillConfig(**cfg)
        sampler = stage_samplers(corpus, [c], 64, tok, {"ratio": 0.25, "kinds": ["passkey", "kv"]})[0]
        return student, distill(student, teacher, sampler, c, ckpt, resume=resume, stop=stop)

    ref, _ = run()
    out = run(tmp_path / "ck", stop=lambda step: step >= 3)[1]  # "killed" after step 3: step_2 is the newest
    assert out["stopped_at"] == 3 and (tmp_path / "ck" / "step_2").is_dir()
    resumed, res = run(tmp_path / "ck", resume=True)
    assert [h["step"] for h in res["history"]] == list(range(1, 7))
    assert all(h["tok_per_s"] > 0 for h in res["history"])
    for (n, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)


def test_a_single_text_file_holds_out_its_tail(tmp_path, tok):
    f = tmp_path / "one.py"
    f.write_text("\n".join(f"x_{i} = {i}" for i in range(400)))
    corpus = build_corpus([f], tok, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert corpus.eval_tokens == 0  # one file: nothing to hold out by files
    total = corpus.train_tokens
    moved = corpus.hold_out_tail(16, 0.1)
    assert moved % 16 == 0 and moved >= 16 and corpus.train_tokens + corpus.eval_tokens == total
    held = corpus.eval_rows(16, 1000)
    train = corpus.sampler(16).streams[0]
    assert held.shape[0] == moved // 16 and train.n == corpus.train_tokens // 16
    # the held-out rows are the stream's last tokens, after every training window
    assert np.array_equal(held.flatten().numpy(), np.asarray(corpus.sources[0].eval, np.int64))
    with pytest.raises(ValueError, match="the data is too short"):
        corpus.hold_out_tail(10 ** 6, 0.1)
