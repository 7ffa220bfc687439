"""End-to-end steps behind the CLI: convert a checkpoint to a folder; distil a converted folder to a folder.

Every step validates its inputs before writing anything and writes its folder atomically (`export.py`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .data import check_tokenizer_fits, load_packed
from .distill import DistillConfig, distill, perplexity, plot_history, teacher_on
from .export import load_source, write_folder
from .layer_map import resolve_layer_map
from .model_card import cache_bytes, render_card
from .official_layout import check_layout, check_representable
from .qwen_to_jet import convert_model


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
                       layout: str = "transformers") -> dict:
    """Stage 1 then stage 2 (either may be None), perplexities, loss curve, card; saves the student to `out`."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jet_nemotron  # noqa: F401  (registers the auto classes)

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    check_layout(layout)
    stages = [c for c in (stage1, stage2) if c is not None and c.steps > 0]
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
    need = max(c.batch_size for c in stages)
    packed = load_packed(data, tokenizer, seq_len, text_field, eval_fraction, min_train_rows=need,
                         max_tokens=max_tokens)
    acc = Accelerator(mixed_precision=stages[0].mixed_precision)
    acc.print(f"data: {packed.num_documents} documents, {packed.num_tokens:,} tokens -> {packed.train.shape[0]} "
              f"train rows and {packed.eval.shape[0]} held-out rows of {seq_len}")
    summaries = []
    for i, cfg in enumerate(stages):
        sub = Path(ckpt_dir) / f"stage{cfg.stage}" if ckpt_dir else None
        s = distill(student_model, teacher_model, packed.train, cfg, sub, resume, packed.eval, acc)
        summaries.append(s)
    result = {"stages": summaries, "data_sources": packed.sources[:20], "data_tokens": packed.num_tokens,
              "seq_len": seq_len}
    if acc.is_main_process:
        dev = acc.device
        result["ppl_teacher"] = perplexity(teacher_on(teacher_model, dev), packed.eval, 8, dev)
        result["ppl_student"] = perplexity(student_model, packed.eval, 8, dev)
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
