"""`jet-nemotron search placement / hardware` end to end on a tiny random Qwen2 with a small BPE tokenizer: the
output folder, a resumed supernet equal to an uninterrupted one, and the errors that must come before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A saved 2-layer Qwen2 with a 320-token BPE, and a text file of stdlib code for data and haystacks."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from convert.tiny_teacher import build_tokenizer, read_corpus, stdlib_files

    root = tmp_path_factory.mktemp("search_src")
    texts = read_corpus(stdlib_files("train"), max_chars=120_000)
    tok = build_tokenizer(texts, vocab_size=320)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None, initializer_range=0.2)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(root / "qwen")
    tok.save_pretrained(root / "qwen")
    (root / "data.txt").write_text("\n".join(texts))
    return root


def run(*argv) -> int:
    from convert.cli import main

    return main([str(a) for a in argv])


def placement_args(src: Path, out: Path, *extra):
    return ["search", "placement", src / "qwen", "--out", out, "--data", src / "data.txt", "--seq-len", 64,
            "--steps", 2, "--batch-size", 2, "--micro-batch", 2, "--retrieval-n", 2, "--retrieval-length", 96,
            "--lm-rows", 2, "--lm-length", 64, "--code-n", 2, "--save-every", 1, *extra]


def test_search_placement_cli_writes_a_layer_map_the_converter_takes(source, tmp_path):
    from convert.layer_map import load_json, resolve_layer_map
    from convert.qwen_to_jet import build_jet_config
    from transformers import AutoConfig

    out = tmp_path / "search"
    rc = run(*placement_args(source, out, "--attn", 1, "--swa", 1, "--window", 16, "--beam", 2,
                             "--objective", "retrieval,lm:0.5,code,mc"))
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"layer_map.json", "heatmap.png", "search_log.jsonl", "search.json",
                                                "supernet_loss.png"}
    lm = load_json(out / "layer_map.json")
    assert sorted(lm.layer_types) == ["attn", "swa"] and lm.swa == {"window_size": 16}
    scores = lm.metadata["search"]["scores"]
    assert set(scores) == {"attn", "swa"} and set(scores["attn"]) >= {"retrieval", "lm", "code", "mc", "combined"}
    assert len(scores["attn"]["retrieval"]) == 2  # one score per layer
    summary = json.loads((out / "search.json").read_text())
    assert summary["objective"] == {"retrieval": 1.0, "lm": 0.5, "code": 1.0, "mc": 1.0}
    assert summary["timings_s"]["supernet_train"] > 0 and summary["evaluations"] >= 4
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert len(log) == summary["evaluations"] and all("seconds" in r for r in log)
    # the map is one the converter accepts as it is
    cfg = build_jet_config(AutoConfig.from_pretrained(source / "qwen"), resolve_layer_map(str(out / "layer_map.json")))
    assert cfg.official_layer_types == lm.layer_types
    assert not list(tmp_path.glob(".search.tmp*"))  # written under a temporary name, then renamed
    # a second run with --resume reuses the finished supernet and the scores: nothing is trained or scored again
    rc = run(*placement_args(source, out, "--attn", 1, "--swa", 1, "--window", 16, "--beam", 2,
                             "--objective", "retrieval,lm:0.5,code,mc", "--resume", "--overwrite"))
    assert rc == 0
    again = json.loads((out / "search.json").read_text())
    assert again["placement"] == summary["placement"] and again["timings_s"]["scoring"] == 0.0
    # without --resume the supernet is trained afresh and nothing measured on the old one is reused
    rc = run(*placement_args(source, out, "--attn", 1, "--swa", 1, "--window", 16, "--method", "kl-guided",
                             "--objective", "retrieval,lm:0.5,code,mc", "--overwrite"))
    assert rc == 0
    fresh = json.loads((out / "search.json").read_text())
    assert fresh["method"] == "kl-guided" and fresh["timings_s"]["scoring"] > 0
    assert sorted(fresh["placement"]) == ["attn", "swa"]


def test_supernet_resumes_bit_exactly_after_a_kill(source, tmp_path):
    from transformers import AutoModelForCausalLM

    from convert.search.supernet import Supernet
    from convert.search.train import SupernetConfig, train_supernet

    src = AutoModelForCausalLM.from_pretrained(source / "qwen", dtype=torch.float32)
    rows = torch.randint(0, src.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(0))
    cfg = dict(steps=4, batch_size=2, micro_batch=1, attn=1, sampling="bernoulli", save_every=2, warmup_steps=1)
    quiet = lambda *a: None  # noqa: E731
    straight = Supernet.from_source(src)
    full = train_supernet(straight, rows, SupernetConfig(**cfg), tmp_path / "a", log=quiet)
    killed = Supernet.from_source(src)
    part = train_supernet(killed, rows, SupernetConfig(**cfg, stop_after=3), tmp_path / "b", log=quiet)
    assert part["stopped_at"] == 3 and (tmp_path / "b" / "supernet_step_2.pt").exists()
    resumed = Supernet.from_source(src)  # a fresh process: new weights from the source, then the checkpoint
    rest = train_supernet(resumed, rows, SupernetConfig(**cfg), tmp_path / "b", resume=True, log=quiet)
    a, b = straight.jet_state_dict(), resumed.jet_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in rest["history"]] == [h["loss"] for h in full["history"]]
    assert any(not torch.equal(a[k], Supernet.from_source(src).jet_state_dict()[k]) for k in a)  # it trained


@pytest.mark.parametrize("extra, message", [
    (("--attn", 2, "--swa", 1, "--window", 8), "--attn 2 + --swa 1 = 3 layers, but the source has only 2"),
    (("--objective", "retrieval,bogus"), "unknown objective 'bogus'"),
    (("--attn", 1, "--swa", 1), "--swa needs a sliding window size"),
    (("--lm-length", 100000, "--objective", "lm"), "lm eval: the held-out text has"),
    (("--retrieval-length", 100000, "--objective", "retrieval"), "retrieval eval: the haystack text has"),
])
def test_search_placement_refuses_bad_input_before_training(source, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run(*placement_args(source, out, *extra)) == 1
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.ckpt").exists()


def test_search_placement_refuses_an_empty_mc_set_and_an_unsupported_source(source, tmp_path, capsys):
    from transformers import LlamaConfig

    empty = tmp_path / "mc.json"
    empty.write_text("[]")
    assert run(*placement_args(source, tmp_path / "o", "--objective", "mc", "--mc-file", empty)) == 1
    assert "holds no questions" in capsys.readouterr().err
    LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                vocab_size=64).save_pretrained(tmp_path / "llama")
    args = placement_args(source, tmp_path / "o", "--objective", "lm")
    args[2] = tmp_path / "llama"
    assert run(*args) == 1
    assert "unsupported source architecture: model_type 'llama'" in capsys.readouterr().err
    assert not (tmp_path / "o.ckpt").exists()


def test_scores_cache_resumes_a_search_without_rescoring(tmp_path):
    from convert.search.placement import Scorer

    class Net:  # enough of a supernet for one placement
        num_layers = 2
        calls = 0

        def set_placement(self, p):
            Net.calls += 1

    import convert.search.placement as placement

    real = placement.score
    placement.score = lambda net, sets, device, autocast: {"lm": {"score": 0.5, "kl": 0.5}}
    try:
        first = Scorer(Net(), {}, "cpu", cache_path=tmp_path / "scores.jsonl")
        first(("jet", "attn"))
        second = Scorer(Net(), {}, "cpu", cache_path=tmp_path / "scores.jsonl")
        assert second(("jet", "attn")) == {"lm": {"score": 0.5, "kl": 0.5}}
    finally:
        placement.score = real
    assert Net.calls == 1


def test_search_hardware_cpu_reference_table_and_layer_map(source, tmp_path):
    from convert.layer_map import load_json

    out = tmp_path / "hw"
    rc = run("search", "hardware", source / "qwen", "--state-bytes", 4 * 2 * 32 * 32, "--out", out,
             "--cpu-reference", "--prefill-len", 16, "--decode-batch", 2, "--min-dim", 16, "--max-dk", 32,
             "--max-dv", 64, "--heads", "", "--layer-map", "attn,jet")
    assert rc == 0
    summary = json.loads((out / "hardware.json").read_text())
    shapes = {(r["heads"], r["dk"], r["dv"]) for r in summary["rows"]}
    assert shapes == {(8, 16, 16), (4, 16, 32), (2, 16, 64), (4, 32, 16), (2, 32, 32), (1, 32, 64)}
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for r in summary["rows"])
    lm = load_json(out / "layer_map.json")
    c = summary["chosen"]
    assert lm.layer_types == ["attn", "jet"]
    assert (lm.jet["num_heads"], lm.jet["head_dim"]) == (c["heads"], c["dk"])
    assert round(lm.jet["head_dim"] * lm.jet["expand_v"]) == c["dv"]
    assert (out / "hardware.png").exists() and (out / "hardware.md").read_text().count("\n| ") == 7


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_search_hardware_refuses_the_cpu_without_the_reference_flag(source, tmp_path, capsys):
    assert run("search", "hardware", source / "qwen", "--state-bytes", 8192, "--out", tmp_path / "hw") == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
