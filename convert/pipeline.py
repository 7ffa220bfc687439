"""End-to-end steps behind the CLI: convert a checkpoint to a folder; distil a converted folder to a folder.

Every step validates its inputs before writing anything and writes its folder atomically (`export.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from .corpus import build_corpus
from .data import check_tokenizer_fits
from .distill import FSDP_NOTE, DistillConfig, distill, perplexity, plot_history, uses_fsdp
from .distill_config import fsdp_turns_off_transfer
from .distill_loss import teacher_on
from .dtypes import DEFAULT_DTYPE, torch_dtype
from .export import load_source, refuse_overlap, write_folder
from .layer_map import resolve_layer_map
from .model_card import cache_bytes, render_card
from .official_layout import check_layout, check_representable
from .qwen_to_jet import convert_model
from .retrieval_data import DEFAULT_KINDS
from .run_identity import corpus_fingerprint, describe_difference, run_identity
from .source_check import check_finite, read_headers, safetensors_files
from .step_budget import budget_until, stage_ends


def stage_samplers(data, stages: list[DistillConfig], seq_len: int, tokenizer, retrieval: dict | None = None,
                   start_tokens: int = 0, row_workers: int | None = None):
    """One `MixtureSampler` per stage, at the stage's seq_len; each starts after the tokens the earlier stages
    drew (plus `start_tokens`, drawn by stages run in an earlier process), so stage 2 continues stage 1's epoch
    instead of re-reading its first rows. The generated streams (retrieval, chat rows) draw in `row_workers`
    processes (`row_workers.py`; None: `default_workers()`, 0: on the batch thread); the same rows either way."""
    from .chat_data import ChatCodeStream
    from .retrieval_data import RetrievalStream
    from .row_workers import AheadStream, resolve_workers

    check_row_workers(row_workers)
    workers = resolve_workers(row_workers)
    ahead = (lambda st: AheadStream(st, workers)) if workers > 0 else (lambda st: st)

    out, tokens = [], start_tokens
    chats = check_generated_rows(retrieval)
    r, c = (retrieval or {}).get("ratio", 0), (retrieval or {}).get("chat_ratio", 0)
    for cfg in stages:
        L = cfg.seq_len or seq_len
        extra = []
        hay = max((s.train for s in data.sources), key=len)
        # weights that make r (retrieval) and c (chat) of all rows generated, the corpus the rest
        if r > 0:
            stream = RetrievalStream(tokenizer, hay, L, retrieval.get("kinds", DEFAULT_KINDS), cfg.seed + 17)
            extra.append((ahead(stream), r / (1 - r - c) * sum(data.weights)))
        if c > 0:
            extra.append((ahead(ChatCodeStream(tokenizer, hay, L, cfg.seed + 29, chats=chats,
                                               docstrings=bool(retrieval.get("chat_docstrings")))),
                          c / (1 - r - c) * sum(data.weights)))
        sampler = data.sampler(L, cfg.seed, extra, row_offset=tokens // L)
        if cfg.batch_size > sum(getattr(s, "n", cfg.batch_size) for s in sampler.streams):
            raise ValueError(f"the data is too short: {data.train_tokens} training tokens make fewer rows of {L} "
                             f"than one batch of {cfg.batch_size}; add text or lower --seq-len / --batch-size")
        tokens += cfg.steps * cfg.batch_size * L
        out.append(sampler)
    return out


def follow_ran_steps(samplers: list, stages: list[DistillConfig], i: int, ran: int) -> None:
    """Stage i ran `ran` of its planned `stages[i].steps` (a time budget's count under its cap): the later stages'
    samplers start where it stopped instead of where its cap would have ended, so within an epoch no row is read
    twice (an offset past the epoch's end wraps into the next one's permutation) and none is skipped."""
    unused = (stages[i].steps - ran) * stages[i].batch_size * samplers[i].seq_len
    for later in samplers[i + 1:]:
        later.row_offset -= unused // later.seq_len


def check_time_split(split: list[float] | None, budget_s: float | None, stages: list[int]) -> None:
    """`--time-split`: a share of the budget for each stage with steps (`stages`, their numbers), each in (0, 1],
    summing to 1."""
    if split is None:
        return
    if budget_s is None:
        raise ValueError("--time-split divides --time-budget-min between the stages; give a budget too")
    names = ", ".join(f"stage {n}" for n in stages)
    if len(split) != len(stages):
        raise ValueError(f"--time-split gives {len(split)} shares, but {len(stages)} stages have steps ({names}): "
                         f"one share for each, in order")
    bad = [x for x in split if not (math.isfinite(x) and 0 < x <= 1)]
    if bad:
        raise ValueError(f"--time-split shares must be in (0, 1], got {bad[0]}")
    if abs(sum(split) - 1) > 1e-6:
        raise ValueError(f"--time-split shares sum to {sum(split):g}, not 1 ({names})")


def _generation_config(src_model):
    gc = getattr(src_model, "generation_config", None)
    return gc if gc is not None and src_model.can_generate() else None


def convert_checkpoint(source: str, out: str | Path, layer_map: str, *, jet: dict | None = None,
                       window: int | None = None, gguf_file: str | None = None, init: str = "attention",
                       seed: int = 0, dtype: str = DEFAULT_DTYPE, overwrite: bool = False, name: str | None = None,
                       layout: str = "transformers"):
    """Load `source`, convert with `layer_map`, save to `out` with tokenizer, generation config and card.

    Returns (model, tokenizer, source_model) so callers can go on (the demo distils right away).
    """
    out = Path(out)
    dtype_t = torch_dtype(dtype)
    if init not in ("attention", "random"):
        raise ValueError(f"--init {init!r} is not a JetBlock init scheme; allowed: 'attention', 'random'")
    if out.exists() and not overwrite:  # fail before the (possibly long) load
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    check_layout(layout)
    refuse_overlap(out, {"source": source})
    if Path(layer_map).is_file():
        refuse_overlap(out, {"layer map": layer_map})
    src_model, tok = load_source(source, gguf_file, dtype_t)
    lm = resolve_layer_map(layer_map, src_model.config.num_hidden_layers)
    if tok is not None:
        check_tokenizer_fits(tok, src_model.config.vocab_size, f"source model {source}")
    model = convert_model(src_model, lm, jet, window, init, seed, progress=True)
    model.to(dtype_t)
    card = render_card(model.config, src_model.config, source, name or out.name, lm.source)
    extra = {"conversion.json": json.dumps({"source": source, "gguf_file": gguf_file, "layer_map": lm.to_json(),
                                            "init": init, "seed": seed}, indent=2)}
    write_folder(out, model, tok, _generation_config(src_model), card, extra, overwrite, layout=layout)
    ratio = cache_bytes(src_model.config, 65536) / cache_bytes(model.config, 65536)
    print(f"wrote {out}: {lm.describe()} | cache at 64K context {ratio:.1f}x smaller than the source")
    return model, tok, src_model


def load_student(student: str | Path):
    """A converted Jet-Nemotron folder, in fp32, with its weights checked (present, right shape, finite)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(student)
    if not path.is_dir():
        why = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"student folder {student} {why} (give a folder written by `jet-nemotron convert`)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"student folder {student} has no config.json; is it a converted model folder?")
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as err:  # a local file: whatever the config class raised, the file is what is wrong
        raise ValueError(f"{path / 'config.json'} cannot be read as a model config: {err}") from err
    if cfg.model_type != "jet_nemotron":
        raise ValueError(f"student folder {student} holds a {cfg.model_type!r} model, not a Jet-Nemotron one; "
                         "convert it first with `jet-nemotron convert`")
    read_headers(safetensors_files(path))  # a truncated weight file is named before transformers reads it
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    check_finite(model.state_dict().items(), f"student {student}")
    return model


def prepare_checkpoint_folder(ckpt_dir: Path | None, resume: bool, overwrite: bool) -> None:
    """A fresh run needs an empty checkpoint folder (cleared with `overwrite`); a resumed one needs a checkpoint."""
    if ckpt_dir is None:
        return
    ckpt_dir = Path(ckpt_dir)
    found = sorted(p.relative_to(ckpt_dir).as_posix() for p in ckpt_dir.glob("stage*/step_*")) \
        if ckpt_dir.is_dir() else []
    if resume and not found:
        leftovers = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())  # e.g. a save cut short by a kill
        what, how = ("only unfinished files", " and with --overwrite") if leftovers else ("missing or empty", "")
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir} ({what}); run without --resume{how} to start "
                                "fresh")
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        if not overwrite:
            held = ", ".join(found[-2:]) or "files"
            raise FileExistsError(f"checkpoint folder {ckpt_dir} holds an earlier run ({held}); pass --resume to "
                                  "continue it or --overwrite to clear it")
        shutil.rmtree(ckpt_dir)
        print(f"cleared checkpoint folder {ckpt_dir} (--overwrite)")


def check_resume_identity(ckpt_dir: Path, identity: dict, skip: tuple[str, ...] = ()) -> None:
    """Refuse to resume checkpoints another run wrote, naming every setting that differs (but those in `skip`,
    e.g. the data before the corpus is built)."""
    for stage_dir in sorted(Path(ckpt_dir).glob("stage*")):
        steps = sorted(stage_dir.glob("step_*/progress.json"), key=lambda p: int(p.parent.name.split("_")[1]))
        if not steps:
            continue
        try:
            saved = json.loads(steps[-1].read_text()).get("identity")
        except json.JSONDecodeError as err:
            raise ValueError(f"checkpoint {steps[-1].parent} has a broken progress.json ({err})") from err
        saved = {k: v for k, v in (saved or {}).items() if k not in ("train_rows", "this_stage", *skip)} or None
        diff = describe_difference(saved, {k: v for k, v in identity.items() if k not in skip})
        if diff:
            raise ValueError(f"--resume: checkpoint {steps[-1].parent} belongs to a different run: {diff}")


def distill_checkpoint(teacher: str, student: str, out: str | Path, data: list[str], *, seq_len: int = 512,
                       stage1: DistillConfig | None = None, stage2: DistillConfig | None = None,
                       text_field: str = "text", max_tokens: int | None = None, eval_fraction: float = 0.05,
                       ckpt_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                       gguf_file: str | None = None, teacher_model=None, student_model=None, tokenizer=None,
                       stage3: DistillConfig | None = None, corpus: dict | None = None,
                       retrieval: dict | None = None, eval_rows: int = 64,
                       layout: str = "transformers", start_tokens: int = 0,
                       row_workers: int | None = None, time_budget_s: float | None = None,
                       time_split: list[float] | None = None) -> dict:
    """Stages 1, 2, 3 (any may be None), perplexities, loss curve, card; saves the student to `out`.

    The data is a `corpus.build_corpus` of `data` (cached tokenisation; `corpus` holds its other keyword
    arguments: weights, held_out, cache_dir, workers, on_stale, max_eval_tokens). A stage's rows have its own
    `cfg.seq_len` (default `seq_len`); each stage continues the walk over the corpus where the one before
    stopped. `retrieval` = {"ratio": r, "kinds": [...], "chat_ratio": c, "chat_file": path or None} mixes
    generated passkey / key-value rows (`retrieval_data.py`) into a fraction r of every stage's rows, and
    chat-formatted code rows (`chat_data.py`; from the chats of `chat_file` when given; with "chat_docstrings", of
    functions with a docstring only) into a fraction c. Perplexity is measured on `eval_rows` held-out rows of
    `seq_len`. `start_tokens`: training tokens drawn by earlier stages run in another process (a run
    split over several calls), so these stages continue the walk instead of repeating those rows.
    `time_budget_s`: the stages' wall clock from the first one's start; their steps become caps and each stage
    ends by then less `step_budget.RESERVE_S` (its count timed on its own warm-up, `DistillConfig.time_budget_s`), so a
    stage that reaches its cap leaves the rest to the next and the last one fills what is left. `time_split`: one
    share of that budget per stage with steps, in order, summing to 1; each stage then ends by its running share
    (`step_budget.stage_ends`), as `benchmarks/distill_variants.py`'s `split` does.

    Everything is validated before the models load: stage settings, data and corpus options, that `out` and
    `ckpt_dir` overlap no input, and the checkpoint folder (a fresh run needs it empty or `overwrite`; `resume`
    needs a checkpoint of this very run: its settings are checked before the corpus is built, its data, from the
    corpus manifest, right after).
    """
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    import jet_nemotron  # noqa: F401  (registers the auto classes)

    if time_budget_s is not None and not (time_budget_s > 0 and math.isfinite(time_budget_s)):
        raise ValueError(f"time budget must be a positive number of seconds, got {time_budget_s}")

    out = Path(out)
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    check_layout(layout)
    for c in (stage1, stage2, stage3):
        if c is not None and c.steps < 0:
            raise ValueError(f"--stage{c.stage}-steps must be >= 0, got {c.steps}")
    for c in (stage1, stage2, stage3):
        if c is not None and c.steps > 0 and c.seq_len is not None and c.seq_len < 2:
            raise ValueError(f"--stage{c.stage}-seq-len must be >= 2, got {c.seq_len}")
    raw = [c for c in (stage1, stage2, stage3) if c is not None and c.steps > 0]
    if not raw:
        raise ValueError("no distillation stage has steps > 0 (--stage1-steps / --stage2-steps / --stage3-steps)")
    check_time_split(time_split, time_budget_s, [c.stage for c in raw])
    stages = [c.resolved() for c in raw]  # every field checked before anything loads
    for c in stages:
        if c.batch_size % c.micro_batch:
            size, micro = {1: ("--batch-size", "--micro-batch"), 2: ("stage 2's --batch-size2 (else --batch-size)",
                           "stage 2's --micro-batch2 (else --micro-batch)"),
                           3: ("--stage3-batch-size", "--stage3-micro-batch")}[c.stage]
            raise ValueError(f"{size} {c.batch_size} is not a multiple of {micro} {c.micro_batch}")
    check_data_options(corpus, retrieval, eval_fraction, eval_rows, start_tokens, len(data))
    check_row_workers(row_workers)
    if seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {seq_len}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {max_tokens}")
    for d in data:
        if not Path(d).exists():
            raise FileNotFoundError(f"data path {d} does not exist")
    # an empty name (a model passed in memory, e.g. benchmarks/distill_real.py) is no path, not the working folder
    inputs = {"teacher": teacher or None, "student": student or None, **{f"data path {d}": d for d in data}}
    refuse_overlap(out, inputs)
    if ckpt_dir is not None:
        refuse_overlap(ckpt_dir, inputs, what="checkpoint folder")
        o, c = out.resolve(), ckpt_dir.resolve()
        if o == c or o in c.parents or c in o.parents:  # replacing the output would delete the checkpoints
            raise ValueError(f"checkpoint folder {ckpt_dir} overlaps the output {out}; give --ckpt-dir outside it")
    # resolved again as the stages will run: under FSDP a default attention transfer runs end to end, and the run
    # identity (what a resume must match) says so
    acc = Accelerator(mixed_precision=raw[0].mixed_precision)
    stages = [c.resolved(fsdp=uses_fsdp(acc)) for c in raw]
    if any(fsdp_turns_off_transfer(c, uses_fsdp(acc)) for c in raw):
        acc.print(FSDP_NOTE)
    prepare_checkpoint_folder(ckpt_dir, resume, overwrite)
    if teacher_model is None:
        teacher_model, _ = load_source(teacher, gguf_file)
    if student_model is None:
        student_model = load_student(student)
    if layout == "official":
        check_representable(student_model.config)  # not after hours of training
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(student)
    if student_model.config.vocab_size != teacher_model.config.vocab_size:
        raise ValueError(f"student vocab {student_model.config.vocab_size} != teacher vocab "
                         f"{teacher_model.config.vocab_size}: the KL needs one vocabulary")
    check_tokenizer_fits(tokenizer, student_model.config.vocab_size, "student")
    identity = run_identity(stages, seq_len, None, teacher_model.config, student_model.config,
                            retrieval=_retrieval_identity(retrieval), start_tokens=start_tokens)
    if resume:
        check_resume_identity(ckpt_dir, identity, skip=("data",))  # before the (possibly long) tokenisation
    t0 = time.perf_counter()
    kw = dict(corpus or {})
    with acc.main_process_first():  # the main process tokenises into the cache; the others then read it
        data_ = build_corpus(data, tokenizer, kw.pop("weights", None), max_tokens, text_field=text_field,
                             eval_fraction=eval_fraction, progress=acc.is_main_process, **kw)
    if data_.eval_tokens < seq_len and eval_fraction > 0:
        moved = data_.hold_out_tail(seq_len, eval_fraction)
        acc.print(f"note: the held-out files hold less than one row of {seq_len} tokens (one file cannot be split "
                  f"by files): the last {moved:,} training tokens are held out instead")
    identity["data"] = corpus_fingerprint(data_.identity(), max_tokens=max_tokens, eval_rows=eval_rows)
    if resume:
        check_resume_identity(ckpt_dir, identity)
    samplers = stage_samplers(data_, stages, seq_len, tokenizer, retrieval, start_tokens, row_workers)
    held = data_.eval_rows(seq_len, eval_rows)
    acc.print(f"data: {data_.describe()}; {held.shape[0]} held-out rows of {seq_len} "
              f"({time.perf_counter() - t0:.1f} s)")
    t_data = time.perf_counter() - t0
    summaries = _run_stages(student_model, teacher_model, samplers, held, stages, ckpt_dir, resume, identity, acc,
                            time_budget_s, time_split)
    seconds = {"data": t_data, "stages": time.perf_counter() - t0 - t_data}
    result = {"stages": summaries, "seconds": seconds, "data_sources": [s.manifest["settings"]["source"] for s in data_.sources],
              "data": data_.manifest(), "data_tokens": data_.train_tokens,
              "held_out_tokens": data_.eval_tokens, "seq_len": seq_len, "identity": identity}
    if acc.is_main_process:
        t = time.perf_counter()
        _report_and_save(result, student_model, teacher_model, tokenizer, held, teacher, out, overwrite, acc, layout)
        seconds["report_and_save"] = time.perf_counter() - t  # after distillation.json: it is in the result only
    acc.wait_for_everyone()
    return result


def _run_stages(student, teacher, samplers: list, held: torch.Tensor, stages, ckpt_dir, resume: bool,
                identity: dict, acc, time_budget_s: float | None = None,
                time_split: list[float] | None = None) -> list[dict]:
    """Each stage on its sampler; with `resume`, a stage resumes when its folder has a checkpoint, else starts
    fresh. Each summary records the passes over every source its stage reached."""
    summaries, t0 = [], time.perf_counter()
    ends = stage_ends(time_budget_s, time_split, len(stages)) if time_budget_s is not None else None
    for i, (cfg, sampler) in enumerate(zip(stages, samplers)):
        if ends is not None:
            cfg = replace(cfg, time_budget_s=budget_until(t0 + ends[i]))
        sub = Path(ckpt_dir) / f"stage{cfg.stage}" if ckpt_dir else None
        again = resume and sub is not None and any(sub.glob("step_*/progress.json"))
        known = summaries[-1].get("eval_kl_after") if summaries else None  # these weights, already measured
        s = distill(student, teacher, sampler, cfg, sub, again, held, acc, identity=identity, eval_kl_before=known)
        follow_ran_steps(samplers, stages, len(summaries), s["steps"])
        s["epochs"] = sampler.epochs_at(sampler.row_offset + s["steps"] * cfg.batch_size)
        summaries.append(s)
    return summaries


def _retrieval_identity(retrieval: dict | None) -> dict | None:
    """The generated-row settings that change the rows (none when no row is generated; no chat key when there are
    no chat rows, so the identity of a run from before chat rows is unchanged)."""
    if not retrieval or not (retrieval.get("ratio") or retrieval.get("chat_ratio")):
        return None
    out = {"ratio": retrieval.get("ratio", 0), "kinds": list(retrieval.get("kinds", DEFAULT_KINDS))}
    if retrieval.get("chat_ratio"):
        out["chat_ratio"] = retrieval["chat_ratio"]
        if retrieval.get("chat_file"):  # the chats' bytes, not the path: another file under the same name differs
            out["chat_file_sha256"] = hashlib.sha256(Path(retrieval["chat_file"]).read_bytes()).hexdigest()
        if retrieval.get("chat_docstrings"):  # absent when off: a run from before the option keeps its identity
            out["chat_docstrings"] = True
    return out


def check_data_options(corpus: dict | None, retrieval: dict | None, eval_fraction: float, eval_rows: int,
                       start_tokens: int, n_sources: int) -> None:
    """The corpus, held-out and retrieval options, before anything loads (one line naming the flag)."""
    corpus = corpus or {}
    weights = corpus.get("weights")
    if weights:
        if len(weights) != n_sources:
            raise ValueError(f"{n_sources} --data sources but {len(weights)} --data-weight values")
        if not all(w > 0 and math.isfinite(w) for w in weights):
            raise ValueError(f"--data-weight values must be > 0, got {list(weights)}")
    if corpus.get("on_stale", "rebuild") not in ("rebuild", "error"):
        raise ValueError(f"--on-stale must be 'rebuild' or 'error', got {corpus['on_stale']!r}")
    if corpus.get("workers") is not None and corpus["workers"] < 1:
        raise ValueError(f"--tokenise-workers must be >= 1, got {corpus['workers']}")
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    if eval_rows < 1:
        raise ValueError(f"--eval-rows must be >= 1, got {eval_rows}")
    if start_tokens < 0:
        raise ValueError(f"start_tokens must be >= 0, got {start_tokens}")
    check_generated_rows(retrieval)


def check_row_workers(row_workers: int | None) -> None:
    """--row-workers: None (the default count) or an integer >= 0, else a one-line error naming the flag."""
    if row_workers is not None and (isinstance(row_workers, bool) or not isinstance(row_workers, int)
                                    or row_workers < 0):
        raise ValueError(f"--row-workers must be an integer >= 0 (0: the batch thread draws them), got {row_workers}")


def check_generated_rows(retrieval: dict | None) -> list[list[dict]] | None:
    """The generated-row settings ({"ratio", "kinds", "chat_ratio", "chat_file", "chat_docstrings"}), one line naming
    the flag: checked before anything loads (`check_data_options`) and again where the rows are mixed
    (`stage_samplers`, which scripts call directly). Returns the chat file's chats (read once here, so the mixer does
    not read them again), or None."""
    from .retrieval_data import KINDS

    if not retrieval:
        return None
    r = retrieval.get("ratio", 0)
    if not (0 <= r < 1):  # also refuses NaN
        raise ValueError(f"--retrieval-ratio must be in [0, 1), got {r}")
    kinds = list(retrieval.get("kinds", DEFAULT_KINDS))
    bad = [k for k in kinds if k not in KINDS]
    if r > 0 and (bad or not kinds):
        raise ValueError(f"--retrieval-kinds must be among {', '.join(KINDS)}; got {','.join(kinds) or '(none)'}")
    c = retrieval.get("chat_ratio", 0)
    if not (0 <= c < 1) or not r + c < 1:
        raise ValueError(f"--chat-ratio must be in [0, 1) and below 1 - --retrieval-ratio, got {c} (retrieval {r})")
    f = retrieval.get("chat_file")
    if f and not c > 0:
        raise ValueError(f"--chat-file {f} is used by chat rows only: give --chat-ratio > 0 too")
    if retrieval.get("chat_docstrings") and (f or not c > 0):
        raise ValueError("--chat-docstrings picks the corpus functions that chat rows ask for: it needs --chat-ratio "
                         "> 0 and no --chat-file (whose chats are taken as they are)")
    if not f:
        return None
    from .chat_data import read_chats

    return read_chats(f)  # a missing file or a bad line, named; the chats, for the caller that mixes them in


def _report_and_save(result: dict, student, teacher, tokenizer, held: torch.Tensor, teacher_name: str, out: Path,
                     overwrite: bool, acc, layout: str = "transformers") -> None:
    """Perplexities and KL into `result`, then the folder: weights, card, distillation.json, loss curve."""
    summaries, dev = result["stages"], acc.device
    bf16 = summaries[-1]["config"]["mixed_precision"] == "bf16"  # measured as the run trained (and as served)
    with torch.autocast(torch.device(dev).type, torch.bfloat16, enabled=bf16):
        result["ppl_teacher"] = perplexity(teacher_on(teacher, dev), held, 8, dev)
        result["ppl_student"] = perplexity(student, held, 8, dev)
    result["kl_before"] = summaries[0].get("eval_kl_before")
    result["kl_after"] = summaries[-1].get("eval_kl_after")
    kl = " -> ".join("?" if v is None else f"{v:.4f}" for v in (result["kl_before"], result["kl_after"]))
    acc.print(f"held-out perplexity: teacher {result['ppl_teacher']:.3f}, student {result['ppl_student']:.3f}; "
              f"KL {kl} nats/token")
    history = [dict(h, step=h["step"] + sum(x["steps"] for x in summaries[:k]))
               for k, s in enumerate(summaries) for h in s["history"]]
    card = render_card(student.config, teacher.config, teacher_name, out.name, "config", result)
    student.to(torch.float32)
    gen = getattr(teacher, "generation_config", None)
    report = {"distillation.json": json.dumps(result, indent=1, default=str)}
    with tempfile.TemporaryDirectory() as td:
        png = Path(td) / "loss_curve.png"
        plot_history(history, png, f"distillation of {out.name}")
        write_folder(out, student, tokenizer, gen, card, report, overwrite, copy_files={png.name: png},
                     layout=layout)
