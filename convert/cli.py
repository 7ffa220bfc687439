"""`jet-nemotron` console script: typed commands (typer, already a dependency of transformers 5.x).

    jet-nemotron convert SOURCE OUT --layer-map jet-nemotron-2b
    jet-nemotron distill --teacher SOURCE --student CONVERTED OUT --data corpus/ ...
    jet-nemotron export OUT OUT-official --layout official
    jet-nemotron push OUT user/repo [--private] [--revision main] [--dry-run]
    jet-nemotron eval MODEL [--baseline TEACHER] --suite ppl,niah,humaneval,speed,lm-eval:TASKS --out DIR
    jet-nemotron demo
    jet-nemotron search placement SOURCE --attn 2 --swa 2 --objective retrieval,lm --data corpus/ --out DIR
    jet-nemotron search hardware SOURCE --state-bytes 1179648 --out DIR
Errors are printed as one line naming the file / tensor / layer / flag and exit with status 1; nothing is written.
`jet-nemotron --debug COMMAND ...` shows the full traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .dtypes import DEFAULT_DTYPE
from .retrieval_data import DEFAULT_KINDS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Qwen2 / Qwen2.5 / Qwen3 checkpoints to Jet-Nemotron, distil, and upload.")
_state = {"debug": False}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error instead of "
                                                                  "one line")] = False):
    _state["debug"] = debug


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="local folder, Hub id, or a .gguf file")],
    out: Annotated[Path, typer.Argument(help="output folder (written atomically)")],
    layer_map: Annotated[str, typer.Option(help="preset (jet-nemotron-2b, jet-nemotron-4b), a layer-map .json, "
                                                "or a spec like 'jet*14,attn,jet*4,attn,swa*2,jet*6' or "
                                                "'attn:14,19 swa:20,21'")] = "jet-nemotron-2b",
    gguf_file: Annotated[Optional[str], typer.Option(help="GGUF file name inside SOURCE")] = None,
    jet_heads: Annotated[Optional[int], typer.Option(help="JetBlock heads (default: map, else source heads)")] = None,
    jet_head_dim: Annotated[Optional[int], typer.Option(help="JetBlock key head size dk")] = None,
    expand_v: Annotated[Optional[float], typer.Option(help="value head size dv = dk * expand_v")] = None,
    conv_size: Annotated[Optional[int], typer.Option(help="dynamic convolution width K")] = None,
    generator_reduction: Annotated[Optional[int], typer.Option(help="kernel generator width H*dv / r")] = None,
    window: Annotated[Optional[int], typer.Option(help="sliding window of 'swa' layers (tokens)")] = None,
    init: Annotated[str, typer.Option(help="JetBlock init: 'attention' (from the replaced attention) or "
                                           "'random'")] = "attention",
    dtype: Annotated[str, typer.Option(help="saved dtype: float32, bfloat16, float16")] = DEFAULT_DTYPE,
    seed: Annotated[int, typer.Option(help="seed of the JetBlock tensors not copied from the source")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    layout: Annotated[str, typer.Option(help="folder layout: 'transformers' (ours) or 'official' (NVIDIA's "
                                             "release: loads in its HF code and in SGLang)")] = "transformers",
):
    """Convert a Qwen checkpoint into a Jet-Nemotron folder (undistilled)."""
    from .pipeline import convert_checkpoint

    jet = {"num_heads": jet_heads, "head_dim": jet_head_dim, "expand_v": expand_v, "conv_size": conv_size,
           "dconv_generator_reduction": generator_reduction}
    convert_checkpoint(source, out, layer_map, jet=jet, window=window, gguf_file=gguf_file, init=init, seed=seed,
                       dtype=dtype, overwrite=overwrite, layout=layout)


def _recipe(ctx: typer.Context, name: Optional[str]) -> Optional[str]:
    """--recipe's callback, run before the other options are read (eager): the recipe's values become their
    defaults, so a flag given on the command line still wins."""
    if name is not None:
        from .recipes import recipe_defaults

        ctx.default_map = {**(ctx.default_map or {}), **recipe_defaults(name)}
    return name


@app.command()
def distill(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="output folder of the distilled model")],
    teacher: Annotated[str, typer.Option(help="the source Qwen checkpoint (folder, Hub id or .gguf)")],
    student: Annotated[str, typer.Option(help="a folder written by `jet-nemotron convert`")],
    data: Annotated[list[str], typer.Option(help="text/jsonl/parquet files, folders, or a saved datasets folder; "
                                                 "repeat for several")],
    seq_len: Annotated[int, typer.Option(help="tokens per training row of stages 1-2 (fixed windows of the "
                                              "tokenised corpus)")] = 2048,
    text_field: Annotated[str, typer.Option(help="field holding the text in .jsonl / parquet / datasets data")
                          ] = "text",
    max_tokens: Annotated[Optional[int], typer.Option(help="training tokens to tokenise, shared out over the "
                                                           "--data sources by weight (default: all)")] = None,
    data_weight: Annotated[Optional[list[float]], typer.Option(help="mixing weight of each --data source, in "
                                                                    "order (default: equal)")] = None,
    held_out: Annotated[Optional[list[str]], typer.Option(help="hold out these files / folders (a package name "
                                                               "like 'pandas', or a glob on the path inside a "
                                                               "source); repeat. Default: --eval-fraction of "
                                                               "the files by a hash of the path")] = None,
    eval_fraction: Annotated[float, typer.Option(help="fraction of files held out when no --held-out")] = 0.05,
    eval_rows: Annotated[int, typer.Option(help="held-out rows of --seq-len for perplexity and KL")] = 64,
    corpus_cache: Annotated[Optional[Path], typer.Option(help="tokenised-corpus cache (default "
                                                              "$JET_NEMOTRON_CACHE/corpus or ~/.cache/jet-nemotron/"
                                                              "corpus)")] = None,
    tokenise_workers: Annotated[Optional[int], typer.Option(help="tokenising processes (default: all "
                                                                 "cores)")] = None,
    row_workers: Annotated[Optional[int], typer.Option(
        help="processes drawing the generated rows (chat, retrieval) ahead of the steps (default: up to 4, leaving "
             "two cores; 0: the batch thread)")] = None,
    on_stale: Annotated[str, typer.Option(help="a cached tokenisation whose source files changed: 'rebuild' "
                                               "(say so and rebuild) or 'error'")] = "rebuild",
    stage1_steps: Annotated[int, typer.Option(help="optimizer steps of stage 1 (JetBlocks only: KL + attention "
                                                   "MSE); 0 skips it")] = 1000,
    stage2_steps: Annotated[int, typer.Option(help="optimizer steps of stage 2 (everything: KL); 0 skips it")] = 0,
    stage3_steps: Annotated[int, typer.Option(help="long-context stage after stage 2 (trains --train2 on the "
                                                   "KL) at --stage3-seq-len; 0 skips it")] = 0,
    stage3_seq_len: Annotated[int, typer.Option(help="tokens per training row of stage 3")] = 8192,
    time_budget_min: Annotated[Optional[float], typer.Option(
        help="the stages' wall clock in minutes: the --stageN-steps become caps, and each stage ends by then, its "
             "step count timed on its own warm-up, so the last stage fills what the others leave")] = None,
    time_split: Annotated[Optional[str], typer.Option(
        help="comma-separated shares of --time-budget-min, one per stage with steps, in order, summing to 1 (e.g. "
             "0.7,0.3): each stage ends by its running share instead of running to its cap")] = None,
    stage3_batch_size: Annotated[Optional[int], typer.Option(help="default: the tokens per step of stages 1-2, "
                                                                  "batch-size x seq-len / stage3-seq-len")] = None,
    stage3_micro_batch: Annotated[Optional[int], typer.Option(help="default: min(micro-batch, "
                                                                   "stage3-batch-size)")] = None,
    lr3: Annotated[Optional[float], typer.Option(help="stage-3 learning rate (default: --lr2)")] = None,
    retrieval_ratio: Annotated[float, typer.Option(help="fraction in [0, 1) of every stage's rows that are "
                                                        "generated long-range retrieval documents (passkey / "
                                                        "key-value lookups in corpus text)")] = 0.0,
    retrieval_kinds: Annotated[str, typer.Option(help="comma-separated: passkey, kv, table (convert/README.md)")
                               ] = ",".join(DEFAULT_KINDS),
    chat_ratio: Annotated[float, typer.Option(help="fraction in [0, 1) of every stage's rows that are chats built "
                                                   "from the corpus's Python functions in the tokenizer's chat "
                                                   "template (an instruct teacher is used so; needs a chat "
                                                   "template and a code corpus)")] = 0.0,
    chat_file: Annotated[Optional[Path], typer.Option(help="jsonl(.gz) of {'messages': [...]} chats that the chat "
                                                           "rows draw from instead of the corpus (e.g. the "
                                                           "teacher's own answers: convert/teacher_answers.py)")
                         ] = None,
    chat_docstrings: Annotated[bool, typer.Option(help="chat rows ask only for the corpus's functions whose head "
                                                       "holds a docstring, as HumanEval asks")] = False,
    batch_size: Annotated[int, typer.Option(help="sequences per optimizer step, all processes together")] = 32,
    micro_batch: Annotated[int, typer.Option(help="sequences per forward per process")] = 4,
    batch_size2: Annotated[Optional[int], typer.Option(
        help="sequences per optimizer step in stage 2, all processes together (default: --batch-size); stage 3's "
             "default batch keeps its tokens a step")] = None,
    micro_batch2: Annotated[Optional[int], typer.Option(
        help="sequences per forward per process in stages 2-3 (default: --micro-batch): stage 2 trains every "
             "weight, so an 80 GB card takes 2 rows of 2,048 tokens a forward there where stage 1 takes 8")] = None,
    lr1: Annotated[float, typer.Option(help="peak learning rate of stage 1 (AdamW)")] = 1e-3,
    lr2: Annotated[float, typer.Option(help="peak learning rate of stage 2 (1e-4 undid much of stage 1 on a real "
                                            "1.5B Qwen, where 3e-5 did not: convert/README.md)")] = 3e-5,
    jet_lr2: Annotated[Optional[float], typer.Option(help="peak learning rate of the JetBlocks' own weights in "
                                                          "stages 2-3, on the same schedule (default: --lr2 / "
                                                          "--lr3)")] = None,
    warmup: Annotated[int, typer.Option(help="linear warm-up steps of each stage, then cosine to "
                                             "--min-lr-ratio of the peak")] = 50,
    min_lr_ratio: Annotated[float, typer.Option(help="cosine schedule: the last step's lr / the peak lr")] = 0.1,
    mse_weight: Annotated[float, typer.Option(help="stage-1 attention-output MSE weight")] = 1.0,
    kl_weight: Annotated[float, typer.Option(help="weight of the logit KL(teacher || student), both stages")] = 1.0,
    kl_top1: Annotated[float, typer.Option(
        help="stages 2-3: this share of the KL's target moved onto the teacher's first choice, a margin for greedy "
             "decoding where the teacher is unsure (convert/kl.py; 0: the plain KL)")] = 0.0,
    kl_focus: Annotated[float, typer.Option(
        help="stages 2-3: each token's KL weighed by 1 + this x (1 - the teacher's top probability there), towards "
             "the tokens where the teacher is unsure (convert/kl.py; 0: the plain mean)")] = 0.0,
    train1: Annotated[str, typer.Option(help="stage-1 trainable set: jet, mixers, non-mlp, all")] = "jet",
    stage1_local: Annotated[Optional[bool], typer.Option(
        "--stage1-local/--no-stage1-local",
        help="stage 1 as attention transfer: each JetBlock alone on the teacher's input to that layer's attention, "
             "against its output (MSE only, no KL, no end-to-end pass). Default: on when --train1 is jet and "
             "--mse-weight > 0 (on a real 1.5B Qwen, 2 minutes of it reached a held-out KL of 0.42 where an "
             "end-to-end stage 1 reached 4.54; convert/README.md)")] = None,
    train2: Annotated[str, typer.Option(help="stage-2 trainable set: jet, mixers (no MLPs, embeddings or head), "
                                             "non-mlp, all")] = "all",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (GPU)")] = False,
    frozen_bf16: Annotated[bool, typer.Option(help="with --bf16: hold the weights a stage does not train in bf16, "
                                                   "the precision autocast computes them in (the same arithmetic; "
                                                   "stage 2 with --train2 non-mlp on a 1.5B Qwen: 19 GB less and "
                                                   "10% faster a step, convert/README.md)")] = False,
    residual_bf16: Annotated[bool, typer.Option(help="with --bf16: the student's residual stream and norm outputs "
                                                     "in bf16 in the end-to-end stages, instead of fp32 cast around "
                                                     "every product: 3.9% off a stage-2 step of a 1.5B Qwen at "
                                                     "the same held-out KL (run o, convert/README.md); on in "
                                                     "--recipe 15min")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations in backward (less memory)")
                                      ] = False,
    kl_chunk: Annotated[int, typer.Option(help="tokens per chunk of the vocabulary-wide KL")] = 1024,
    save_every: Annotated[int, typer.Option(help="checkpoint every N optimizer steps (0: only at the end of a "
                                                 "stage)")] = 200,
    log_every: Annotated[int, typer.Option(help="steps between log lines; losses are read back from the "
                                                "device (a sync) and checked for NaN / Inf only then")] = 10,
    peak_tflops: Annotated[Optional[float], typer.Option(help="per-device peak for MFU (default: the card's "
                                                              "bf16 dense spec, e.g. H200 989.4)")] = None,
    compile_student: Annotated[bool, typer.Option("--compile", help="torch.compile each student decoder layer "
                                                                    "(opt-in: compile time, graph breaks at "
                                                                    "the JetBlock kernels)")] = False,
    projections_as_one: Annotated[Optional[bool], typer.Option(
        "--projections-as-one/--no-projections-as-one",
        help="run each set of same-input projections as one matrix product while training (default: on with "
             "--bf16, where it saves a cast per projection, except in attention transfer, whose JetBlocks read the "
             "teacher's bf16 states)")] = None,
    kl_kernel: Annotated[Optional[bool], typer.Option(
        "--kl-kernel/--no-kl-kernel", help="the KL's softmax work in one Triton kernel (default: on on CUDA)")] = None,
    fused_adam: Annotated[bool, typer.Option(help="AdamW's fused kernel (one launch for all parameters; not with "
                                                  "FSDP)")] = False,
    mse_kernel: Annotated[Optional[bool], typer.Option(
        "--mse-kernel/--no-mse-kernel", help="the attention-output loss (stage 1) in one Triton kernel each way "
                                             "(default: on on CUDA)")] = None,
    teacher_kernels: Annotated[bool, typer.Option(
        help="the teacher's RMSNorms and MLP activations in one kernel each (jet_nemotron.ops.rmsnorm / swiglu, the "
             "teacher's own rounding) instead of eager PyTorch's chains")] = True,
    teacher_fp8: Annotated[str, typer.Option(
        help="the stages (e.g. 1 or 1,2) whose training targets come from the teacher with its MLP projections in FP8 "
             "(e4m3, a scale a row); the held-out KL stays against the teacher itself (convert/teacher_fp8.py). "
             "Measured slower on an H100: a stage-1 step 639 against 568 ms, the per-token rounding in PyTorch costing "
             "more than the FP8 products save")] = "",
    ckpt_dir: Annotated[Optional[Path], typer.Option(help="checkpoint folder (default OUT.ckpt)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint of this same run (settings, "
                                              "data and models must match)")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace OUT and, on a fresh run, clear the checkpoint "
                                                 "folder")] = False,
    seed: Annotated[int, typer.Option(help="seed of the batch order")] = 0,
    layout: Annotated[str, typer.Option(help="folder layout: 'transformers' (ours) or 'official' (NVIDIA's "
                                             "release: loads in its HF code and in SGLang)")] = "transformers",
    recipe: Annotated[Optional[str], typer.Option(
        is_eager=True, callback=_recipe,
        help="a measured recipe's flag values as the defaults (convert/recipes.py; flags given here win): '15min', "
             "issue 14's 15-minute recipe for one card (attention transfer, then stage 2 with frozen MLPs; "
             "half of 14.5 minutes each; chat and retrieval rows; bf16)")] = None,
):
    """Distil a converted model from its teacher (stage 1, then stage 2 and the long-context stage 3 if their
    steps > 0) on a cached, tokenised corpus of --data."""
    from .distill import DistillConfig
    from .pipeline import distill_checkpoint

    if recipe is not None:
        # by the source's name: typer may bring its own copy of click, whose enum is not click's
        took = [n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "DEFAULT_MAP"]
        kept = sorted(set((ctx.default_map or {})) - set(took))
        typer.echo(f"recipe {recipe}: " + " ".join(_as_flag(n, ctx.params[n]) for n in took)
                   + (f"; given here instead: {', '.join('--' + n.replace('_', '-') for n in kept)}" if kept else ""))

    if frozen_bf16 and not bf16:
        raise ValueError("--frozen-bf16 holds frozen weights in the bf16 that --bf16 computes them in: it needs --bf16")
    if residual_bf16 and not bf16:
        raise ValueError("--residual-bf16 runs the residual stream in the bf16 of --bf16: it needs --bf16")
    common = dict(warmup_steps=warmup, kl_weight=kl_weight, min_lr_ratio=min_lr_ratio,
                  mixed_precision="bf16" if bf16 else "no", gradient_checkpointing=gradient_checkpointing,
                  kl_chunk=kl_chunk, save_every=save_every, seed=seed, log_every=log_every, peak_tflops=peak_tflops,
                  compile=compile_student, projections_as_one=projections_as_one, kl_kernel=kl_kernel,
                  fused_adam=fused_adam, teacher_kernels=teacher_kernels,
                  mse_kernel=mse_kernel, frozen_bf16=frozen_bf16, residual_bf16=residual_bf16)
    fp8 = _stages(teacher_fp8, "--teacher-fp8")
    batch = dict(batch_size=batch_size, micro_batch=micro_batch)
    # stage1_local None: DistillConfig decides (on when --train1 is jet and --mse-weight > 0)
    s1 = DistillConfig(stage=1, steps=stage1_steps, lr=lr1, mse_weight=mse_weight, train=train1, local=stage1_local,
                       teacher_fp8=1 in fp8, **batch, **common)
    mb2 = micro_batch if micro_batch2 is None else micro_batch2
    b2 = batch_size if batch_size2 is None else batch_size2
    s2 = DistillConfig(stage=2, steps=stage2_steps, lr=lr2, mse_weight=0.0, train=train2, jet_lr=jet_lr2,
                       batch_size=b2, micro_batch=mb2, kl_top1=kl_top1, kl_focus=kl_focus, teacher_fp8=2 in fp8,
                       **common)
    # stage 3's defaults keep stage 2's tokens per step; distill_checkpoint checks its settings
    b3 = stage3_batch_size if stage3_batch_size is not None else max(1, b2 * seq_len // max(1, stage3_seq_len))
    m3 = stage3_micro_batch if stage3_micro_batch is not None else max(1, min(mb2, b3))
    s3 = DistillConfig(stage=3, steps=stage3_steps, lr=lr2 if lr3 is None else lr3, mse_weight=0.0, train=train2,
                       jet_lr=jet_lr2, seq_len=stage3_seq_len, batch_size=b3, micro_batch=m3, kl_top1=kl_top1,
                       kl_focus=kl_focus, teacher_fp8=3 in fp8, **common)
    corpus = dict(weights=data_weight, held_out=held_out, cache_dir=corpus_cache, workers=tokenise_workers,
                  on_stale=on_stale)
    retrieval = {"ratio": retrieval_ratio, "kinds": [k.strip() for k in retrieval_kinds.split(",") if k.strip()],
                 "chat_ratio": chat_ratio, "chat_file": str(chat_file) if chat_file else None,
                 "chat_docstrings": chat_docstrings}
    distill_checkpoint(teacher, student, out, data, seq_len=seq_len, stage1=s1, stage2=s2, stage3=s3,
                       text_field=text_field, max_tokens=max_tokens, eval_fraction=eval_fraction,
                       ckpt_dir=ckpt_dir or out.with_name(out.name + ".ckpt"), resume=resume, overwrite=overwrite,
                       corpus=corpus, retrieval=retrieval, eval_rows=eval_rows, layout=layout,
                       row_workers=row_workers,
                       time_budget_s=None if time_budget_min is None else time_budget_min * 60,
                       time_split=_shares(time_split))


def _as_flag(name: str, value) -> str:
    """A parameter as the command line would give it: `--bf16`, `--no-bf16`, `--lr2 3e-05`."""
    flag = name.replace("_", "-")
    return (f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag} {value}"


def _stages(text: str, flag: str) -> set[int]:
    """A flag's comma-separated stage numbers ("" for none) as a set of 1, 2, 3."""
    try:
        stages = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        stages = {0}
    if not stages <= {1, 2, 3}:
        raise ValueError(f"{flag} {text!r}: comma-separated stages of 1, 2, 3, e.g. 1 or 1,2")
    return stages


def _shares(text: str | None) -> list[float] | None:
    """--time-split's comma-separated numbers (checked against the stages by the pipeline)."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--time-split {text!r}: comma-separated numbers, e.g. 0.7,0.3") from None


@app.command()
def export(
    folder: Annotated[Path, typer.Argument(help="a Jet-Nemotron folder: ours (convert / distill) or an official one")],
    out: Annotated[Path, typer.Argument(help="output folder (written atomically)")],
    layout: Annotated[str, typer.Option(help="'official' (config and tensors as NVIDIA's release: its HF code and "
                                             "SGLang load it) or 'transformers' (ours)")] = "official",
    dtype: Annotated[str, typer.Option(help="dtype of every tensor: bfloat16 (the release's), float32, float16")
                     ] = DEFAULT_DTYPE,
    overwrite: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
):
    """Re-write a model folder in another layout; tokenizer, card and reports are copied, modeling files added."""
    from .official_layout import export_folder

    export_folder(folder, out, layout, dtype, overwrite)


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="a converted or distilled folder")],
    repo_id: Annotated[str, typer.Argument(help="owner/name on the Hub")],
    private: Annotated[bool, typer.Option(help="create the repo private (the default)")] = True,
    revision: Annotated[Optional[str], typer.Option(help="branch to upload to (created if missing)")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the files that would be uploaded and stop")] = False,
):
    """Upload a folder to the Hugging Face Hub."""
    from .push import push as do_push

    files = do_push(folder, repo_id, private=private, revision=revision, dry_run=dry_run)
    total = sum(n for _, n in files)
    for name, n in files:
        typer.echo(f"{n / 1e6:12.3f} MB  {name}")
    verb = "would upload" if dry_run else "uploaded"
    typer.echo(f"{verb} {len(files)} files, {total / 1e6:.1f} MB to {repo_id}"
               f"{'@' + revision if revision else ''} ({'private' if private else 'public'})")


def _ints(spec: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"{flag} {spec!r}: give comma-separated integers") from err


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="a Jet-Nemotron or Qwen folder, or a .gguf file")],
    out: Annotated[Path, typer.Option(help="report folder: eval.json, eval.md, retrieval.png, speed.png")],
    suite: Annotated[str, typer.Option(help="comma-separated: ppl, niah, humaneval, speed, and lm-eval:TASKS last "
                                            "(its own comma-separated lm-eval task names)")] = "ppl,niah",
    baseline: Annotated[Optional[str], typer.Option(help="the model to compare with (e.g. the teacher); same "
                                                         "tokenizer")] = None,
    text: Annotated[Optional[list[str]], typer.Option(help="held-out text for perplexity (files, folders, jsonl); "
                                                           "repeat for several")] = None,
    haystack: Annotated[Optional[list[str]], typer.Option(help="real text the needles hide in (default: --text)")] = None,
    text_field: str = "text",
    ppl_window: Annotated[int, typer.Option(help="tokens per perplexity window")] = 4096,
    ppl_max_tokens: Annotated[Optional[int], typer.Option(help="score at most this many tokens")] = None,
    lengths: Annotated[str, typer.Option(help="retrieval prompt lengths (tokens)")] = "1024,2048,4096,8192",
    depths: Annotated[str, typer.Option(help="needle depths (fractions)")] = "0,0.25,0.5,0.75,1",
    trials: Annotated[int, typer.Option(help="prompts per retrieval cell")] = 4,
    retrieval_tasks: str = "passkey,niah,multi_needle,kv,variable_tracking",
    humaneval_limit: Annotated[Optional[int], typer.Option(help="only the first N problems")] = None,
    humaneval_max_new_tokens: int = 512,
    humaneval_batch: int = 256,
    humaneval_compile: Annotated[Optional[bool], typer.Option(help="compiled decode step (default: on CUDA)")] = None,
    speed_contexts: str = "4096,8192,16384,32768",
    speed_max_batch: int = 1024,
    speed_steps: Annotated[str, typer.Option(help="N1,N2: decode tok/s from the difference of N1 and N2 new "
                                                  "tokens")] = "8,40",
    speed_repeats: Annotated[int, typer.Option(help="timed (N1, N2) pairs after the warm-up pair")] = 3,
    lm_eval_limit: Annotated[Optional[int], typer.Option(help="lm-eval --limit (documents per task)")] = None,
    overwrite: bool = False,
    seed: int = 0,
):
    """Quality and speed of MODEL beside its baseline: perplexity, retrieval grid, HumanEval, speed, lm-eval."""
    from .eval.retrieval import parse_depths
    from .eval.suite import EvalOptions, run_eval

    depth_list = parse_depths(depths)
    steps = tuple(_ints(speed_steps, "--speed-steps"))
    if len(steps) != 2 or not 0 < steps[0] < steps[1]:
        raise ValueError(f"--speed-steps {speed_steps!r}: give N1,N2 with 0 < N1 < N2")
    opt = EvalOptions(text=text or [], haystack=haystack or [], text_field=text_field, ppl_window=ppl_window,
                      ppl_max_tokens=ppl_max_tokens, lengths=_ints(lengths, "--lengths"), depths=depth_list,
                      trials=trials, retrieval_tasks=[t for t in retrieval_tasks.split(",") if t],
                      humaneval_limit=humaneval_limit, humaneval_max_new_tokens=humaneval_max_new_tokens,
                      humaneval_batch=humaneval_batch, humaneval_compiled=humaneval_compile,
                      speed_contexts=_ints(speed_contexts, "--speed-contexts"),
                      speed_max_batch=speed_max_batch, speed_steps=steps, speed_repeats=speed_repeats,
                      lm_eval_limit=lm_eval_limit, seed=seed)
    run_eval(model, baseline, suite, out, opt, overwrite)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where the teacher, the conversion and the result go")] = Path(
        "jet_nemotron_demo"),
    teacher_steps: Annotated[int, typer.Option(help="pretraining steps of the tiny teacher")] = 150,
    stage1_steps: Annotated[int, typer.Option(help="distillation steps of stage 1")] = 40,
    stage2_steps: Annotated[int, typer.Option(help="distillation steps of stage 2")] = 40,
):
    """Build a tiny Qwen2 teacher offline, convert, distil, save, reload, generate (a few CPU minutes)."""
    from .demo import run_demo

    run_demo(workdir, teacher_steps, stage1_steps, stage2_steps)


@app.command()
def card(
    folder: Annotated[Path, typer.Argument(help="a converted folder")],
    base: Annotated[str, typer.Option(help="the source checkpoint (for its config)")],
):
    """Print the model card a folder would get (no distillation section; the evaluation table if FOLDER/eval.json)."""
    from transformers import AutoConfig

    import jet_nemotron  # noqa: F401

    from .model_card import evaluation_table, render_card

    cfg = AutoConfig.from_pretrained(folder)
    typer.echo(render_card(cfg, AutoConfig.from_pretrained(base), base, folder.name,
                           evaluation=evaluation_table(folder)))


search_app = typer.Typer(no_args_is_help=True, help="PostNAS search: where attention stays, which JetBlock shape.")
app.add_typer(search_app, name="search")


@search_app.command("placement")
def search_placement_cmd(
    source: Annotated[str, typer.Argument(help="the source Qwen (local folder, Hub id, or .gguf)")],
    out: Annotated[Path, typer.Option(help="output folder: layer_map.json, heatmap.png, search_log.jsonl, "
                                           "search.json")],
    data: Annotated[list[str], typer.Option(help="supernet training text (files / folders; repeat for several)")],
    attn: Annotated[int, typer.Option(help="K: full-attention layers to place")] = 2,
    swa: Annotated[int, typer.Option(help="M: sliding-window layers to place (after the attention layers)")] = 0,
    objective: Annotated[str, typer.Option(help="comma list of retrieval, lm, code, mc, each optionally :weight")] = "retrieval,lm",
    beam: Annotated[int, typer.Option(help="beam width")] = 4,
    method: Annotated[str, typer.Option(help="'beam' or 'kl-guided' (restore one layer at a time, keep the top K)")] = "beam",
    window: Annotated[Optional[int], typer.Option(help="sliding window of 'swa' layers (tokens)")] = None,
    eval_data: Annotated[Optional[list[str]], typer.Option(help="held-out text for lm and the retrieval haystack "
                                                                "(default: the last 5% of --data)")] = None,
    jet_heads: Annotated[Optional[int], typer.Option(help="JetBlock heads (default: the source's heads)")] = None,
    jet_head_dim: Annotated[Optional[int], typer.Option(help="JetBlock key head size dk")] = None,
    expand_v: Annotated[Optional[float], typer.Option(help="value head size dv = dk * expand_v")] = None,
    seq_len: Annotated[int, typer.Option(help="supernet training row length (tokens)")] = 1024,
    steps: Annotated[int, typer.Option(help="supernet steps (one sampled sub-network each)")] = 300,
    batch_size: Annotated[int, typer.Option(help="rows per supernet step, all processes together")] = 8,
    micro_batch: int = 8,
    lr: float = 1e-3,
    sampling: Annotated[str, typer.Option(help="'exact' (K and M layers a step) or 'bernoulli'")] = "exact",
    mse_weight: float = 1.0,
    kl_weight: float = 1.0,
    bf16: Annotated[bool, typer.Option(help="bf16 frozen weights and autocast (GPU)")] = False,
    retrieval_n: int = 16,
    retrieval_length: Annotated[int, typer.Option(help="tokens per retrieval prompt")] = 2048,
    retrieval_kind: Annotated[str, typer.Option(help="'passkey' or 'kv'")] = "passkey",
    lm_rows: int = 8,
    lm_length: int = 1024,
    code_n: Annotated[int, typer.Option(help="HumanEval problems scored")] = 20,
    mc_file: Annotated[Optional[Path], typer.Option(help="multiple-choice JSON (default: the shipped example)")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="stop tokenising --data after this many tokens")] = None,
    save_every: int = 50,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
):
    """Train a once-for-all supernet on SOURCE and search where K attention (+ M window) layers go."""
    from .search.objectives import MC_EXAMPLE
    from .search.run import EvalConfig, search_placement
    from .search.train import SupernetConfig

    train = SupernetConfig(steps=steps, batch_size=batch_size, micro_batch=micro_batch, lr=lr, sampling=sampling,
                           mse_weight=mse_weight, kl_weight=kl_weight, mixed_precision="bf16" if bf16 else "no",
                           save_every=save_every, seed=seed, attn=attn, swa=swa)
    ev = EvalConfig(retrieval_n=retrieval_n, retrieval_length=retrieval_length, retrieval_kind=retrieval_kind,
                    lm_rows=lm_rows, lm_length=lm_length, code_n=code_n, mc_file=str(mc_file or MC_EXAMPLE))
    jet = {"num_heads": jet_heads, "head_dim": jet_head_dim, "expand_v": expand_v}
    search_placement(source, out, attn, swa, objective, data, eval_data, beam, method, window, jet, seq_len, train,
                     ev, max_tokens=max_tokens, resume=resume, overwrite=overwrite)


@search_app.command("hardware")
def search_hardware_cmd(
    source: Annotated[str, typer.Argument(help="the source Qwen (folder or Hub id; only its config is read)")],
    state_bytes: Annotated[int, typer.Option(help="recurrent state per JetBlock layer and sequence, bytes "
                                                  "(fp32: 4 * heads * dk * dv; Jet-Nemotron-2B: 1179648)")],
    out: Annotated[Path, typer.Option(help="output folder: hardware.json, hardware.md, hardware.png")],
    layer_map: Annotated[Optional[str], typer.Option(help="a layer map (preset / JSON / spec) to write the chosen "
                                                          "shape into (default: jet-nemotron-2b for 28 layers)")] = None,
    batch: Annotated[int, typer.Option(help="prefill batch")] = 1,
    prefill_len: Annotated[int, typer.Option(help="prefill tokens per sequence")] = 8192,
    decode_batch: Annotated[int, typer.Option(help="sequences per decode step")] = 256,
    heads: Annotated[str, typer.Option(help="head counts to consider, comma list ('' = any)")] = "4,8,12,16",
    min_dim: int = 64,
    max_dk: int = 256,
    max_dv: int = 1024,
    dim_multiple: int = 16,
    tolerance: Annotated[float, typer.Option(help="shapes within this fraction of the fastest decode count as "
                                                  "equally fast")] = 0.05,
    cpu_reference: Annotated[bool, typer.Option(help="run the reference ops on the CPU (tests, tiny sizes only)")] = False,
    overwrite: bool = False,
):
    """Time every valid (heads, dk, dv) at a fixed recurrent-state size with our kernels (paper Table 2)."""
    from .search.hardware import search_hardware

    search_hardware(source, state_bytes, out, layer_map, batch, prefill_len, decode_batch, min_dim, max_dk, max_dv,
                    dim_multiple, tolerance, cpu_reference, overwrite,
                    heads=[int(h) for h in heads.split(",") if h.strip()] or None)


def one_line(err: BaseException) -> str:
    """An error as one line: its message (KeyError's without quotes), whitespace collapsed; a type name added
    for errors that are not the usual user-input kinds."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    msg = " ".join(str(msg).split()) or type(err).__name__
    if not isinstance(err, (ValueError, KeyError, OSError, RuntimeError)):
        msg = f"{type(err).__name__}: {msg}"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; any error becomes a one-line message and exit status 1 (--debug: traceback)."""
    import click

    _state["debug"] = False
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    except click.exceptions.ClickException as err:  # usage errors: click's own message
        err.show()
        return err.exit_code
    except Exception as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {one_line(err)}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
