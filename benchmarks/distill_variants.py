"""Several short distillations of one teacher in one process, each from the same converted start, on the same
data and the same wall-clock budget, measured with the same functions: a recipe ablation (issue 14) or a
placement comparison (issue 13: the searched map vs the `jet-nemotron-2b` preset vs a uniform map).

    python benchmarks/distill_variants.py --variants recipe --gguf G.gguf --minutes 3 --out $OUT      # GPU
    python benchmarks/distill_variants.py --variants placement --searched runs/search/layer_map.json ...
    python benchmarks/distill_variants.py --variants my_variants.json ...    # a list of variant objects
    python benchmarks/distill_variants.py --toy --variants recipe --out runs/variants-toy   # CPU plumbing check
    python benchmarks/distill_variants.py ... --teacher G.gguf --tokenise-only   # the corpus cache alone, beside
                                                                                 # save_teacher.py (GPU sessions)

A variant is {"name", "layer_map" (preset / spec / JSON file; default jet-nemotron-2b), "split" (budget share of
stages 1, 2, 3), "lr" ([lr1, lr2, lr3]), "mse_weight", "retrieval_ratio", "batch_size", "batch_size2" (stages
2-3's batch, null: batch_size; stage 3's keeps its tokens a step), "local1" (stage 1 as
attention transfer: `DistillConfig.local`), "train2" (stages 2-3's trainable set), "init" (JetBlock init scheme:
attention / random), "frozen_bf16" (frozen weights held in bf16 while a stage trains: `DistillConfig.frozen_bf16`),
"residual_bf16" (the student's residual stream and norm outputs in bf16 in the end-to-end stages of a bf16 run:
`DistillConfig.residual_bf16`), "warmup" (each stage's warm-up in optimizer steps, at most a tenth of its steps),
"local1_share" (that share of an end-to-end stage 1's budget first as attention transfer), "steps" ([n1, n2, n3]
optimizer steps: an explicit plan instead of --minutes), "chat_ratio" (that fraction of the rows chats built from
the corpus's functions: `convert/chat_data.py`), "compile" (`DistillConfig.compile`: the student's layers, or in
attention transfer its JetBlocks, under torch.compile), "projections_as_one" (`DistillConfig.projections_as_one`:
same-input projections as one product while training; null: on in bf16), "kl_kernel" (`DistillConfig.kl_kernel`:
the fused KL's softmax work in one Triton kernel; null: on on CUDA), "mse_kernel" (`DistillConfig.mse_kernel`: the
attention-output loss in one Triton kernel each way; null: on on CUDA), "teacher_kernels"
(`DistillConfig.teacher_kernels`: the teacher's RMSNorms and MLP activations on `ops.rmsnorm` / `ops.swiglu`), "retrieval_kinds" (the generated
retrieval rows' kinds: passkey, kv, table, `convert/retrieval_data.py`), "jet_lr2" (the JetBlocks' own peak lr in
stages 2-3, `DistillConfig.jet_lr`; null: the stage's lr), "fused_adam" (`DistillConfig.fused_adam`: AdamW's fused
kernel), "chat_docstrings" (chat rows ask only for functions whose head holds a docstring, as HumanEval asks),
"split2" (stage 2 in two parts, the second that share of its steps, each part on its own schedule and optimizer, as
local1_share splits stage 1), "kl_top1" (stages 2-3's KL target with that share of the teacher's mass moved
onto its first choice, `DistillConfig.kl_top1`), "kl_focus" (stages 2-3's KL weighed per token by 1 + kl_focus
(1 - the teacher's top probability), `DistillConfig.kl_focus`), "teacher_fp8" (the stages, e.g. [1], whose targets
come from the teacher with its MLP projections in FP8, `DistillConfig.teacher_fp8`), "own_answers" (N: between the
two parts the student answers N
function requests of the train files greedily, and the second part's chat rows are those chats, every answer kept:
on-policy distillation, the teacher's predictions along what the student itself writes; 0: the corpus chats),
"budget_s" (the distillation's wall clock in seconds, from the end of the conversion: each stage ends by its share of
it (split), its held-out measurement after it included, its steps counted on its own warm-up,
`DistillConfig.time_budget_s`, with "steps" the caps; a stage that reaches its cap early leaves its time to the
next), "chat_file" (the chat rows drawn from this jsonl(.gz) of chats,
e.g. the teacher's own answers of `benchmarks/teacher_answers.py`, instead of built from the corpus; a path relative
to the repository, absolute, or "@answers": the file given by --answers)}; the missing keys take the defaults below (BASE: the recipe that
won the 2026-12-02 H200 ablation, stage 1 as attention transfer). Every variant's map gets the preset's JetBlock
shape and window, so a placement comparison differs in placement only. Step counts: a variant's "steps", else
--minutes x the stage-1 rate given by --rate (tok/s; or measured on the first variant's first stage), the other
stages scaled by FLOPs per token.

Measured per variant (held-out = whole files never trained on): held-out KL to the teacher and perplexity (student
and teacher); along the teacher's own answers (`convert/answer_agreement.py`: the last --answers-eval chats of
--answers-eval-file, by default the committed `data/teacher_answers.jsonl.gz`; a variant that trains on that file's
chats trains on the others; a chat file this session's teacher writes, `@answers`, may ask the same functions), the
answer tokens' KL, the share where the student's argmax is the teacher's, and the share of answers it would write
exactly as the teacher; `convert.eval.retrieval` (passkey, needle, key-value; --lengths, --trials prompts a cell)
and, with --humaneval N, HumanEval pass@1 on the first N problems; tok/s and MFU per stage; seconds per phase.
A variant whose first stage has an earlier variant's start, plan and rows loads that stage's weights instead of
training them again (`--fresh-stages` trains it anyway); its row names the variant and counts that stage's seconds
in its budget. Results are written after every variant (a run cut short keeps the finished ones; a variant that
raises is recorded under "failed", with its error, and the next one runs; an evaluation suite that raises after the
distillation is recorded in its row's "eval_failed" and the row kept): OUT/variants.json, variants.md (the
table), variants_kl.png (training KL against tokens, one line per variant); each student's measurements also land
in OUT/partial.json as they are made, and each HumanEval's answers in OUT/humaneval_<name>.jsonl.gz. --teacher-last
measures the teacher's suites after the students (its held-out perplexity still first), so that a machine taken
back mid-run keeps the students' numbers.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import json
import os
import re
import sys
import sysconfig
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from stamp import stamp  # noqa: E402

from convert.answer_agreement import answer_agreement, answer_rows  # noqa: E402
from convert.chat_data import read_chats  # noqa: E402
from convert.corpus import build_corpus  # noqa: E402
from convert.distill import (DistillConfig, distill, eval_kl, kept_in_fp32, perplexity, set_trainable,  # noqa: E402
                             teacher_on)
from convert.distill_config import TRAIN_SETS  # noqa: E402
from convert.export import load_tokenizer, write_folder  # noqa: E402
from convert.layer_map import LayerMap, resolve_layer_map  # noqa: E402
from convert.pipeline import follow_ran_steps, stage_samplers  # noqa: E402
from convert.step_budget import budget_until, stage_ends  # noqa: E402
from convert.qwen_to_jet import convert_model  # noqa: E402
from convert.retrieval_data import DEFAULT_KINDS  # noqa: E402
from convert.teacher_answers import answer_chats, function_heads, write_chats  # noqa: E402
from convert.throughput import flops_per_token  # noqa: E402

ANSWERS = HERE / "data" / "teacher_answers.jsonl.gz"  # the teacher's answers of 2026-12-04 (d2dceba, H200)
# --toy's corpus: the stdlib's email package, its subpackage email/mime held out (185 K train and 8 K held-out tokens
# of the toy tokenizer). The stdlib root that the toy read before holds site-packages too: 31,650 files listed and 2 M
# tokens tokenised a run (1.6 to 3 s of every toy test against 0.2 s) for what checks the plumbing only
TOY_CORPUS = ([Path(sysconfig.get_paths()["stdlib"]) / "email"], ["mime"])

BASE = {"layer_map": "jet-nemotron-2b", "split": [0.55, 0.25, 0.2], "lr": [1e-3, 3e-5, 3e-5], "mse_weight": 1.0,
        "retrieval_ratio": 0.1, "batch_size": 16, "local1": True, "train2": "all", "init": "attention",
        "frozen_bf16": False, "local1_share": 0.0, "steps": None, "chat_ratio": 0.1, "chat_file": None, "compile": False,
        "projections_as_one": None, "kl_kernel": None, "retrieval_kinds": list(DEFAULT_KINDS), "jet_lr2": None,
        "fused_adam": False, "chat_docstrings": False, "split2": 0.0, "own_answers": 0, "mse_kernel": None,
        "teacher_kernels": True, "budget_s": None, "batch_size2": None, "kl_top1": 0.0, "kl_focus": 0.0,
        "teacher_fp8": [], "residual_bf16": False, "warmup": 30}
PRESETS = {
    # one change each from the base, so each row reads as an ablation of one knob. The base's stage 1 is attention
    # transfer since the H200 ablation of 2026-12-02 (benchmarks/results/real_model/recipe_variants/: held-out KL
    # 0.420 after 2 minutes against 4.543 for an end-to-end stage 1, whose recipe was the base until then); its rows
    # are 10% chats since the 4.5-minute ablation of the same day (recipe_chat_rows/: HumanEval 0.525 on the first
    # 40 problems against 0.175 without, the same held-out KL, 0.193)
    "recipe": [{"name": "base"},
               {"name": "end-to-end-stage1", "local1": False},
               {"name": "transfer-half-then-end-to-end", "local1": False, "local1_share": 0.5},
               {"name": "stage1-heavy", "split": [0.85, 0.0, 0.15]},
               {"name": "stage2-heavy", "split": [0.35, 0.45, 0.2]},
               {"name": "lr1-3e-3", "lr": [3e-3, 3e-5, 3e-5]},
               {"name": "lr1-3e-4", "lr": [3e-4, 3e-5, 3e-5]},
               {"name": "lr2-1e-4", "lr": [1e-3, 1e-4, 1e-4]},
               {"name": "no-retrieval-rows", "retrieval_ratio": 0.0},
               {"name": "table-rows", "retrieval_kinds": [*DEFAULT_KINDS, "table"]},
               {"name": "no-chat-rows", "chat_ratio": 0.0},
               {"name": "chat-rows-0.25", "chat_ratio": 0.25},
               {"name": "batch-8", "batch_size": 8},
               {"name": "stage2-non-mlp", "train2": "non-mlp"},
               {"name": "no-long-stage", "split": [0.55, 0.45, 0.0]},
               {"name": "random-init", "init": "random"},
               {"name": "frozen-bf16", "frozen_bf16": True},
               {"name": "compiled", "compile": True}],
    "placement": [{"name": "searched", "layer_map": "@searched"},
                  {"name": "preset jet-nemotron-2b", "layer_map": "jet-nemotron-2b"},
                  {"name": "uniform", "layer_map": "@uniform"}],
}
KEYS = set(BASE) | {"name"}


def only_names(only: str, names: set[str]) -> tuple[list[str], list[str]]:
    """--only's comma-separated list read against the variants' `names`, which may hold commas themselves ("base,
    3 min"): at each place the longest run of items that is a name wins. (names in order, unknown items)."""
    parts, want, missing, i = only.split(","), [], [], 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            if ",".join(parts[i:j]) in names:
                want.append(",".join(parts[i:j]))
                i = j
                break
        else:
            missing.append(parts[i])
            i += 1
    return want, missing


def uniform_types(num_layers: int, attn: int, swa: int) -> list[str]:
    """K attention and M window layers spread evenly (centres of K + M equal spans, alternating attn / swa from
    the top), JetBlocks elsewhere: the placement a search has to beat."""
    slots = [int((i + 0.5) * num_layers / (attn + swa)) for i in range(attn + swa)]
    kinds = (["attn", "swa"] * (attn + swa))[: attn + swa]
    if kinds.count("attn") != attn:  # more of one kind than alternation gives: fill the rest with it
        kinds = ["attn"] * attn + ["swa"] * swa
    types = ["jet"] * num_layers
    for slot, kind in zip(reversed(slots), kinds):
        types[slot] = kind
    return types


def variant_list(spec: str, searched: Path | None, answers: Path | None = None) -> list[dict]:
    """The variants of a preset name or a JSON file, each completed with BASE; unknown keys refused."""
    if spec in PRESETS:
        raw = PRESETS[spec]
    else:
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"--variants {spec!r} is neither {' nor '.join(PRESETS)} nor a JSON file")
        raw = json.loads(path.read_text())
        if not isinstance(raw, list) or not raw:
            raise SystemExit(f"{spec}: expected a non-empty JSON list of variant objects")
    out = []
    for i, v in enumerate(raw):
        bad = sorted(set(v) - KEYS)
        if bad:
            raise SystemExit(f"variant {i} ({v.get('name', '?')}): unknown keys {bad}; allowed {sorted(KEYS)}")
        v = {**BASE, "name": f"variant{i}", **v}
        if v["layer_map"] == "@searched" and searched is None:
            raise SystemExit(f"variant {v['name']!r} needs --searched (the layer_map.json a search wrote)")
        if len(v["split"]) != 3 or len(v["lr"]) != 3 or abs(sum(v["split"]) - 1) > 1e-6:
            raise SystemExit(f"variant {v['name']!r}: split needs 3 shares summing to 1 and lr 3 rates")
        if not 0 <= v["local1_share"] < 1 or (v["local1_share"] and v["local1"]):
            raise SystemExit(f"variant {v['name']!r}: local1_share is the share of an end-to-end stage 1 run first "
                             f"as attention transfer: in [0, 1), and not with local1 (all of stage 1 local)")
        if v["local1"] and not v["mse_weight"] > 0:
            raise SystemExit(f"variant {v['name']!r}: attention transfer (local1) trains on the attention MSE alone, "
                             f"so it needs mse_weight > 0 (or local1: false)")
        steps = v["steps"]
        if steps is not None and (not isinstance(steps, list) or len(steps) != 3 or v["local1_share"]
                                  or not all(isinstance(n, int) and n >= 0 for n in steps) or not sum(steps)):
            raise SystemExit(f"variant {v['name']!r}: steps is [stage 1, stage 2, stage 3] optimizer steps "
                             f"(integers >= 0, not all 0; not with local1_share), got {steps!r}")
        if not (isinstance(v["warmup"], int) and not isinstance(v["warmup"], bool) and v["warmup"] >= 1):
            raise SystemExit(f"variant {v['name']!r}: warmup is each stage's warm-up in optimizer steps, an integer "
                             f">= 1; got {v['warmup']!r}")
        for key in ("batch_size", "batch_size2"):
            if not (isinstance(v[key], int) and v[key] >= 1) and not (key == "batch_size2" and v[key] is None):
                raise SystemExit(f"variant {v['name']!r}: {key} is rows a step, an integer >= 1"
                                 f"{' (or null: batch_size)' if key == 'batch_size2' else ''}; got {v[key]!r}")
        if v["budget_s"] is not None and (steps is None or not v["budget_s"] > 0):
            raise SystemExit(f"variant {v['name']!r}: budget_s (seconds > 0) times the stages against their caps, "
                             f"the variant's steps, which it needs; got budget_s {v['budget_s']!r}, steps {steps!r}")
        try:  # DistillConfig's own rules, before the GPU session's parts arrive rather than after
            DistillConfig(stage=2, lr=v["lr"][1], jet_lr=v["jet_lr2"], kl_top1=v["kl_top1"],
                          kl_focus=v["kl_focus"]).resolved()
        except (TypeError, ValueError) as err:
            raise SystemExit(f"variant {v['name']!r}: jet_lr2 (the JetBlocks' peak lr in stages 2-3), kl_top1 (the "
                             f"share of stages 2-3's KL target on the teacher's first choice) or kl_focus (its "
                             f"uncertainty weight): {err}") from err
        if not (isinstance(v["teacher_fp8"], list) and set(v["teacher_fp8"]) <= {1, 2, 3}):
            raise SystemExit(f"variant {v['name']!r}: teacher_fp8 is a list of the stages (1, 2, 3) whose targets "
                             f"come from the FP8 teacher, e.g. [1]; got {v['teacher_fp8']!r}")
        if v["train2"] not in TRAIN_SETS or v["init"] not in ("attention", "random"):
            raise SystemExit(f"variant {v['name']!r}: train2 must be one of {' / '.join(TRAIN_SETS)} and init "
                             f"attention / random, got {v['train2']!r}, {v['init']!r}")
        if not 0 <= v["split2"] < 1 or not isinstance(v["own_answers"], int) or v["own_answers"] < 0:
            raise SystemExit(f"variant {v['name']!r}: split2 is the share of stage 2's steps in its second part, in "
                             f"[0, 1), and own_answers a number of requests >= 0")
        if v["own_answers"] and not (v["split2"] > 0 and v["chat_ratio"] > 0 and v["chat_file"] is None):
            raise SystemExit(f"variant {v['name']!r}: own_answers makes the chat rows of stage 2's second part, so it "
                             f"needs split2 > 0, chat_ratio > 0 and no chat_file")
        this_session = v["chat_file"] == "@answers"  # the chat file this session's teacher writes first
        if this_session:
            if answers is None:
                raise SystemExit(f"variant {v['name']!r} needs --answers (the chat file teacher_answers.py wrote)")
            v["chat_file"] = str(answers)
        if v["chat_file"] is not None:
            f = chat_file_of(v)
            # a committed file must exist now; this session's answers may be missing if their step failed: then
            # only this variant fails (recorded, the others run)
            if not v["chat_ratio"] > 0 or not (this_session or Path(f).is_file()):
                raise SystemExit(f"variant {v['name']!r}: chat_file {f} needs chat_ratio > 0 and must exist")
        out.append(v)
    names = [v["name"] for v in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names repeat: {names}")
    return out


def chat_file_of(v: dict) -> str | None:
    """The variant's chat file as a path (a relative one is relative to the repository)."""
    if v["chat_file"] is None:
        return None
    p = Path(v["chat_file"])
    return str(p if p.is_absolute() else HERE.parent / p)


def layer_map_of(v: dict, num_layers: int, searched: Path | None) -> LayerMap:
    """The variant's placement with the preset's JetBlock shape and window (only placement differs). A toy teacher
    (not 28 layers) stands the preset in by one attention layer in the middle, sizes from the source."""
    preset = resolve_layer_map("jet-nemotron-2b", 28)
    toy = num_layers != 28
    if v["layer_map"] == "@searched":
        types = resolve_layer_map(str(searched), num_layers).layer_types
    elif v["layer_map"] == "@uniform":
        types = uniform_types(num_layers, 1, 1) if toy else uniform_types(28, len(preset.indices("attn")),
                                                                            len(preset.indices("swa")))
    elif v["layer_map"] == "jet-nemotron-2b" and toy:
        types = ["jet"] * num_layers
        types[num_layers // 2] = "attn"
    else:
        types = resolve_layer_map(v["layer_map"], num_layers).layer_types
    jet = {} if toy else dict(preset.jet)
    swa = {} if "swa" not in types else {"window_size": 64} if toy else dict(preset.swa)
    return LayerMap(types, jet, swa, source=f"variant {v['name']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="recipe", help=f"{' | '.join(PRESETS)} | a JSON file of variants")
    ap.add_argument("--only", help="comma-separated variant names to run, in this order")
    ap.add_argument("--searched", type=Path, help="the searched layer_map.json (placement variants)")
    ap.add_argument("--answers", type=Path, help="the chat file of a variant's chat_file '@answers' (the teacher's "
                                                 "answers, benchmarks/teacher_answers.py)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teacher", "--gguf", type=Path, dest="gguf",
                    help="the teacher: a .gguf file or a saved model folder (the real run)")
    ap.add_argument("--site-packages", type=Path, action="append", help="corpus source(s)")
    ap.add_argument("--held-out", action="append", help="package(s) held out (default pandas)")
    ap.add_argument("--max-tokens", type=int, default=100_000_000)
    ap.add_argument("--minutes", type=float, default=3.0, help="distillation minutes per variant (all stages)")
    ap.add_argument("--rate", type=float, help="stage-1 tok/s measured before on this card (else the first "
                                               "variant's stage 1 measures it and later variants use it)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--stage3-seq-len", type=int, default=8192)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--micro-batch2", type=int,
                    help="stage 2's (and 3's) micro-batch, whose whole student trains (default --micro-batch): its "
                         "weights, gradients and AdamW state take 28 GB more than stage 1's, so an 80 GB card "
                         "takes fewer rows a forward (a stage-2 step at 8 peaked at 125 GB on an H200)")
    ap.add_argument("--checkpoint2", action="store_true",
                    help="stages 2 and 3 recompute the student's activations in the backward (gradient "
                         "checkpointing), so an 80 GB card takes --micro-batch2 8 (2 rows fit without it)")
    ap.add_argument("--row-workers", type=int, help="processes drawing the chat and retrieval rows (default: "
                                                    "convert.row_workers.default_workers(); 0: the batch thread)")
    ap.add_argument("--trace-steps", type=int, default=0,
                    help="trace this many steps of every stage (after its first --trace-after) under torch.profiler "
                         "into OUT/trace/<variant>/ (DistillConfig.trace_steps): a run's own step beside a profile's")
    ap.add_argument("--trace-after", type=int, default=DistillConfig.trace_after,
                    help="steps of a stage before its traced ones (past the warm-up a time budget is timed on)")
    ap.add_argument("--lengths", default="2048,8192", help="retrieval prompt lengths")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--depths", default="0,0.5,1",
                    help="needle depths (fractions); '0,0.25,0.5,0.75,1' is the grid of jet-nemotron eval's default")
    ap.add_argument("--humaneval", type=int, default=0, help="HumanEval on the first N problems (0: not run)")
    ap.add_argument("--eval-rows", type=int, default=64)
    ap.add_argument("--answers-eval", type=int, default=128, metavar="N",
                    help="measure each student along the last N chats of --answers-eval-file (0: not measured)")
    ap.add_argument("--answers-eval-file", type=Path, default=ANSWERS,
                    help="the teacher's own answers (benchmarks/teacher_answers.py); default the committed file")
    ap.add_argument("--stdlib-ppl", type=int, metavar="MAX_TOKENS", nargs="?", const=0, default=None,
                    help="also `jet-nemotron eval`'s perplexity: the stdlib's held-out split in windows of 4,096 "
                         "(optionally at most MAX_TOKENS of it), teacher and students in this process")
    ap.add_argument("--corpus-cache", type=Path, help="tokenised-corpus cache (default: the library's, "
                                                      "~/.cache/jet-nemotron/corpus)")
    ap.add_argument("--save-students", type=Path, metavar="DIR",
                    help="write each variant's student (bf16, as measured) to DIR/<name>, for jet-nemotron eval")
    ap.add_argument("--teacher-last", action="store_true",
                    help="measure the teacher's retrieval, HumanEval and stdlib ppl after the students, not before: "
                         "the students' numbers come first, so a machine taken back mid-run keeps them (the "
                         "teacher's held-out ppl is still measured first)")
    ap.add_argument("--fresh-stages", action="store_true",
                    help="train every variant's first stage, even where an earlier variant's has the same start, plan "
                         "and rows (by default its weights are reused: the same result without the card time)")
    ap.add_argument("--toy", action="store_true", help="tiny teacher on the CPU: checks the plumbing only")
    ap.add_argument("--own-answers-tokens", type=int, default=384,
                    help="new tokens at most of each of the student's own answers (variants with own_answers)")
    ap.add_argument("--tokenise-only", action="store_true",
                    help="tokenise the corpus into the cache with --teacher's tokenizer (a model folder or a .gguf) "
                         "and stop: run beside save_teacher.py, so that the run after it finds its corpus cached (the "
                         "cache is keyed by the tokenizer's hash, so a tokenizer that hashes otherwise once saved "
                         "costs a rebuild, never a wrong corpus)")
    args = ap.parse_args(argv)
    from convert.eval.retrieval import parse_depths

    try:
        args.depth_list = tuple(parse_depths(args.depths))
    except ValueError as err:
        raise SystemExit(str(err)) from None

    variants = variant_list(args.variants, args.searched, args.answers)
    _FLOPS.clear()  # per teacher (a test may run several toy teachers in one process)
    _STAGE1.clear()
    if args.only:
        by_name = {v["name"]: v for v in variants}
        want, missing = only_names(args.only, set(by_name))
        if missing:
            raise SystemExit(f"--only names unknown variants {missing}; have {list(by_name)}")
        variants = [by_name[n] for n in dict.fromkeys(want)]  # the order given: a run cut short keeps the first
    if not args.toy and args.gguf is None:
        raise SystemExit("--teacher is required (or --toy for the CPU check)")
    if args.tokenise_only and not args.toy and not args.gguf.exists():
        raise SystemExit(f"--teacher {args.gguf}: no such model folder or GGUF to read the tokenizer from")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = dev.type == "cuda"
    from convert.row_workers import resolve_workers

    from jet_nemotron import dynamic_conv_triton, gated_delta_rule_triton_launch

    # the process-wide kernel switches (env JET_NEMOTRON_KEEP_STATES / JET_NEMOTRON_CONV_FUSED_BWD) this run had
    switches = {"keep_states": gated_delta_rule_triton_launch.KEEP_STATES,
                "conv_fused_bwd": dynamic_conv_triton.FUSED_BWD}
    res: dict = {"stamp": [stamp()], "args": {k: str(v) for k, v in vars(args).items()}, "variants": [],
                 "seconds": {}, "row_workers": resolve_workers(args.row_workers), "kernel_switches": switches}
    t0 = time.perf_counter()
    if args.toy:
        from distill_real import toy_models

        teacher, _, tok = toy_models(out)
        args.seq_len, args.stage3_seq_len, args.micro_batch, args.max_tokens = 128, 256, 2, 2_000_000
        args.lengths, sources, held_out = "128,256", *TOY_CORPUS
    else:
        import site

        if args.tokenise_only:  # the tokenizer alone: the model may still be being saved
            teacher, tok = None, load_tokenizer(args.gguf)
        else:
            from convert.export import load_source

            teacher, tok = load_source(str(args.gguf), None, torch.float32)
        sources = args.site_packages or [Path(site.getsitepackages()[0])]
        held_out = args.held_out or ["pandas"]
    res["seconds"]["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = build_corpus(sources, tok, None, args.max_tokens, held_out=held_out, workers=os.cpu_count(),
                        eval_fraction=0.05, cache_dir=args.corpus_cache)
    if args.tokenise_only:
        print(f"corpus cached in {time.perf_counter() - t0:.1f} s (tokenizer {res['seconds']['load']:.1f} s): "
              f"{data.describe()}")
        return
    held = data.eval_rows(args.seq_len, args.eval_rows)
    filler = [int(t) for t in data.sources[0].eval if t != tok.eos_token_id]
    # cached: every source came from the cache (e.g. a --tokenise-only run beside save_teacher.py)
    res["corpus"] = {"train_tokens": data.train_tokens, "held_out_tokens": data.eval_tokens,
                     "cached": all(src.cache_hit for src in data.sources)}
    answers = held_out_answers(variants, args, tok, out) if args.answers_eval else None
    # the requests of the variants that train on the student's own answers: functions of the train files only
    most = max(v["own_answers"] for v in variants)
    heads = function_heads(sources, held_out, most, seed=0) if most else None
    if most and len(heads) < most:
        raise SystemExit(f"own_answers asks {most} function requests; the train files hold {len(heads)}")
    if answers:
        res["answers_eval"] = {"file": str(args.answers_eval_file), "chats": len(answers),
                               "answer_tokens": sum(len(ids) - start for ids, start in answers)}
    res["seconds"]["tokenise"] = time.perf_counter() - t0
    t_dev = teacher_on(teacher, dev, torch.bfloat16 if bf16 else None)
    with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
        res["ppl_teacher"] = perplexity(t_dev, held, 8, dev)
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"teacher: held-out ppl {res['ppl_teacher']:.3f}")
    if not args.teacher_last:
        _teacher_suites(res, t_dev, tok, filler, lengths, args, dev, bf16)
    rate = args.rate
    for v in variants:
        t_v = time.perf_counter()
        try:
            row, rate = run_variant(v, teacher, t_dev, tok, data, held, filler, lengths, args, dev, bf16, rate,
                                    answers, heads)
        except Exception as err:  # noqa: BLE001 - one variant's failure (a compile error, OOM) must not cost the
            # rest of a GPU session: recorded in the results and the table, printed, and the next variant runs
            traceback.print_exc()
            res.setdefault("failed", []).append({"name": v["name"], "variant": v, "error": f"{type(err).__name__}: "
                                                 f"{err}", "seconds": time.perf_counter() - t_v})
            write(res, out)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        row["seconds"]["total"] = time.perf_counter() - t_v
        res["stage1_rate"] = {"tok_per_s": rate, "measured": args.rate is None}  # what the step plans came from
        res["variants"].append(row)
        write(res, out)
        print(f"{v['name']}: held-out KL {row['held_out_kl']:.4f}, ppl {row['ppl']:.3f} "
              f"({row['ppl'] / res['ppl_teacher']:.2f}x), retrieval {row['retrieval']} "
              f"in {row['seconds']['total']:.0f} s")
    if args.teacher_last:
        _teacher_suites(res, t_dev, tok, filler, lengths, args, dev, bf16)
        write(res, out)
    print((out / "variants.md").read_text())


def _teacher_suites(res: dict, t_dev, tok, filler, lengths, args, dev, bf16: bool) -> None:
    """The teacher's retrieval cells, HumanEval and stdlib perplexity into `res`; t_dev: the teacher on the device,
    as its held-out ppl was measured (first, always: every row's ratio needs it)."""
    from convert.eval.models import wrap
    from convert.eval.retrieval import retrieval

    t = time.perf_counter()
    with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
        res["teacher_retrieval"] = _retrieval_summary(retrieval(wrap(t_dev, tok, "teacher"), filler, lengths,
                                                                args.depth_list, args.trials,
                                                                ("passkey", "niah", "kv")))
        if args.humaneval:
            res["teacher_humaneval"], res["teacher_humaneval_run"] = _humaneval(wrap(t_dev, tok, "teacher"),
                                                                                args.humaneval, args.out)
        if args.stdlib_ppl is not None:
            res["teacher_stdlib_ppl"] = _stdlib_ppl(wrap(t_dev, tok, "teacher"), args.stdlib_ppl)
    res["seconds"]["teacher_suites"] = time.perf_counter() - t
    print(f"teacher: retrieval {res['teacher_retrieval']}")


def held_out_answers(variants: list[dict], args, tok, out: Path) -> list[tuple[list[int], int]]:
    """The rows of the last --answers-eval chats of --answers-eval-file (`answer_rows`). A variant whose chat file is
    that file is pointed at OUT/train_chats.jsonl.gz, the file without them, so no student trains on what it is
    measured on."""
    path = args.answers_eval_file
    chats = read_chats(path)
    n = min(args.answers_eval, 8) if args.toy else args.answers_eval  # the toy checks the plumbing, on the CPU
    if not 0 < n < len(chats):
        raise SystemExit(f"--answers-eval {n}: {path} holds {len(chats)} chats; measure on fewer than all of them")
    kept = None
    for v in variants:
        if v["chat_file"] is not None and Path(chat_file_of(v)).resolve() == Path(path).resolve():
            kept = kept or write_chats(out / "train_chats.jsonl.gz", chats[:-n])
            v["chat_file"] = str(kept)
    return answer_rows(tok, chats[-n:], max_len=4096)


def run_variant(v: dict, teacher, t_dev, tok, data, held, filler, lengths, args, dev, bf16: bool,
                rate: float | None, answers: list[tuple[list[int], int]] | None = None,
                heads: list[tuple[str, str]] | None = None):
    """Convert, distil for the variant's budget, measure; (row for the table, the stage-1 rate to reuse). t_dev: the
    teacher on the device as it is measured (bf16 on CUDA), shared by every variant's measurements and distillations
    (the CPU `teacher` is only converted from and counted); answers: the
    rows of `held_out_answers`, or None."""
    from convert.eval.models import wrap
    from convert.eval.retrieval import retrieval

    seconds: dict = {}
    t = time.perf_counter()
    lm = layer_map_of(v, teacher.config.num_hidden_layers, args.searched)
    student = convert_model(teacher, lm, scheme=v["init"]).float()
    seconds["convert"] = time.perf_counter() - t
    b = v["batch_size"]
    # a variant's batch below the rows a forward takes them all at once (batch 4 with the default 8 rows a forward)
    common = dict(warmup_steps=v["warmup"], mixed_precision="bf16" if bf16 else "no", log_every=10, save_every=0,
                  micro_batch=min(args.micro_batch, b), frozen_bf16=v["frozen_bf16"], compile=v["compile"],
                  projections_as_one=v["projections_as_one"], kl_kernel=v["kl_kernel"], fused_adam=v["fused_adam"],
                  mse_kernel=v["mse_kernel"], teacher_kernels=v["teacher_kernels"],
                  residual_bf16=v["residual_bf16"], trace_steps=args.trace_steps, trace_after=args.trace_after,
                  trace_dir=str(args.out / "trace" / _file_name(v["name"])) if args.trace_steps else None)
    b2 = v["batch_size2"] or b
    mb2 = min(args.micro_batch2 or args.micro_batch, b2)
    common2 = common | {"micro_batch": mb2, "gradient_checkpointing": args.checkpoint2}  # stages 2 and 3
    cfgs = [DistillConfig(stage=1, steps=1, lr=v["lr"][0], mse_weight=v["mse_weight"], train="jet", batch_size=b,
                          local=v["local1"], teacher_fp8=1 in v["teacher_fp8"], **common),
            DistillConfig(stage=2, steps=1, lr=v["lr"][1], mse_weight=0.0, train=v["train2"], batch_size=b2,
                          jet_lr=v["jet_lr2"], kl_top1=v["kl_top1"], kl_focus=v["kl_focus"],
                          teacher_fp8=2 in v["teacher_fp8"], **common2),
            DistillConfig(stage=3, steps=1, lr=v["lr"][2], mse_weight=0.0, train=v["train2"], jet_lr=v["jet_lr2"],
                          kl_top1=v["kl_top1"], kl_focus=v["kl_focus"], teacher_fp8=3 in v["teacher_fp8"],
                          seq_len=args.stage3_seq_len,
                          batch_size=max(2, b2 * args.seq_len // args.stage3_seq_len),
                          **(common2 | {"micro_batch": max(1, mb2 * args.seq_len // args.stage3_seq_len)}))]
    retrieval_kw = ({"ratio": v["retrieval_ratio"], "kinds": v["retrieval_kinds"], "chat_ratio": v["chat_ratio"],
                     "chat_file": chat_file_of(v), "chat_docstrings": v["chat_docstrings"]}
                    if v["retrieval_ratio"] or v["chat_ratio"] else None)
    if rate is None and v["steps"] is None:  # no --rate: the first variant times an end-to-end stage 1 on a
        # copy (the rate's reference, f1 below, whatever its own stage 1 is), the later ones reuse it
        rate = _probe_rate(student, t_dev, data, tok, replace(cfgs[0], local=False), args, retrieval_kw)
    # equal MFU across stages: a stage's rate is end-to-end stage 1's (measured) scaled by its FLOPs per token,
    # counted on the first variant's student for all of them, so equal settings give equal step counts (the
    # same token budget) whatever the placement
    f1 = _flops(student, teacher, "jet", args.seq_len, False)
    shares = list(v["split"])
    if v["local1_share"]:  # stage 1 begins as attention transfer for that share of its budget, then goes end to end
        cfgs.insert(0, replace(cfgs[0], local=True))
        shares[:1] = [shares[0] * v["local1_share"], shares[0] * (1 - v["local1_share"])]
    plan = []
    for i, (cfg, share) in enumerate(zip(cfgs, shares)):
        if v["steps"] is not None:  # an explicit plan (e.g. from each stage's own measured tok/s) instead
            n = v["steps"][i]
        else:
            r = cfg.resolved()
            f = _flops(student, teacher, r.train, cfg.seq_len or args.seq_len, r.local)
            n = int(share * args.minutes * 60 * rate * f1 / f / (cfg.batch_size * (cfg.seq_len or args.seq_len)))
        if n > 0:
            plan.append(replace(cfg, steps=n, warmup_steps=min(cfg.warmup_steps, max(1, n // 10))))
    if not plan:
        raise ValueError(f"{args.minutes} minutes buy no optimizer step of any stage at {rate:,.0f} tok/s (stage 1): "
                         "give more --minutes or explicit steps")
    plan, own = _split_stage2(plan, v)
    student.requires_grad_(True)
    summaries, kl = [], None
    first = _first_stage_key(v, plan[0], args, retrieval_kw)
    samplers, own_stats = stage_samplers(data, plan, args.seq_len, tok, retrieval_kw,
                                         row_workers=args.row_workers), None
    ends = _stage_ends(plan, v)
    for i, cfg in enumerate(plan):
        sampler = samplers[i]
        if ends is not None:  # this stage's seconds: up to its end, counted from the distillation's start
            cfg = plan[i] = replace(cfg, time_budget_s=budget_until(t + seconds["convert"] + ends[i]))
        if own[i]:  # the student answers now, and this part's chat rows are its answers (the corpus walk goes on)
            path = args.out / f"own_answers_{_file_name(v['name'])}.jsonl.gz"
            t_own = time.perf_counter()
            own_stats = _own_answers(student, tok, heads[:v["own_answers"]], path, dev, bf16, args.own_answers_tokens)
            seconds["own_answers"] = time.perf_counter() - t_own  # inside "distil": the recipe's own time
            drawn = sum(c.steps * c.batch_size * (c.seq_len or args.seq_len) for c in plan[:i])
            (sampler,) = stage_samplers(data, [cfg], args.seq_len, tok, retrieval_kw | {"chat_file": str(path)},
                                        row_workers=args.row_workers,
                                        start_tokens=drawn)
        if i == 0 and not args.fresh_stages and first in _STAGE1:
            kept = _STAGE1.pop(first)
            _STAGE1[first] = kept  # the most recently used is evicted last
            student.load_state_dict(kept["state"])
            s = copy.deepcopy(kept["summary"]) | {"reused_from": kept["name"]}
            print(f"{v['name']}: stage {cfg.stage} ({cfg.steps} steps) is {kept['name']!r}'s, the same plan, rows "
                  f"and start: its weights reused, {s['wall_s']:.0f} s of the card saved")
        else:
            # the measuring teacher, already on the card in the run's dtype, so distill trains on it instead of a
            # second copy of its own (a 1.5B teacher's 3.6 GB that stage 2 at 8 rows a forward wants on an 80 GB card)
            s = distill(student, t_dev, sampler, cfg, eval_rows=held, eval_kl_before=kl)
            if i == 0 and len(plan) > 1 and not args.fresh_stages:
                while len(_STAGE1) >= STAGE1_KEPT:  # a 1.5B student's weights are 6 GB of host memory
                    _STAGE1.pop(next(iter(_STAGE1)))
                state = {k: x.detach().to("cpu", copy=True) for k, x in student.state_dict().items()}
                _STAGE1[first] = dict(name=v["name"], summary=copy.deepcopy(s), state=state)
        kl = s["eval_kl_after"]
        follow_ran_steps(samplers, plan, i, s["steps"])
        plan[i] = replace(cfg, steps=s["steps"])  # a budget's count, not its cap
        summaries.append(s)
    seconds["distil"] = time.perf_counter() - t - seconds["convert"]
    # a reused first stage's own seconds are counted, so every row's budget reads as if it ran (the card time it
    # saved is "reused_s")
    seconds["reused_s"] = sum(s["wall_s"] for s in summaries if "reused_from" in s)
    seconds["distil"] += seconds["reused_s"]
    t = time.perf_counter()
    with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
        # measured in bf16 as a saved bf16 student would be: under autocast an fp32 student's KV cache is fp32
        # while its projections emit bf16, which the cache's in-place update refuses
        student = _as_loaded_bf16(student).eval() if bf16 else student.eval()
        steps: dict = {}
        for c in plan:  # a stage split into an attention-transfer and an end-to-end part counts both
            steps[c.stage] = steps.get(c.stage, 0) + c.steps
        row = {"name": v["name"], "variant": v, "layer_types": lm.layer_types,
               "steps": [steps.get(k, 0) for k in (1, 2, 3)],
               "plan": [{"stage": c.stage, "local": c.local, "steps": c.steps, "lr": c.lr, "own_answers": o}
                        for c, o in zip(plan, own)],
               "tokens": sum(s["tokens"] for s in summaries),
               # after each stage (the stage's own measurement, same rows): whether a stage moved the held-out KL
               "held_out_kl_by_stage": [s.get("eval_kl_after") for s in summaries],
               # attention transfer's loss per JetBlock on the same rows after stage 1 (None: no transfer)
               "held_out_mse_by_layer": summaries[0].get("eval_mse_by_layer"),
               "tok_per_s": [s.get("tok_per_s") for s in summaries], "mfu": [s.get("mfu") for s in summaries],
               "history": [h | {"local": c.local} for c, s in zip(plan, summaries) for h in s["history"]],
               "stage1_reused_from": summaries[0].get("reused_from"), "own_answers": own_stats, "seconds": seconds}
        # each measurement lands in OUT/partial.json as it is made (the cheap ones first, HumanEval before the
        # retrieval cells), so a machine taken back during the evaluation keeps what was measured
        row["held_out_kl"] = eval_kl(student, t_dev, held.to(dev), 8)
        row["ppl"] = perplexity(student, held, 8, dev)
        if answers:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            row["answers"] = answer_agreement(student, t_dev, answers, 16, pad, dev)
        _partial(row, args.out)
        if args.humaneval:
            _suite(row, "humaneval", args.out, lambda: dict(zip(("humaneval", "humaneval_run"), _humaneval(
                wrap(student, tok, v["name"]), args.humaneval, args.out))))
        row["retrieval"] = {}  # the table's cells read nan where the suite failed
        _suite(row, "retrieval", args.out, lambda: {"retrieval": _retrieval_summary(retrieval(
            wrap(student, tok, v["name"]), filler, lengths, args.depth_list, args.trials, ("passkey", "niah", "kv")))})
        if args.stdlib_ppl is not None:
            _suite(row, "stdlib_ppl", args.out,
                   lambda: {"stdlib_ppl": _stdlib_ppl(wrap(student, tok, v["name"]), args.stdlib_ppl)})
    seconds["evaluate"] = time.perf_counter() - t
    if args.save_students is not None:  # for `jet-nemotron eval` (benchmarks/eval_real.py) after this process
        t = time.perf_counter()
        folder = args.save_students / _file_name(v["name"])
        row["saved"] = str(write_folder(folder, student, tok, getattr(teacher, "generation_config", None),
                                        overwrite=True))
        seconds["save"] = time.perf_counter() - t
    row["seconds"] = seconds
    del student
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row, rate


# the first stages trained so far, by key (_first_stage_key): name, summary, state (CPU copies); the least recently
# used goes first. Three, so that a file may put variants with stage 1s of their own between the base and those that
# share its stage 1 (knobs_v3: two of them, then four variants on the base's)
_STAGE1: dict = {}
STAGE1_KEPT = 3


def _first_stage_key(v: dict, cfg: DistillConfig, args, retrieval_kw: dict | None) -> str:
    """What decides the student after a variant's first stage: its start (placement, init) and that stage's plan
    and rows. Two variants with equal keys reach the same weights (bit-exact on the CPU, test), so the later one
    loads them instead of training them again."""
    # frozen_bf16 holds frozen weights in the bf16 that autocast casts them to anyway: the same arithmetic (bit-exact
    # on the CPU and on the H200, 2026-12-04), so it does not part two first stages
    stage = {k: x for k, x in asdict(cfg).items() if k != "frozen_bf16"}
    # a budgeted stage's count is its machine's: never the same weights as a planned one's
    return json.dumps({"layer_map": v["layer_map"], "init": v["init"], "searched": str(args.searched),
                       "seq_len": args.seq_len, "stage": stage, "rows": retrieval_kw, "budget_s": v["budget_s"],
                       "split": v["split"] if v["budget_s"] else None}, sort_keys=True, default=str)


def _stage_ends(plan: list[DistillConfig], v: dict) -> list[float] | None:
    """Seconds from the distillation's start by which each stage of `plan` must end (its measurement after its
    steps included, `budget_until`): the end of its share of the variant's budget_s (split); None without a budget.
    The parts of a stage split in two (split2) share its span by their caps."""
    if v["budget_s"] is None:
        return None
    ends = stage_ends(v["budget_s"], v["split"], 3)
    spans = {stage: (ends[stage - 2] if stage > 1 else 0.0, ends[stage - 1]) for stage in (1, 2, 3)}
    out, done = [], {}
    for c in plan:
        lo, hi = spans[c.stage]
        done[c.stage] = done.get(c.stage, 0) + c.steps
        frac = done[c.stage] / sum(p.steps for p in plan if p.stage == c.stage)
        out.append(lo + frac * (hi - lo))
    return out


def _split_stage2(plan: list[DistillConfig], v: dict) -> tuple[list[DistillConfig], list[bool]]:
    """(plan, own): with `split2`, stage 2 as two parts of (1 - split2) and split2 of its steps, each with its own
    warm-up and cosine; own[i]: plan[i] trains on the student's own answers (the second part, with `own_answers`)."""
    at = next((i for i, c in enumerate(plan) if c.stage == 2), None)
    if not v["split2"] or at is None:
        return plan, [False] * len(plan)
    c = plan[at]
    second = round(c.steps * v["split2"])
    parts = [replace(c, steps=n, warmup_steps=min(c.warmup_steps, max(1, n // 10)))
             for n in (c.steps - second, second) if n > 0]
    if len(parts) < 2:
        raise ValueError(f"variant {v['name']!r}: split2 {v['split2']} of {c.steps} stage-2 steps leaves a part "
                         f"without steps")
    plan = plan[:at] + parts + plan[at + 1:]
    own = [False] * len(plan)
    own[at + 1] = bool(v["own_answers"])
    return plan, own


def _own_answers(student, tok, heads: list[tuple[str, str]], path: Path, dev, bf16: bool,
                 max_new_tokens: int) -> dict:
    """The student's greedy answers to `heads`, every one kept (`answer_chats(keep_all=True)`), written to `path` as
    a chat file; the stats. A copy answers, in bf16 on the GPU as a saved student would, so the trained weights and
    their fp32 values stay as they are."""
    from convert.eval.models import wrap

    gen = copy.deepcopy(student)
    gen = (_as_loaded_bf16(gen) if bf16 else gen).eval()
    with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
        # eager decoding: a compiled step would compile a model that lives for these answers only
        chats, stats = answer_chats(wrap(gen, tok, "student"), heads, max_new_tokens, compiled=False, keep_all=True)
    del gen
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    write_chats(path, chats, {"stamp": [stamp()], "stats": stats})  # stamped: a result file beside the record's
    return stats | {"file": path.name}


def _suite(row: dict, name: str, out: Path, measure) -> None:
    """row |= measure(), then OUT/partial.json. A suite that raises (an OOM on a card a distillation has fragmented)
    is recorded in row["eval_failed"][name] with its error and the next suite runs: the distillation before it cost
    a quarter of an hour of a card, and its other numbers are what the run is for."""
    try:
        row.update(measure())
    except Exception as err:  # noqa: BLE001 - recorded, printed, and the row goes on
        traceback.print_exc()
        row.setdefault("eval_failed", {})[name] = f"{type(err).__name__}: {err}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _partial(row, out)


def _partial(row: dict, out: Path) -> None:
    """The variant's row as measured so far, replaced whole, stamped (a cut run's record may be this file alone):
    OUT/partial.json."""
    tmp = out / "partial.json.tmp"
    tmp.write_text(json.dumps({"stamp": [stamp()]} | row, indent=1, default=str))
    os.replace(tmp, out / "partial.json")


def _as_loaded_bf16(model):
    """`model` with its parameters cast to bf16 in place, except those its class keeps in fp32 (`A_log`, `dt_bias`),
    and its buffers as they are, as `from_pretrained(..., dtype=torch.bfloat16)` loads a saved student. `Module.to`
    would round both: the fp32 ones, and the rotary `inv_freq`, whose bf16 rounding (up to 0.4%) turns into a
    rotation error growing with the distance between query and key (radians at a few thousand tokens)."""
    for n, p in model.named_parameters():
        if p.is_floating_point() and not kept_in_fp32(model, n):
            p.data = p.data.to(torch.bfloat16)
    return model


@functools.cache
def _stdlib_texts() -> tuple[str, ...]:
    """The stdlib's held-out split (`jet-nemotron eval`'s default ppl text), read once for the teacher and every
    student."""
    from convert.eval.perplexity import read_texts
    from convert.tiny_teacher import stdlib_files

    return tuple(read_texts([str(p) for p in stdlib_files("eval")]))


def _stdlib_ppl(model, max_tokens: int) -> float:
    """Perplexity as `jet-nemotron eval`'s ppl suite measures it: the stdlib's held-out split, windows of 4,096."""
    from convert.eval.perplexity import perplexity as text_perplexity

    window = min(4096, int(getattr(model.config, "max_position_embeddings", 4096)))
    return text_perplexity(model, list(_stdlib_texts()), window, max_tokens or None)["perplexity"]


def _humaneval(model, n: int, out: Path) -> tuple[float, dict]:
    """(pass@1, the run: passed, unfinished answers, tokens generated, generate / test / total seconds, and the task
    ids passed, so two runs compare problem by problem and on any prefix of the problems). Every answer, with its
    test's result, goes to OUT/humaneval_<model name>.jsonl.gz, to read why a problem failed (a loop, wrong logic)."""
    from convert.eval.humaneval import humaneval

    t = time.perf_counter()
    # eager decoding (a compiled step would compile again for every variant) is launch-bound: about 40 ms a step
    # at 64 rows on the H200, so all 164 prompts in one batch take a third of three batches' time (greedy halves a
    # batch that does not fit)
    r = humaneval(model, n, batch_size=256, compiled=False)
    run = {k: v for k, v in r.items() if not isinstance(v, (list, dict))}
    run["passed_ids"] = [int(x["task_id"].split("/")[1]) for x in r["results"] if x["passed"]]
    run["seconds"] = time.perf_counter() - t
    answers = out / f"humaneval_{_file_name(model.name)}.jsonl.gz"
    with gzip.open(answers, "wt") as f:
        f.writelines(json.dumps(x) + "\n" for x in r["results"])
    run["answers"] = answers.name
    return r["pass@1"], run


def _file_name(name: str) -> str:
    """A variant's name as a file or folder name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


_FLOPS: dict = {}


def _flops(student, teacher, train: str, seq_len: int, local: bool) -> float:
    """FLOPs per token of a stage (trainable set, row length, local), from the first student asked about."""
    key = (train, seq_len, local)
    if key not in _FLOPS:
        set_trainable(student, train)
        _FLOPS[key] = flops_per_token(student, teacher, seq_len, local=local)["total"]
        student.requires_grad_(True)
    return _FLOPS[key]


def _probe_rate(student, teacher, data, tok, cfg, args, retrieval_kw) -> float:
    """Stage 1's tok/s over 4 steps on a copy of the student (the warm second log interval)."""
    probe = replace(cfg, steps=4, log_every=2, warmup_steps=1)
    sampler = stage_samplers(data, [probe], args.seq_len, tok, retrieval_kw, row_workers=args.row_workers)[0]
    return distill(copy.deepcopy(student), teacher, sampler, probe)["history"][-1]["tok_per_s"]


def _retrieval_summary(r: dict) -> dict:
    """{task@length: accuracy} of a `retrieval` result (the needle's over all its depths)."""
    return {f"{task}@{n}": acc for task, per in r.items() if isinstance(per, dict) and "by_length" in per
            for n, acc in per["by_length"].items()}


def _rate(v: dict) -> str:
    """Stage 1's tok/s and MFU as the table shows them, each part of a split stage 1 ("local / end to end"); "-"
    where there was no stage 1."""
    stages = [p["stage"] for p in v.get("plan", [])] or [1] * bool(v["steps"][0])  # rows from before "plan"
    cells = [f"{tok:,.0f}" + (f" ({mfu:.1%})" if mfu is not None else "")
             for st, tok, mfu in zip(stages, v["tok_per_s"], v["mfu"]) if st == 1 and tok is not None]
    return " / ".join(cells) or "-"


def best_student(results: Path) -> Path | None:
    """The saved student of a variants.json to evaluate at length: the best HumanEval pass@1 (when it was run), then
    the lowest held-out KL; None when no variant saved one."""
    rows = [v for v in json.loads(Path(results).read_text())["variants"] if v.get("saved")]
    if not rows:
        return None
    return Path(min(rows, key=lambda v: (-v.get("humaneval", 0.0), v["held_out_kl"]))["saved"])


def _he(pass1: float, run: dict) -> str:
    """pass@1, problems, seconds, and where measured the decode check's agreement (`convert/eval/decode_agreement`)."""
    check = f", decode {run['decode_agreement']:.3f}" if run.get("decode_agreement") is not None else ""
    return f"{pass1:.3f} ({run['problems']} in {run['seconds']:.0f} s{check})"


def _paired(first: dict, run: dict | None) -> str:
    """A variant's HumanEval against the first variant's, problem by problem: passes gained and lost, and the exact
    sign test's p (`convert/eval/paired.py`); "-" where not run on the same problems."""
    from convert.eval.paired import sign_test

    if run is None or "passed_ids" not in run or run["problems"] != first["problems"]:
        return "-"
    r = sign_test(set(first["passed_ids"]), set(run["passed_ids"]), set(range(first["problems"])))
    return f"+{r['gained']} / -{r['lost']} ({r['p']:.2f})"


def write(res: dict, out: Path) -> None:
    """variants.json, variants.md and variants_kl.png, replaced whole after every variant."""
    tmp = out / "variants.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, out / "variants.json")
    keys = sorted({k for v in res["variants"] for k in v["retrieval"]}, key=lambda k: (k.split("@")[0],
                                                                                       int(k.split("@")[1])))
    stdlib = "teacher_stdlib_ppl" in res or any("stdlib_ppl" in v for v in res["variants"])
    t_std, t_ret = res.get("teacher_stdlib_ppl"), res.get("teacher_retrieval", {})  # absent until measured
    head = ["variant", "steps 1/2/3", "M tokens", "stage-1 tok/s (MFU)", "held-out KL", "KL after each stage",
            "ppl (x teacher)"] + (["stdlib ppl (x teacher)"] if stdlib else []) + keys
    if any("humaneval" in v for v in res["variants"]):
        head.append("HumanEval")
        first = res["variants"][0].get("humaneval_run")
        if first is not None and "passed_ids" in first and len(res["variants"]) > 1:
            head.append(f"HumanEval against {res['variants'][0]['name']}: + / - (p)")
    paired = any(h.startswith("HumanEval against") for h in head)
    if any("answers" in v for v in res["variants"]):
        head.append("teacher's answers: KL / top-1 / exact / top-1 of the first 8")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| teacher | - | - | - | 0 | - | {:.3f} | ".format(res["ppl_teacher"])
                 + (("-" if t_std is None else f"{t_std:.3f}") + " | " if stdlib else "")
                 + " | ".join(f"{t_ret.get(k, float('nan')):.2f}" for k in keys)
                 + (f" | {_he(res['teacher_humaneval'], res['teacher_humaneval_run'])}" if "teacher_humaneval" in res
                    else (" | -" if "HumanEval" in head else ""))
                 + (" | -" if paired else "")
                 + (" | -" if head[-1].startswith("teacher's answers") else "") + " |")
    for v in res["variants"]:
        by_stage = " / ".join("-" if k is None else f"{k:.3f}" for k in v.get("held_out_kl_by_stage", []))
        cells = [v["name"], "/".join(map(str, v["steps"])), f"{v['tokens'] / 1e6:.1f}", _rate(v), f"{v['held_out_kl']:.3f}",
                 by_stage or "-", f"{v['ppl']:.3f} ({v['ppl'] / res['ppl_teacher']:.2f}x)"]
        if stdlib:
            p = v.get("stdlib_ppl")
            cells.append("-" if p is None else f"{p:.3f}" + ("" if t_std is None else f" ({p / t_std:.2f}x)"))
        cells += [f"{v['retrieval'].get(k, float('nan')):.2f}" for k in keys]
        if "HumanEval" in head:
            cells.append(_he(v["humaneval"], v["humaneval_run"]) if "humaneval" in v else "-")
        if paired:
            cells.append(_paired(res["variants"][0]["humaneval_run"], v.get("humaneval_run")))
        if head[-1].startswith("teacher's answers"):
            a = v.get("answers")
            cells.append("-" if a is None else f"{a['kl']:.3f} / {a['top1']:.3f} / {a['exact']:.2f}"
                         + (f" / {a['head_top1']:.3f}" if "head_top1" in a else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"| {f['name']} | failed: {f['error'][:200]} |" for f in res.get("failed", [])]
    lines += [f"\n{v['name']}: {suite} failed ({err[:200]})" for v in res["variants"]
              for suite, err in v.get("eval_failed", {}).items()]
    st = res["stamp"][0]
    # a variant with an explicit step plan ignores --minutes: its budget is the seconds its steps took
    budget = "; ".join(f"{v['name']}: {v['seconds']['distil'] / 60:.1f} min of distillation"
                       + ("" if v["variant"]["steps"] is None else " (explicit steps)")
                       + (f", its first stage {v['stage1_reused_from']!r}'s" if v.get("stage1_reused_from") else "")
                       for v in res["variants"])
    (out / "variants.md").write_text("\n".join(lines) + f"\n\nMeasured at commit {st['commit']} on {st['card']}, "
                                     f"{st['date']}; --minutes {res['args']['minutes']}. {budget}.\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # against seconds of training, since quality per GPU-minute is the measure and a transfer step costs less than
    # an end-to-end one; a transfer step has no KL (its loss is the attention MSE alone), so it shows on the right
    fig, (ax, ax_mse) = plt.subplots(1, 2, figsize=(11, 4))
    for i, v in enumerate(res["variants"]):
        t, kl, mse = 0.0, [], []
        for h in v["history"]:
            t += h["ms_per_step"] / 1e3
            local = h.get("local", h["kl"] == 0 and h["mse"] > 0)  # rows written before "local" was recorded
            (mse if local else kl).append((t, h["mse"] if local else h["kl"]))
        for series, axis in ((kl, ax), (mse, ax_mse)):
            if series:
                axis.plot(*zip(*series), color=f"C{i}", label=v["name"])
    ax.set_ylabel("training KL (nats/token), end-to-end steps")
    ax_mse.set_ylabel("attention-output MSE (normalised), transfer steps")
    for axis in (ax, ax_mse):
        axis.set_yscale("log")
        axis.set_xlabel("seconds of training (steps only)")
        axis.grid(True, alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "variants_kl.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
