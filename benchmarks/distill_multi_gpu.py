"""Does a 2-GPU distillation follow the 1-GPU one? (issue #4, acceptance 5)

The same `python -m convert distill` command, with the same global batch, run three ways:
    single  CUDA_VISIBLE_DEVICES=0 python -m convert distill ...
    ddp     accelerate launch --multi_gpu --num_processes 2 -m convert distill ...
    fsdp    accelerate launch --config_file examples/accelerate_fsdp.yaml -m convert distill ...   (FSDP2, 2 GPUs)
(`repeat`, a second 1-GPU run, is also accepted: its difference from `single` is the run-to-run noise floor.)
`--batch-size` is the global batch and every process takes its own rows of the same seeded permutation
(convert/README.md), so all runs see the same sequences at every step; only the reduction order differs.

Method:
1. Prepare once in WORK (skipped when WORK already holds what the same settings would build):
   a Qwen2 teacher (vocab 8192, hidden 1024, 12 layers, 16 heads / 4 KV heads, ~150 M parameters, byte-level BPE),
   pretrained briefly on Python's stdlib sources so its outputs are not random (`convert.demo.make_teacher`);
   the converted student (`jet*6,attn,jet*2,attn,swa,jet`, sliding window 512); the training text as one
   `.jsonl` file (one stdlib training-split file per line).
2. Run each mode as a subprocess from the repo root (log in WORK/logs/MODE.log), stage 1 then stage 2, bf16,
   and read OUT_MODE/distillation.json: per-step loss (stage 2 numbered after stage 1), tokens/s, perplexity.
3. Compare every mode with `single` step by step: |loss difference| (max, mean, max relative and where), final
   loss and held-out student perplexity differences, pass/fail against `--tolerance` (relative, per step);
   tokens/s per GPU (median over the steps after the first 3 of each stage) and the scaling efficiency.

    python benchmarks/distill_multi_gpu.py --out runs/dmg --work /tmp/dmg-work      # 2 GPUs, ~10 min
    python benchmarks/distill_multi_gpu.py --out runs/dmg --work /tmp/dmg-work --reuse   # after a session cut short
    python benchmarks/distill_multi_gpu.py --toy --modes single --out /tmp/dmg   # CPU smoke test, numbers meaningless
`--reuse` reads a mode's earlier result from WORK instead of running it again when the settings are the same, so
the modes can be split over shorter sessions (`--modes single`, then `--modes single ddp --reuse`, ...). Keep WORK
outside OUT when OUT is copied somewhere: it holds the teacher, the student and every distilled model.
Results: OUT/results.json (settings, GPU names, every run's per-step losses, the comparison), OUT/loss_curves.png.
Exit status 1 when a compared mode exceeds the tolerance or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from convert.tiny_teacher import TeacherSize  # noqa: E402
from stamp import stamp  # noqa: E402

# Relative tolerance per step: |loss_mode - loss_single| / loss_single. The runs add the same numbers in another
# order (2 processes x half the micro-batches each, then an all-reduce / reduce-scatter), under bf16 autocast,
# whose rounding turns a last-bit difference into a ~1e-3 one; training is chaotic, so each step's difference
# feeds the next step's weights and the gap grows with the number of steps. The CPU gloo test
# (modeling_tests/test_convert_fsdp.py, bf16 variant in convert/README.md) measured 1.6e-3 after 6 bf16 steps;
# 2e-2 leaves room for ~80 steps of such growth while still catching a real bug (a wrong batch split, a missing
# gradient reduction or a doubled learning rate moves the loss by far more than 2% within a few steps).
DEFAULT_TOLERANCE = 0.02
MODES = ("single", "ddp", "fsdp", "repeat")
COLORS = {"single": "C0", "ddp": "C1", "fsdp": "C2", "repeat": "C3"}  # the same in both panels
SKIP_STEPS = 3  # first steps of each stage left out of tokens/s: compilation, autotuning, allocator warm-up


@dataclass
class Setup:
    """Everything that decides what is built and run; `--toy` swaps in TOY."""

    size: TeacherSize
    teacher_steps: int
    teacher_seq: int
    teacher_batch: int
    teacher_lr: float
    teacher_device: str
    corpus_chars: int  # teacher's pretraining text (and its BPE)
    data_chars: int | None  # distillation text written to WORK/data (None: the whole stdlib training split)
    layer_map: str
    window: int
    seq_len: int
    stage1_steps: int
    stage2_steps: int
    batch_size: int  # global: sequences per optimizer step, all processes together
    micro_batch: int  # per process and forward
    lr1: float
    lr2: float
    warmup: int
    bf16: bool
    max_tokens: int


GPU = Setup(size=TeacherSize(vocab=8192, hidden=1024, layers=12, heads=16, kv_heads=4, intermediate=2816),
            teacher_steps=300, teacher_seq=1024, teacher_batch=16, teacher_lr=1e-3, teacher_device="cuda",
            corpus_chars=8_000_000, data_chars=None, layer_map="jet*6,attn,jet*2,attn,swa,jet", window=512,
            seq_len=1024, stage1_steps=40, stage2_steps=40, batch_size=32, micro_batch=4, lr1=1e-3, lr2=1e-4,
            warmup=10, bf16=True, max_tokens=4_000_000)
TOY = Setup(size=TeacherSize(vocab=1024, hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128),
            teacher_steps=20, teacher_seq=128, teacher_batch=16, teacher_lr=3e-3, teacher_device="cpu",
            corpus_chars=300_000, data_chars=400_000, layer_map="jet,attn,swa,jet", window=32,
            seq_len=128, stage1_steps=4, stage2_steps=4, batch_size=8, micro_batch=4, lr1=1e-3, lr2=1e-4,
            warmup=2, bf16=False, max_tokens=100_000)

PREP_KEYS = ("size", "teacher_steps", "teacher_seq", "teacher_batch", "teacher_lr", "teacher_device",
             "corpus_chars", "data_chars", "layer_map", "window")


def _paths(work: Path) -> dict[str, Path]:
    """Where `prepare` puts the teacher, the student, the training text and its record of the settings."""
    return {"teacher": work / "teacher-qwen2", "student": work / "student-converted",
            "data": work / "data" / "stdlib_train.jsonl", "marker": work / "prepared.json"}


def prepare(work: Path, setup: Setup) -> dict[str, Path]:
    """Teacher, converted student and training text in `work`; returns their paths.

    Skipped when `work/prepared.json` records the same preparation settings and all three exist, so a rerun goes
    straight to the distillation runs.
    """
    paths = _paths(work)
    wanted = {k: v for k, v in asdict(setup).items() if k in PREP_KEYS}
    done = paths["marker"].exists() and json.loads(paths["marker"].read_text()) == wanted
    if done and all((paths[k] / "config.json").exists() for k in ("teacher", "student")) and paths["data"].exists():
        print(f"prepare: reusing {work} (teacher, student, data)")
        return paths
    import torch

    from convert.demo import make_teacher
    from convert.pipeline import convert_checkpoint
    from convert.tiny_teacher import read_corpus, stdlib_files

    work.mkdir(parents=True, exist_ok=True)
    paths["marker"].unlink(missing_ok=True)  # written last: a prepare cut short is redone
    t0 = time.perf_counter()
    torch.manual_seed(0)
    print(f"prepare: teacher {setup.size} for {setup.teacher_steps} steps on {setup.teacher_device}")
    model, _ = make_teacher(paths["teacher"], setup.size, setup.teacher_steps, setup.teacher_seq,
                            setup.corpus_chars, device=setup.teacher_device, bf16=setup.teacher_device != "cpu",
                            batch=setup.teacher_batch, lr=setup.teacher_lr)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the runs below are other processes: give them the memory back
    convert_checkpoint(str(paths["teacher"]), paths["student"], setup.layer_map, window=setup.window,
                       dtype="float32", overwrite=True)
    paths["data"].parent.mkdir(parents=True, exist_ok=True)
    texts = read_corpus(stdlib_files("train"), setup.data_chars)
    tmp = paths["data"].with_suffix(".tmp")
    with tmp.open("w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    os.replace(tmp, paths["data"])
    paths["marker"].write_text(json.dumps(wanted, indent=1))
    print(f"prepare: done in {time.perf_counter() - t0:.0f} s ({len(texts)} files, "
          f"{sum(map(len, texts)) / 1e6:.1f} M chars of training text)")
    return paths


def _launcher(mode: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command prefix and extra environment that start `-m convert` in `mode`."""
    py = sys.executable
    if mode in ("single", "repeat"):
        return [py], {"CUDA_VISIBLE_DEVICES": "0"}
    launch = [py, "-m", "accelerate.commands.launch", "--main_process_port", str(port)]
    if mode == "ddp":
        # explicit defaults: a machine's own accelerate config file must not change the run; --bf16 of the
        # distill command sets the precision (an explicit Accelerator argument wins over the launcher's)
        return launch + ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                         "--dynamo_backend", "no"], {}
    if mode == "fsdp":
        return launch + ["--config_file", str(REPO / "examples" / "accelerate_fsdp.yaml")], {}
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _tail(path: Path, n: int = 40) -> str:
    """The last n lines of a log file."""
    with path.open(errors="replace") as f:
        return "".join(deque(f, n))


def run_mode(mode: str, work: Path, setup: Setup, reuse: bool = False) -> dict:
    """One distillation (stage 1 then stage 2) in `mode`, as a subprocess; returns its numbers.

    Keys: losses / kls / steps / stages (one entry per optimizer step, stage 2 numbered after stage 1),
    processes, tok_per_s_per_gpu (median over the steps after the first SKIP_STEPS of each stage, global tok/s
    divided by the processes), wall_s (the whole subprocess: loading, tokenising, evaluating included),
    ppl_student, ppl_teacher. The dict is also saved to WORK/runs/MODE.run.json; with `reuse` an earlier one
    made with the same settings is returned instead of running again.
    """
    paths = _paths(work)
    out = work / "runs" / mode
    cache = out.with_name(mode + ".run.json")
    if reuse and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("setup") == json.loads(json.dumps(asdict(setup))):
            print(f"[{mode}] reusing {cache}")
            return cached
    log = work / "logs" / f"{mode}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    prefix, extra_env = _launcher(mode, 29600 + (os.getpid() + MODES.index(mode)) % 1000)
    cmd = prefix + ["-m", "convert", "distill", str(out), "--teacher", str(paths["teacher"]),
                    "--student", str(paths["student"]), "--data", str(paths["data"]),
                    "--seq-len", str(setup.seq_len), "--stage1-steps", str(setup.stage1_steps),
                    "--stage2-steps", str(setup.stage2_steps), "--batch-size", str(setup.batch_size),
                    "--micro-batch", str(setup.micro_batch), "--lr1", str(setup.lr1), "--lr2", str(setup.lr2),
                    "--warmup", str(setup.warmup), "--save-every", "0", "--overwrite",
                    "--max-tokens", str(setup.max_tokens)] + (["--bf16"] if setup.bf16 else [])
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, **extra_env)
    print(f"[{mode}] running (log {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{mode} exited with status {rc} after {wall:.0f} s; last lines of {log}:\n{_tail(log)}")
    res = json.loads((out / "distillation.json").read_text())
    steps, losses, kls, stages, speeds, offset = [], [], [], [], [], 0
    for st in res["stages"]:
        world = st["world_size"]
        for h in st["history"]:
            steps.append(offset + h["step"])
            losses.append(h["loss"])
            kls.append(h["kl"])
            stages.append(h["stage"])
        timed = st["history"][SKIP_STEPS:] or st["history"]  # a stage of <= SKIP_STEPS steps: all of them
        speeds += [h["tok_per_s"] / world for h in timed]
        offset += st["steps"]
    worlds = {st["world_size"] for st in res["stages"]}
    tokens, train_s = sum(st["tokens"] for st in res["stages"]), sum(st["wall_s"] for st in res["stages"])
    run = {"mode": mode, "processes": max(worlds), "command": " ".join(cmd), "log": str(log),
           "steps": steps, "stages": stages, "losses": losses, "kls": kls,
           "tok_per_s_per_gpu": statistics.median(speeds), "tokens": tokens, "train_s": train_s,
           "tok_per_s_per_gpu_overall": tokens / train_s / max(worlds), "wall_s": wall,
           "ppl_student": res.get("ppl_student"), "ppl_teacher": res.get("ppl_teacher"),
           "kl_before": res.get("kl_before"), "kl_after": res.get("kl_after"), "setup": asdict(setup)}
    cache.write_text(json.dumps(run, indent=1))
    print(f"[{mode}] {run['processes']} process(es), {len(steps)} steps in {wall:.0f} s: final loss {losses[-1]:.4f}, "
          f"{run['tok_per_s_per_gpu']:.0f} tok/s per GPU, student ppl {run['ppl_student']:.3f}", flush=True)
    return run


def compare(runs: dict[str, dict], tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Every run against `runs["single"]`, step by step; throughput per GPU and scaling for every run.

    Returns {"tolerance", "passed" (None without a reference or anything to compare), "modes": {mode: {...}}}.
    """
    ref = runs.get("single")
    out: dict = {"tolerance": tolerance, "passed": None, "modes": {}}
    for mode, r in runs.items():
        row = {"processes": r["processes"], "tok_per_s_per_gpu": r["tok_per_s_per_gpu"],
               "scaling": r["tok_per_s_per_gpu"] / ref["tok_per_s_per_gpu"] if ref else None}
        out["modes"][mode] = row
        if ref is None or mode == "single":
            continue
        if r["steps"] != ref["steps"]:
            raise ValueError(f"{mode} ran steps {r['steps'][0]}..{r['steps'][-1]} ({len(r['steps'])}), single "
                             f"{ref['steps'][0]}..{ref['steps'][-1]} ({len(ref['steps'])}): not the same run")
        diff = [a - b for a, b in zip(r["losses"], ref["losses"])]
        rel = [abs(d) / abs(b) for d, b in zip(diff, ref["losses"])]
        i = max(range(len(rel)), key=rel.__getitem__)
        j = max(range(len(diff)), key=lambda k: abs(diff[k]))
        ppl_diff = (r["ppl_student"] - ref["ppl_student"]
                    if r.get("ppl_student") is not None and ref.get("ppl_student") is not None else None)
        row.update(loss_diff=diff, max_abs_diff=abs(diff[j]), max_abs_diff_step=ref["steps"][j],
                   mean_abs_diff=sum(map(abs, diff)) / len(diff), max_rel_diff=rel[i],
                   max_rel_diff_step=ref["steps"][i], final_loss_diff=diff[-1],
                   final_loss_rel_diff=diff[-1] / ref["losses"][-1], ppl_student_diff=ppl_diff,
                   ppl_student_rel_diff=ppl_diff / ref["ppl_student"] if ppl_diff is not None else None,
                   passed=rel[i] <= tolerance)
        out["passed"] = row["passed"] and out["passed"] is not False
    return out


def plot(runs: dict[str, dict], comparison: dict, path: Path) -> None:
    """Top: loss against step for every mode; bottom: loss_mode - loss_single with the tolerance band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2))
    for mode, r in runs.items():
        top.plot(r["steps"], r["losses"], label=f"{mode} ({r['processes']} process{'es' * (r['processes'] > 1)})",
                 color=COLORS[mode], lw=1.2, ls="-" if mode == "single" else "--")
    ref = runs.get("single")
    if ref:
        tol = comparison["tolerance"]
        band = [tol * x for x in ref["losses"]]
        bottom.fill_between(ref["steps"], [-b for b in band], band, color="grey", alpha=0.2,
                            label=f"tolerance ({tol:g} relative)")
        for mode, row in comparison["modes"].items():
            if "loss_diff" in row:
                bottom.plot(ref["steps"], row["loss_diff"], label=mode, color=COLORS[mode], lw=1.2)
        bottom.axhline(0, color="black", lw=0.6)
        for a, b, s in zip(ref["stages"], ref["stages"][1:], ref["steps"]):
            if a != b:
                for ax in (top, bottom):
                    ax.axvline(s + 0.5, color="grey", ls=":", lw=1)
                top.text(s + 1, 0.98, f" stage {b}", transform=top.get_xaxis_transform(), va="top", fontsize=8)
    top.set(yscale="log", ylabel="training loss (nats/token)", title="distillation: 1 GPU vs 2 GPUs, same global batch")
    bottom.set(xlabel="optimizer step", ylabel="loss - loss(single)")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(runs: dict[str, dict], comparison: dict) -> None:
    """One line per mode: processes, final loss, worst relative step difference, tok/s per GPU, scaling."""
    print(f"{'mode':8s} {'procs':>5s} {'final loss':>10s} {'max|dloss| rel':>14s} {'at step':>7s} "
          f"{'tok/s/GPU':>10s} {'scaling':>7s} {'ppl student':>11s}")
    for mode, r in runs.items():
        row = comparison["modes"][mode]
        rel = f"{row['max_rel_diff']:.2e}" if "max_rel_diff" in row else "-"
        at = str(row["max_rel_diff_step"]) if "max_rel_diff_step" in row else "-"
        scaling = f"{row['scaling']:.3f}" if row["scaling"] is not None else "-"
        ppl = f"{r['ppl_student']:.3f}" if r.get("ppl_student") is not None else "-"
        print(f"{mode:8s} {r['processes']:5d} {r['losses'][-1]:10.4f} {rel:>14s} {at:>7s} "
              f"{r['tok_per_s_per_gpu']:10.0f} {scaling:>7s} {ppl:>11s}")


def gpu_names() -> list[str]:
    """Names of the visible CUDA devices (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/distill_multi_gpu"))
    ap.add_argument("--work", type=Path, help="teacher, student, data, runs and logs (default OUT/work)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=["single", "ddp", "fsdp"])
    ap.add_argument("--stage1-steps", type=int)
    ap.add_argument("--stage2-steps", type=int)
    ap.add_argument("--batch-size", type=int, help="global: sequences per optimizer step (default 32)")
    ap.add_argument("--micro-batch", type=int, help="sequences per forward per process (default 4)")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--max-tokens", type=int, help="distillation text tokenised (default 4,000,000)")
    ap.add_argument("--teacher-steps", type=int)
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                    help="largest |loss - loss(single)| / loss(single) allowed at any step")
    ap.add_argument("--reuse", action="store_true", help="read a mode's earlier result from WORK when the "
                                                         "settings match instead of running it again")
    ap.add_argument("--toy", action="store_true", help="tiny everything on CPU (use with --modes single)")
    args = ap.parse_args()
    over = {k: v for k, v in (("stage1_steps", args.stage1_steps), ("stage2_steps", args.stage2_steps),
                              ("batch_size", args.batch_size), ("micro_batch", args.micro_batch),
                              ("seq_len", args.seq_len), ("max_tokens", args.max_tokens),
                              ("teacher_steps", args.teacher_steps)) if v is not None}
    setup = replace(TOY if args.toy else GPU, **over)
    work = args.work or args.out / "work"
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"stamp": [stamp(card=", ".join(gpu_names()) or "cpu")], "params": asdict(setup),
                     "modes": args.modes, "gpus": gpu_names(), "runs": {}, "errors": {}}

    def save() -> None:  # after every run, so a session cut short keeps what it measured
        (args.out / "results.json").write_text(json.dumps(results, indent=1))

    t0 = time.perf_counter()
    prepare(work, setup)
    results["prepare_s"] = time.perf_counter() - t0
    for mode in args.modes:
        try:
            results["runs"][mode] = run_mode(mode, work, setup, args.reuse)
        except RuntimeError as err:  # one failed mode still leaves the others' numbers
            print(f"[{mode}] FAILED: {err}", file=sys.stderr)
            results["errors"][mode] = str(err)
        save()
    runs = results["runs"]
    if not runs:
        return 1
    results["comparison"] = comparison = compare(runs, args.tolerance)
    results["minutes_total"] = (time.perf_counter() - t0) / 60
    save()
    plot(runs, comparison, args.out / "loss_curves.png")
    print_table(runs, comparison)
    verdict = {None: "nothing to compare", True: "PASS", False: "FAIL"}[comparison["passed"]]
    print(f"{verdict} (tolerance {args.tolerance:g} relative per step); wrote {args.out / 'results.json'} and "
          f"{args.out / 'loss_curves.png'}")
    return 1 if comparison["passed"] is False or results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
