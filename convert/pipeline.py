"""End-to-end steps behind the CLI: convert a checkpoint to a folder; distil a converted folder to a folder.

Every step validates its inputs before writing anything and writes its folder atomically (`export.py`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from .corpus import build_corpus
from .data import check_tokenizer_fits
from .distill import DistillConfig, distill, perplexity, plot_history, teacher_on
from .export import load_source, write_folder
from .layer_map import resolve_layer_map
from .model_card import cache_bytes, render_card
from .official_layout import check_layout, check_representable
from .qwen_to_jet import convert_model


def stage_samplers(data, stages: list[DistillConfig], seq_len: int, tokenizer, retrieval: dict | None = None,
                   start_tokens: int = 0):
    """One `MixtureSampler` per stage, at the stage's seq_len; each starts after the tokens the earlier stages
    drew (plus `start_tokens`, drawn by stages run in an earlier process), so stage 2 continues stage 1's epoch
    instead of re-reading its first rows."""
    from .retrieval_data import RetrievalStream

    out, tokens = [], start_tokens
    for cfg in stages:
        L = cfg.seq_len or seq_len
        extra = []
        if retrieval and retrieval.get("ratio", 0) > 0:
            r = retrieval["ratio"]
            if not 0 < r < 1:
                raise ValueError(f"--retrieval-ratio must be in [0, 1), got {r}")
            hay = max((s.train for s in data.sources), key=len)
            stream = RetrievalStream(tokenizer, hay, L, retrieval.get("kinds", ("passkey", "kv")), cfg.seed + 17)
            extra = [(stream, r / (1 - r) * sum(data.weights))]  # r of all rows
        sampler = data.sampler(L, cfg.seed, extra, row_offset=tokens // L)
        if cfg.batch_size > sum(getattr(s, "n", cfg.batch_size) for s in sampler.streams):
            raise ValueError(f"the data is too short: {data.train_tokens} training tokens make fewer rows of {L} "
                             f"than one batch of {cfg.batch_size}; add text or lower --seq-len / --batch-size")
        tokens += cfg.steps * cfg.batch_size * L
        out.append(sampler)
    return out


def _generation_config(src_model):
    gc = getattr(src_model, "generation_config", None)
    return gc if gc is not None and src_model.can_generate() else None


def convert_checkpoint(source: str, out: str | Path, layer_map: str, jet: dict | None = None,
                       window: int | None = None, gguf_file: str | None = None, init: str = "attention",
                       seed: int = 0, dtype: str = "float32", overwrite: bool = False, name: str | None = None,
                       layout: str = "transformers"):
    """Load `source`, convert with `layer_map`, save to `out` with tokenizer, generation config and card.

    Returns (model, tokenizer, source_model) so callers can go on (the demo distils right away).
    """
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the (possibly long) load
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    check_layout(layout)
    src_model, tok = load_source(source, gguf_file, getattr(torch, dtype))
    lm = resolve_layer_map(layer_map, src_model.config.num_hidden_layers)
    if tok is not None:
        check_tokenizer_fits(tok, src_model.config.vocab_size, f"source model {source}")
    model = convert_model(src_model, lm, jet, window, init, seed, progress=True)
    model.to(getattr(torch, dtype))
    card = render_card(model.config, src_model.config, source, name or out.name, lm.source)
    extra = {"conversion.json": json.dumps({"source": source, "gguf_file": gguf_file, "layer_map": lm.to_json(),
                                            "init": init, "seed": seed}, indent=2)}
    write_folder(out, model, tok, _generation_config(src_model), card, extra, overwrite, layout=layout)
    ratio = cache_bytes(src_model.config, 65536) / cache_bytes(model.config, 65536)
    print(f"wrote {out}: {lm.describe()} | cache at 64K context {ratio:.1f}x smaller than the source")
    return model, tok, src_model


def distill_checkpoint(teacher: str, student: str, out: str | Path, data: list[str], seq_len: int = 512,
                       stage1: DistillConfig | None = None, stage2: DistillConfig | None = None,
                       text_field: str = "text", max_tokens: int | None = None, eval_fraction: float = 0.05,
                       ckpt_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                       gguf_file: str | None = None, teacher_model=None, student_model=None, tokenizer=None,
                       stage3: DistillConfig | None = None, corpus: dict | None = None,
                       retrieval: dict | None = None, eval_rows: int = 64,
                       layout: str = "transformers", start_tokens: int = 0) -> dict:
    """Stages 1, 2, 3 (any may be None), perplexities, loss curve, card; saves the student to `out`.

    The data is a `corpus.build_corpus` of `data` (cached tokenisation; `corpus` holds its other keyword
    arguments: weights, held_out, cache_dir, workers, on_stale, max_eval_tokens). A stage's rows have its own
    `cfg.seq_len` (default `seq_len`); each stage continues the walk over the corpus where the one before
    stopped. `retrieval` = {"ratio": r, "kinds": [...]} mixes generated passkey / key-value rows
    (`retrieval_data.py`) into a fraction r of every stage's rows. Perplexity is measured on `eval_rows` held-out
    rows of `seq_len`. `start_tokens`: training tokens drawn by earlier stages run in another process (a run
    split over several calls), so these stages continue the walk instead of repeating those rows.
    """
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jet_nemotron  # noqa: F401  (registers the auto classes)

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    check_layout(layout)
    stages = [c for c in (stage1, stage2, stage3) if c is not None and c.steps > 0]
    if not stages:
        raise ValueError("no distillation stage has steps > 0")
    if teacher_model is None:
        teacher_model, _ = load_source(teacher, gguf_file)
    if student_model is None:
        student_model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    if layout == "official":
        check_representable(student_model.config)  # not after hours of training
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(student)
    if student_model.config.vocab_size != teacher_model.config.vocab_size:
        raise ValueError(f"student vocab {student_model.config.vocab_size} != teacher vocab "
                         f"{teacher_model.config.vocab_size}: the KL needs one vocabulary")
    check_tokenizer_fits(tokenizer, student_model.config.vocab_size, "student")
    acc = Accelerator(mixed_precision=stages[0].mixed_precision)
    t0 = time.perf_counter()
    kw = dict(corpus or {})
    with acc.main_process_first():  # the main process tokenises into the cache; the others then read it
        data_ = build_corpus(data, tokenizer, kw.pop("weights", None), max_tokens, text_field=text_field,
                             eval_fraction=eval_fraction, progress=acc.is_main_process, **kw)
    if data_.eval_tokens < seq_len and eval_fraction > 0:
        moved = data_.hold_out_tail(seq_len, eval_fraction)
        acc.print(f"note: the held-out files hold less than one row of {seq_len} tokens (one file cannot be split "
                  f"by files): the last {moved:,} training tokens are held out instead")
    samplers = stage_samplers(data_, stages, seq_len, tokenizer, retrieval, start_tokens)
    held = data_.eval_rows(seq_len, eval_rows)
    acc.print(f"data: {data_.describe()}; {held.shape[0]} held-out rows of {seq_len} "
              f"({time.perf_counter() - t0:.1f} s)")
    summaries = []
    for cfg, sampler in zip(stages, samplers):
        sub = Path(ckpt_dir) / f"stage{cfg.stage}" if ckpt_dir else None
        s = distill(student_model, teacher_model, sampler, cfg, sub, resume, held, acc)
        s["epochs"] = sampler.epochs_at((sampler.row_offset + cfg.steps * cfg.batch_size))
        summaries.append(s)
    result = {"stages": summaries, "data_sources": [s.manifest["settings"]["source"] for s in data_.sources],
              "data": data_.manifest(), "data_tokens": data_.train_tokens,
              "held_out_tokens": data_.eval_tokens, "seq_len": seq_len, "data_seconds": time.perf_counter() - t0}
    if acc.is_main_process:
        dev = acc.device
        result["ppl_teacher"] = perplexity(teacher_on(teacher_model, dev), held, 8, dev)
        result["ppl_student"] = perplexity(student_model, held, 8, dev)
        result["kl_before"] = summaries[0].get("eval_kl_before")
        result["kl_after"] = summaries[-1].get("eval_kl_after")
        kl = " -> ".join("?" if v is None else f"{v:.4f}" for v in (result["kl_before"], result["kl_after"]))
        acc.print(f"held-out perplexity: teacher {result['ppl_teacher']:.3f}, student {result['ppl_student']:.3f}; "
                  f"KL {kl} nats/token")
        history = [dict(h, step=h["step"] + sum(x["steps"] for x in summaries[:k]))
                   for k, s in enumerate(summaries) for h in s["history"]]
        card = render_card(student_model.config, teacher_model.config, teacher, out.name, "config", result)
        student_model.to(torch.float32)
        gen = getattr(teacher_model, "generation_config", None)
        report = {"distillation.json": json.dumps(result, indent=1, default=str)}
        with tempfile.TemporaryDirectory() as td:
            png = Path(td) / "loss_curve.png"
            plot_history(history, png, f"distillation of {out.name}")
            write_folder(out, student_model, tokenizer, gen, card, report, overwrite, copy_files={png.name: png},
                         layout=layout)
    acc.wait_for_everyone()
    return result
