"""Distil a converted Jet-Nemotron student from its Qwen teacher with `accelerate` (one device, DDP or FSDP2).

One call of `distill` runs one stage:
    stage 1: only the JetBlocks train (MLPs, embeddings and kept attention frozen); loss =
             kl_weight * KL(teacher || student) on logits + mse_weight * per-layer attention-output MSE
             (each JetBlock's output against the output of the attention it replaced, divided by that
             output's mean square, averaged over JetBlock layers).
    stage 2: everything trains on the logit KL alone.
    stage 3: stage 2's defaults, meant for a longer `seq_len` (the pipeline's long-context stage).
`train` (`distill_config.TRAIN_SETS`) and the two weights override these defaults.

Batches: `batch_size` sequences per optimizer step whatever the number of processes; each process takes
`micro_batch` of them per forward and accumulates `batch_size / (micro_batch * world)` forwards. The rows come
from a batch source, a pure function of the step (`corpus.MixtureSampler`, or a seeded permutation of packed
rows given as a tensor), so a resumed or a DDP run sees exactly the batches of a single uninterrupted run; they
are built one step ahead on a thread (`prefetch.py`). Losses stay on the device and are read back every
`log_every` steps (and before every checkpoint and the last step), with tok/s and MFU over the interval
(`throughput.py`). The learning rate is also a function of the step (warmup + cosine).
Checkpoints (`accelerator.save_state` + `progress.json`, written to a temporary folder then renamed) every
`save_every` steps carry the run's identity (`run_identity.py`); `resume=True` continues from the newest one
and refuses one that another run wrote. A loss or gradient norm that goes NaN / Inf stops the run, naming the
step and the last good checkpoint: the losses are checked when they are read back, before that step's update,
so with `log_every=1` no non-finite step is ever applied and otherwise nothing after it is saved (every
checkpoint is preceded by a read-back). Only the main process logs and writes.

FSDP (accelerate configured with `fsdp_version: 2`): a copy of the student is sharded across the processes
(parameters, gradients and Adam state), checkpoints are accelerate's sharded ones, and at the end the full
weights are gathered back into the caller's `student`, which stays an ordinary module. The teacher only runs
forward and is not sharded: every process holds a full copy (bf16 with `mixed_precision="bf16"`). The caller's
teacher is left as it was, on its device and in its dtype: distillation runs a copy made on the device.

A stage's settings are `distill_config.DistillConfig`; what a step measures (the teacher's targets, the KL and the
attention-output loss) is `distill_loss.py`; this file runs the stage.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from jet_nemotron.fused_projections import step_weights
from jet_nemotron.transformers_compat import checkpointing_disable, checkpointing_enable

from .distill_config import DistillConfig, fsdp_turns_off_transfer
from .distill_loss import DistillLoss, layer_mse, mse_fn, teacher_on, teacher_targets
from .kl import chunked_kl, rows_fn
from .run_identity import describe_difference, stage_fields
from .step_budget import StepBudget
from .teacher_fp8 import Fp8Linear, check_fp8_device, with_fp8_mlps
from .teacher_kernels import KernelMLP, KernelRMSNorm, teacher_rope_count, with_teacher_kernels


def jetblock_weight(student) -> Callable[[str], bool]:
    """A test of a parameter name: is it a JetBlock's own weight (`model.layers.{i}.self_attn.*`, layer i a
    JetBlock)?"""
    jet = {i for i, t in enumerate(student.config.official_layer_types) if t == "jet"}

    def is_jet(name: str) -> bool:
        parts = name.split(".")
        return len(parts) > 3 and parts[1] == "layers" and int(parts[2]) in jet and parts[3] == "self_attn"

    return is_jet


def set_trainable(student, train: str) -> int:
    """Freeze per `train`; returns the number of trainable parameters."""
    is_jet = jetblock_weight(student)
    # the embeddings and the head, tied or not, by transformers' own accessors, and the MLPs by each decoder layer's
    # own module, rather than by name
    ends = {id(p) for m in (student.get_input_embeddings(), student.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    mlps = {id(p) for layer in student.get_decoder().layers for p in layer.mlp.parameters()}
    n = 0
    for name, p in student.named_parameters():
        if train == "all":
            on = True
        elif train == "non-mlp":
            on = id(p) not in mlps
        elif train == "mixers":
            on = id(p) not in mlps and id(p) not in ends
        else:
            on = is_jet(name)
        p.requires_grad_(on)
        n += p.numel() if on else 0
    if n == 0:
        raise ValueError(f"train={train!r} leaves nothing trainable (the map has no JetBlock?)")
    return n


def param_groups(student, cfg: DistillConfig) -> list[dict]:
    """The trainable parameters as AdamW groups: one, or with `cfg.jet_lr` the JetBlocks' weights apart with
    "lr_scale" = jet_lr / lr (the step sets each group's lr to the schedule's times its scale)."""
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if cfg.jet_lr is None or cfg.jet_lr == cfg.lr:
        return [{"params": [p for _, p in trainable]}]
    is_jet = jetblock_weight(student)
    groups = [{"params": [p for n, p in trainable if is_jet(n)], "lr_scale": cfg.jet_lr / cfg.lr},
              {"params": [p for n, p in trainable if not is_jet(n)], "lr_scale": 1.0}]
    if not groups[0]["params"]:
        raise ValueError(f"stage {cfg.stage}: jet_lr {cfg.jet_lr} but no JetBlock weight trains (train="
                         f"{cfg.train!r})")
    return [g for g in groups if g["params"]]


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warmup to cfg.lr, then cosine down to cfg.lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@functools.lru_cache(maxsize=2)  # a batch spans at most two epochs; each is drawn once, not once per step
def _epoch_permutation(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class TensorRows:
    """Packed rows [N, L] as a batch source (the path before `corpus.py`): `batch_rows` of the step."""

    def __init__(self, rows: torch.Tensor, seed: int):
        if rows.ndim != 2 or rows.shape[0] < 1:
            raise ValueError(f"training rows must be [N >= 1, seq_len], got shape {tuple(rows.shape)}")
        self.rows, self.seed, self.seq_len = rows, seed, rows.shape[1]

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        return self.rows[batch_rows(step, self.rows.shape[0], batch_size, self.seed)]


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int) -> torch.Tensor:
    """Row indices of the global batch of `step`: a fresh seeded permutation of all rows every epoch."""
    g = torch.arange(step * batch_size, (step + 1) * batch_size)
    epoch, pos = g // n_rows, g % n_rows
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epoch.unique().tolist():
        sel = epoch == e
        out[sel] = _epoch_permutation(n_rows, seed, e)[pos[sel]]
    return out


@torch.no_grad()
def perplexity(model, rows: torch.Tensor, batch: int = 8, device=None) -> float:
    """exp(mean next-token NLL) over packed rows [N, L], the head's logits formed a chunk of tokens at a time
    (`causal_nll`: [8, 2,048] rows at once were 10 GB of fp32 logits at Qwen's vocabulary)."""
    from .eval.perplexity import causal_nll

    model.eval()
    device = device or next(model.parameters()).device
    nll, n = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i : i + batch].to(device)
        nll += causal_nll(model, x)
        n += x[:, 1:].numel()
    return math.exp(nll / n)


@torch.no_grad()
def eval_kl(student, teacher, rows: torch.Tensor, batch: int = 8, chunk: int = 1024, device=None) -> float:
    """Mean per-token KL(teacher || student) over packed rows [N, L]."""
    student.eval()
    device = device or next(student.parameters()).device
    total, n = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i : i + batch].to(device)
        hs = student.model(input_ids=x, use_cache=False).last_hidden_state
        ht = teacher.model(input_ids=x, use_cache=False).last_hidden_state
        total += chunked_kl(hs, student.lm_head.weight, ht, teacher.lm_head.weight, chunk).item() * x.numel()
        n += x.numel()
    return total / n


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    found = [p for p in ckpt_dir.glob("step_*") if p.is_dir() and (p / "progress.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


FSDP_NOTE = "stage 1 runs end to end under FSDP: attention transfer, the default elsewhere, cannot be sharded"


def uses_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def _check_fsdp_plugin(plugin) -> None:
    """Refuse the FSDP settings this training loop cannot honour."""
    if getattr(plugin, "fsdp_version", 1) != 2:  # accelerate before FSDP2 support has no such field
        # FSDP1 flattens each unit's parameters, which breaks stage 1's frozen / trainable mix unless
        # use_orig_params is set, and gathers state differently; FSDP2 handles both natively
        raise ValueError("FSDP1 is not supported for distillation: set `fsdp_version: 2` in the accelerate config")
    if plugin.cpu_ram_efficient_loading:
        # transformers then loads real weights on the first process only; the teacher is never sharded or
        # broadcast, so the other processes would distil from an uninitialised teacher
        raise ValueError("fsdp_cpu_ram_efficient_loading must be false for distillation: every process needs "
                         "the teacher's weights")


def _fsdp_match_single_device(acc) -> None:
    """Make FSDP do the arithmetic of one device (up to summation order), whatever `mixed_precision` says.

    With bf16, accelerate's FSDP2 policy gathers bf16 copies of the weights and reduces gradients in bf16,
    a different computation from the one-device / DDP run (fp32 weights under bf16 autocast, fp32 gradients),
    so the loss curves would part by more than summation order. Keeping the shards' own fp32 for both leaves
    bf16 to autocast, as on one device, at the price of twice the bytes per all-gather / reduce-scatter.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    acc.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy()


def _gather_full_state(wrapper) -> dict[str, torch.Tensor]:
    """The student's full weights as CPU tensors on every process, from the FSDP2-sharded `DistillLoss`.

    A collective: every process must call it. Parameters are gathered one at a time, so the device holds at
    most one full tensor beyond its shards.
    """
    from torch.distributed.tensor import DTensor

    full = {}
    for name, t in wrapper.state_dict().items():
        t = t.full_tensor() if isinstance(t, DTensor) else t
        # FSDP's activation checkpointing inserts this module level into the names
        name = name.replace("._checkpoint_wrapped_module", "")
        full[name.removeprefix("student.")] = t.detach().to("cpu", copy=True)
    return full


def _held_out_kl(student, teacher, rows: torch.Tensor, cfg: DistillConfig, device, park: bool) -> float:
    """eval_kl on `device`; with `park` the student goes back to the CPU afterwards.

    Under FSDP the caller's student is a full, unsharded copy kept on the CPU while its sharded twin trains;
    it visits the device only for this evaluation (main process), which needs the model to fit one device
    for inference, as the pipeline's perplexity does.
    """
    student.to(device)
    with _eval_autocast(cfg, device):
        kl = eval_kl(student, teacher, rows.to(device), cfg.eval_batch, cfg.kl_chunk)
    student.train()
    if park:
        student.to("cpu")
    return kl


def _eval_autocast(cfg: DistillConfig, device):
    """bf16 autocast for a bf16 stage's held-out KL: in fp32 (no TF32) the 1.5B student's 131K held-out tokens
    took ~15 s an evaluation on an H200, several per run; fp32 runs stay exact."""
    device = torch.device(device)
    return torch.autocast(device.type, torch.bfloat16, enabled=cfg.mixed_precision == "bf16")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm went NaN / Inf; the run stopped before the optimizer step applied it."""


class DeviceMemoryError(RuntimeError):
    """A step ran out of device memory; the message says with how many rows a forward and what to change."""


def _last_good(last_good) -> str:
    """Where a resume of a stopped stage starts, as the stopping errors name it."""
    return f"Last good checkpoint: {last_good or 'none (no checkpoint saved yet in this stage)'}"


def _out_of_memory(err: Exception, cfg: DistillConfig, step: int, seq_len: int, device,
                   last_good) -> DeviceMemoryError:
    """The error a step's out-of-memory becomes: the stage, step and micro-batch, the card's peak and size, what
    to lower (the global batch, and so the run, stays the same), and the checkpoint a resume starts from."""
    where = ""
    if device.type == "cuda":
        peak, total = torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
        where = f" ({peak / 1e9:.1f} GB allocated at peak of the card's {total / 1e9:.1f} GB)"
    checkpointing = "" if cfg.gradient_checkpointing else ", or turn on --gradient-checkpointing"
    return DeviceMemoryError(
        f"stage {cfg.stage}, step {step + 1}: out of device memory with {cfg.micro_batch} rows of {seq_len} tokens a "
        f"forward{where}. Lower --micro-batch (the --batch-size of {cfg.batch_size} stays: more micro-steps are "
        f"accumulated, so the run is the same){checkpointing}. {_last_good(last_good)}; --resume continues from it "
        f"with another micro-batch. ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})")


@dataclass
class _Training:
    """What one stage's loop works on, built by `_prepare`."""

    acc: object
    wrapper: nn.Module  # DistillLoss, prepared by accelerate (DDP / FSDP wrapped)
    opt: torch.optim.Optimizer
    params: list  # the optimizer's parameters (FSDP: the shards)
    teacher: nn.Module  # the teacher copy on the device
    mse_layers: list[int]
    accum: int  # forwards accumulated per optimizer step on each process
    fsdp: bool
    n_train: int
    fp32_frozen: dict  # name -> the exact fp32 value of a frozen parameter held in bf16 (`frozen_bf16`)
    target_teacher: nn.Module  # the teacher that gives the training targets: `teacher`, or its FP8-MLP copy


def distill(student, teacher, train_rows, cfg: DistillConfig, ckpt_dir: str | Path | None = None,
            resume: bool = False, eval_rows: torch.Tensor | None = None, accelerator=None, *,
            identity: dict | None = None, stop: Callable[[int], bool] | None = None,
            eval_kl_before: float | None = None) -> dict:
    """Train `student` in place towards `teacher`; returns the run summary.

    `train_rows`: packed rows [N, L] (a tensor), or a batch source with `.seq_len` and `.batch(step, size)` ->
    [size, L] int64, a pure function of the step (`corpus.MixtureSampler`).

    The summary holds the per-step history (loss, kl, mse, lr, tok/s), held-out KL before and after, tokens
    seen and wall time. `student` ends unwrapped, on its device, in fp32 (under FSDP it is never sharded: it
    waits on the CPU and receives the gathered weights at the end, then moves to the device).

    Checkpoints: `resume=True` continues from the newest checkpoint in `ckpt_dir` and refuses one written by a
    different run (`identity`, see run_identity.py; this stage's settings and a hash of `train_rows` are always
    part of it) or none at all; a fresh run refuses a `ckpt_dir` that already holds checkpoints. A loss that
    goes non-finite raises `NonFiniteLossError` naming the step and the last good checkpoint.
    `stop(step)` (optional) is asked at every step (before its update; a pure function of the step); True ends
    the stage after that step, as a kill would after that step's checkpoint, and returns
    {"stopped_at": step, "history": ...}. `eval_kl_before`: the held-out KL of these exact weights when the caller
    knows it (the previous stage's "eval_kl_after"), so it is not measured twice. The held-out KL runs under bf16
    autocast when the stage trains in bf16, as the model trains and is served.
    """
    from accelerate import Accelerator

    cfg.resolved()  # every field checked (a ValueError naming it) before an accelerator is made
    acc = accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
    fsdp = uses_fsdp(acc)
    if fsdp_turns_off_transfer(cfg, fsdp):
        acc.print(FSDP_NOTE)
    cfg = cfg.resolved(fsdp=fsdp)
    if cfg.kl_kernel is None:  # the Triton KL wherever it runs natively
        cfg = replace(cfg, kl_kernel=acc.device.type == "cuda" and cfg.fused_kl)
    if cfg.mse_kernel is None:  # and the Triton attention MSE
        cfg = replace(cfg, mse_kernel=acc.device.type == "cuda")
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
    data = TensorRows(train_rows, cfg.seed) if isinstance(train_rows, torch.Tensor) else train_rows
    identity = {**(identity or {}), "train_rows": source_fingerprint(data, cfg.batch_size),
                "this_stage": stage_fields(cfg)}
    if ckpt_dir is not None and not resume and _checkpoints(ckpt_dir):
        raise FileExistsError(f"checkpoint folder {ckpt_dir} already holds checkpoints "
                              f"({_checkpoints(ckpt_dir)[-1].name}); resume them or clear the folder")
    seconds, t = {}, time.perf_counter()  # where a stage's wall clock goes besides its steps
    deadline = t + cfg.time_budget_s if cfg.time_budget_s is not None else None

    def lap(name):
        nonlocal t
        seconds[name], t = time.perf_counter() - t, time.perf_counter()

    run = _prepare(student, teacher, data, cfg, acc)
    lap("prepare")
    start, history, kl_before, chosen = _restore(acc, ckpt_dir, identity) if resume else (0, [], None, None)
    if chosen is not None:  # a budgeted stage's step count, chosen before it was stopped: kept, not timed again
        cfg, deadline = replace(cfg, steps=chosen), None
    if eval_rows is not None and acc.is_main_process and start == 0:
        # the trained weights still equal the caller's student; under FSDP only the latter is whole. With
        # frozen_bf16 its frozen weights are already bf16 here (the "after" sees their fp32 values again)
        kl_before = eval_kl_before if eval_kl_before is not None else _held_out_kl(
            student, run.teacher, eval_rows, cfg, acc.device, park=run.fsdp)
    lap("held_out_kl_before")
    speed = _speed_info(data, student, run.teacher, cfg, acc,
                        fp8=sum(isinstance(m, Fp8Linear) for m in run.target_teacher.modules()))
    lap("flops_count")
    t_run, cap = time.perf_counter(), cfg.steps
    try:
        stopped, cfg = _train_steps(run, data, cfg, start, history, ckpt_dir, identity, kl_before, stop, speed,
                                    deadline, chosen)
    finally:
        acc.unwrap_model(run.wrapper).release()  # the stage's capture hooks and compiled layers
        restore_fp32(student, run.fp32_frozen)  # stopped, failed or done: the caller's student is fp32 again
    if stopped is not None:
        return {"stopped_at": stopped, "history": history}
    if ckpt_dir is not None and cfg.save_every and start < cfg.steps:
        # the finished stage is a checkpoint too, so a resumed run skips it instead of redoing its tail
        save_checkpoint(acc, ckpt_dir, cfg.steps, history, cfg.keep_checkpoints, kl_before, identity,
                        cfg.steps if cfg.time_budget_s is not None else None)
    acc.wait_for_everyone()
    unwrapped = _finish(run, student, cfg)
    wall, L = time.perf_counter() - t_run, data.seq_len
    config = {k: v for k, v in asdict(cfg).items() if k != "history"}
    summary = {"config": config, "trainable_params": run.n_train,
               "world_size": acc.num_processes, "eval_kl_before": kl_before, "history": history,
               "tokens": cfg.steps * cfg.batch_size * L, "steps": cfg.steps, "wall_s": wall,
               "tok_per_s": (cfg.steps - start) * cfg.batch_size * L / wall if cfg.steps > start else None, **speed}
    if cfg.time_budget_s is not None:
        summary["step_budget"] = {"seconds": cfg.time_budget_s, "cap": cap, "steps": cfg.steps}
    if summary["tok_per_s"] and speed["peak_flops"]:
        summary["mfu"] = summary["tok_per_s"] * speed["flops_per_token"]["total"] / (speed["peak_flops"] *
                                                                                      acc.num_processes)
    t = time.perf_counter()
    if eval_rows is not None and acc.is_main_process:
        with _eval_autocast(cfg, acc.device):
            summary["eval_kl_after"] = eval_kl(unwrapped, run.teacher, eval_rows.to(acc.device), cfg.eval_batch,
                                               cfg.kl_chunk)
            if cfg.local:  # attention transfer: its own objective held out, layer by layer
                by_layer = layer_mse(unwrapped, run.teacher, eval_rows, run.mse_layers, cfg.eval_batch)
                summary["eval_mse_by_layer"] = dict(zip(run.mse_layers, by_layer))
                acc.print(f"stage {cfg.stage}: held-out attention MSE by layer (normalised), mean "
                          f"{sum(by_layer) / len(by_layer):.4f}: " +
                          ", ".join(f"{i} {m:.3f}" for i, m in zip(run.mse_layers, by_layer)))
    lap("held_out_kl_after")
    acc.free_memory()
    summary["seconds"] = seconds | {"steps_and_finish": wall}
    return summary


def rows_fingerprint(rows: torch.Tensor) -> str:
    """Shape and a hash of the packed token rows (one pass over them)."""
    import hashlib

    data = rows.detach().to("cpu").contiguous().numpy()
    return f"{list(rows.shape)}:{hashlib.blake2b(data.tobytes(), digest_size=8).hexdigest()}"


def source_fingerprint(data, batch_size: int) -> str:
    """Packed rows: their shape and hash. A sampler (a pure function of the step): its kind, row length and a
    hash of its first batch (the corpus itself is in the pipeline's identity, from its manifest)."""
    if isinstance(data, TensorRows):
        return rows_fingerprint(data.rows)
    return f"{type(data).__name__} seq_len {data.seq_len}: first batch {rows_fingerprint(data.batch(0, batch_size))}"


def _prepare(student, teacher, data, cfg: DistillConfig, acc) -> _Training:
    """Check the batch split, freeze per `cfg.train`, copy the teacher to the device, wrap for accelerate."""
    world = acc.num_processes
    per_step = cfg.micro_batch * world
    if cfg.batch_size % per_step:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch {cfg.micro_batch} x "
                         f"{world} processes")
    if isinstance(data, TensorRows) and cfg.seq_len is not None and cfg.seq_len != data.seq_len:
        raise ValueError(f"stage {cfg.stage}: seq_len {cfg.seq_len} but the training rows have {data.seq_len} tokens")
    jet_layers = [i for i, t in enumerate(student.config.official_layer_types) if t == "jet"]
    mse_layers = jet_layers if cfg.mse_weight > 0 else []
    if cfg.kl_weight <= 0 and not mse_layers:
        raise ValueError("kl_weight is 0 and the student has no JetBlock for the attention MSE: nothing to train on")
    fsdp = uses_fsdp(acc)
    if cfg.fused_adam and fsdp:
        raise ValueError("fused_adam with FSDP: AdamW's fused kernel on sharded parameters is not tested here; leave "
                         "it off under FSDP")
    if fsdp:
        _check_fsdp_plugin(acc.state.fsdp_plugin)
        _fsdp_match_single_device(acc)
    rows_fn(cfg.kl_kernel, acc.device)  # a kernel asked for where it cannot run: refused before any step
    mse = mse_fn(cfg.mse_kernel, acc.device)
    n_train = set_trainable(student, cfg.train)
    if cfg.frozen_bf16 and fsdp:
        raise ValueError("frozen_bf16 with FSDP: FSDP's mixed-precision policy casts the shards itself; use one GPU "
                         "or DDP for it")
    fp32_frozen = frozen_to_bf16(student) if cfg.frozen_bf16 else {}
    if cfg.gradient_checkpointing:
        checkpointing_enable(student, use_reentrant=False)  # the name transformers 5.24 renamed, either release
    student.train()
    # the teacher only runs forward: in bf16 it takes half the memory and time
    teacher = teacher_on(teacher, acc.device, torch.bfloat16 if cfg.mixed_precision == "bf16" else None)
    if cfg.teacher_kernels:
        teacher, _ = with_teacher_kernels(teacher)
    if cfg.teacher_fp8:
        check_fp8_device(acc.device)
    # the held-out KL measures against `teacher` itself, only the training targets come from the FP8 copy
    target_teacher = with_fp8_mlps(teacher)[0] if cfg.teacher_fp8 else teacher
    # FSDP shards the module it wraps in place; training a copy leaves the caller's student a plain module
    # (on the CPU until the end) into which the trained full weights are gathered
    trained = copy.deepcopy(student.to("cpu")) if fsdp else student
    wrapper = DistillLoss(trained, mse_layers, cfg.kl_weight, cfg.mse_weight, cfg.kl_chunk, cfg.temperature,
                          compiled=cfg.compile, local=cfg.local, fused_kl=cfg.fused_kl,
                          projections_as_one=cfg.projections_as_one, kl_kernel=cfg.kl_kernel,
                          mse=mse, kl_top1=cfg.kl_top1, kl_focus=cfg.kl_focus,
                          residual_dtype=torch.bfloat16 if cfg.residual_bf16 and not cfg.local else None)
    if cfg.compile:
        compile_layers(trained, local=cfg.local)
    opt = torch.optim.AdamW(param_groups(trained, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                            fused=True if cfg.fused_adam else None)
    wrapper, opt = acc.prepare(wrapper, opt)
    # the optimizer's parameters (FSDP: the shards) in the model's own order, not the groups': accelerate's FSDP
    # clipping compares this list with model.parameters() element by element, and two lr groups (`jet_lr`) put
    # the JetBlocks first, where a comparison of unequal tensors fails
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    params = [p for p in wrapper.parameters() if id(p) in in_opt]
    assert len(params) == len(in_opt), "an optimized parameter is not the prepared model's"
    return _Training(acc, wrapper, opt, params, teacher, mse_layers, cfg.batch_size // per_step, fsdp, n_train,
                     fp32_frozen, target_teacher)


def _restore(acc, ckpt_dir: Path | None, identity: dict) -> tuple[int, list, float | None, int | None]:
    """(start step, history, eval_kl_before, the step count a time budget chose or None) of the newest
    checkpoint, after checking it is this run's."""
    found = _checkpoints(ckpt_dir) if ckpt_dir is not None else []
    if not found:
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {ckpt_dir}; start without resume")
    last = found[-1]
    prog = json.loads((last / "progress.json").read_text())
    diff = describe_difference(prog.get("identity"), identity)
    if diff:
        raise ValueError(f"checkpoint {last} belongs to a different run: {diff}; resume with the original settings "
                         "or start a fresh run in another checkpoint folder")
    try:
        acc.load_state(str(last))
    except Exception as err:  # truncated or partly deleted files: name the checkpoint, not a pickle offset
        raise ValueError(f"checkpoint {last} cannot be loaded ({type(err).__name__}: {err}); delete it to "
                         "resume from the one before") from err
    acc.print(f"resumed from {last} at step {prog['step']}")
    return prog["step"], prog["history"], prog.get("eval_kl_before"), prog.get("chosen_steps")


def _train_steps(run: _Training, data, cfg: DistillConfig, start: int, history: list, ckpt_dir: Path | None,
                 identity: dict, kl_before, stop, speed: dict, deadline: float | None = None,
                 chosen: int | None = None) -> tuple[int | None, DistillConfig]:
    """Optimizer steps start..cfg.steps, appending to `history`; (the step it stopped at when `stop` says so, else
    None; `cfg` with the steps it ran to). With a `deadline` (perf_counter seconds) `cfg.steps` is a cap, and
    `StepBudget` sets the count from the stage's own step time; `chosen`: the count a resumed budgeted stage's
    checkpoint held (then `cfg.steps`), written into every checkpoint again.

    Batches come from `data` one step ahead (`prefetch.py`); losses stay on the device in the step meter and are
    read back (one sync) every `log_every` steps, before a checkpoint, on the last step and when `stop` says
    so, each time before that step's optimizer update, and checked for NaN / Inf then.
    """
    from tqdm.auto import tqdm

    from .prefetch import Prefetcher
    from .step_trace import StepTrace
    from .throughput import StepMeter, collector_frozen

    acc = run.acc
    bar = tqdm(total=cfg.steps, initial=start, desc=f"distill stage {cfg.stage}", unit="step",
               disable=not acc.is_main_process, dynamic_ncols=True)
    found = _checkpoints(ckpt_dir) if ckpt_dir is not None else []
    last_good = found[-1] if found else None
    meter = StepMeter(cfg.batch_size * data.seq_len, speed["flops_per_token"]["total"], speed["peak_flops"],
                      acc.num_processes)
    if hasattr(data, "start"):  # generated rows' workers, forked here before the batch thread exists
        data.start()
    prefetch = Prefetcher(lambda s: data.batch(s, cfg.batch_size), start, cfg.steps, pin=acc.device.type == "cuda")
    budget = StepBudget(start, cfg.steps, cfg.warmup_steps, deadline) if deadline is not None else None
    trace = (StepTrace(start + cfg.trace_after, cfg.trace_steps, cfg.trace_dir, cfg.stage, acc.device,
                       shapes=cfg.trace_shapes)
             if cfg.trace_steps and acc.is_main_process else None)
    step = start
    # the steps run with everything set up so far out of the collector's reach; on CUDA one full collection first,
    # once a stage (on the CPU that walk would cost the tests more than it frees)
    with collector_frozen(collect=acc.device.type == "cuda") as note:
        if note:
            acc.print(f"stage {cfg.stage}: {note}")
            meter.restart_clock()
        try:
            while step < cfg.steps:
                saving = bool(ckpt_dir is not None and cfg.save_every and (step + 1) % cfg.save_every == 0
                              and step + 1 < cfg.steps)
                stopping = stop is not None and stop(step + 1)  # a pure function of the step: asked before the update
                timing = budget is not None and budget.marks(step + 1)
                read_back = (bool(cfg.log_every) and (step + 1) % cfg.log_every == 0) or saving or stopping \
                    or step + 1 == cfg.steps or timing
                batch = prefetch.get(step)  # [batch_size, L], built on a background thread while the last step ran
                if trace is not None:
                    trace.before(step)
                try:
                    _one_step(run, batch, cfg, step, meter,
                              (lambda: _log_flush(meter, history, acc, bar, cfg, last_good)) if read_back else None)
                except torch.OutOfMemoryError as err:
                    raise _out_of_memory(err, cfg, step, data.seq_len, acc.device, last_good) from err
                bar.update(1)
                # the trace's own seconds stay in its log interval and in the stage's budget: it spends them
                if trace is not None and (path := trace.after(step)) is not None:
                    acc.print(f"stage {cfg.stage}: steps {trace.first + 1}-{trace.last + 1} traced into {path} "
                              f"({trace.seconds:.1f} s with the profiler's start and its table)")
                if read_back and budget is not None and \
                        (count := budget.read_back(step + 1, time.perf_counter(), acc)) is not None:
                    acc.print(f"stage {cfg.stage}: {budget.seconds_per_step * 1e3:.0f} ms a step since step "
                              f"{budget.first}; {count} steps fit the {cfg.time_budget_s:.0f} s budget "
                              f"(cap {budget.cap})")
                    cfg = replace(cfg, steps=count)
                    bar.total = count
                    bar.refresh()
                    saving = saving and step + 1 < count  # a stage ending here: its end writes this step's checkpoint
                if saving:
                    last_good = save_checkpoint(acc, ckpt_dir, step + 1, history, cfg.keep_checkpoints, kl_before,
                                                identity, budget.chosen if budget else chosen)
                    meter.restart_clock()  # writing the checkpoint is not training time
                if stopping:
                    acc.wait_for_everyone()
                    return step + 1, cfg
                step += 1
        finally:
            if trace is not None:
                trace.close()
            prefetch.close()
            if hasattr(data, "close"):  # generated rows' worker processes (`row_workers.py`); restarted if used again
                data.close()
            bar.close()
    return None, cfg


def _one_step(run: _Training, batch: torch.Tensor, cfg: DistillConfig, step: int, meter, read_back) -> None:
    """Forward/backward over this process's micro-batches of `batch` [batch_size, L] (global batch of `step`),
    the losses and gradient norm into `meter` (no sync), `read_back()` if given (the sync and NaN check, before
    anything is applied), then the optimizer step."""
    acc, world = run.acc, run.acc.num_processes
    for group in run.opt.param_groups:
        group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
    loss_sum = torch.zeros(3, device=acc.device)
    teacher_head = run.teacher.lm_head.weight
    # One autocast region for the whole step: autocast keeps each trainable fp32 weight's bf16 cast until its
    # outermost region ends, so the step casts every weight once, not once a micro-step (the same values: weights
    # change only at the optimizer step); `step_weights` does the same for the projections run as one product,
    # whose concatenated weights autocast would not keep. At 2 rows a forward (an 80 GB card's stage 2: 8
    # micro-steps) these casts and concatenations were about 60 ms of a 1,586 ms H100 step. FSDP keeps a region a
    # micro-step: over the step, the caches would hold every layer's gathered weights. The teacher stays outside
    # autocast.
    step_region, micro_region = (nullcontext, acc.autocast) if run.fsdp else (acc.autocast, nullcontext)
    with step_region(), (nullcontext() if run.fsdp else step_weights()):
        for m in range(run.accum):
            # this process's share of the global batch for micro-step m
            lo = (m * world + acc.process_index) * cfg.micro_batch
            x = batch[lo : lo + cfg.micro_batch].to(acc.device, non_blocking=True)
            with torch.autocast(acc.device.type, enabled=False):
                t_hidden, t_attn, t_in = teacher_targets(run.target_teacher, x, run.mse_layers, inputs=cfg.local,
                                                         final=not cfg.local)
            # DDP: all-reduce once per step. FSDP reduce-scatters every micro-step instead, because skipping
            # it would keep full unsharded gradients on every device, the memory FSDP is there to save
            sync = nullcontext() if run.fsdp or m == run.accum - 1 else acc.no_sync(run.wrapper)
            with sync, micro_region():
                loss, kl, mse = run.wrapper(x, t_hidden, teacher_head, t_attn, t_in)
                acc.backward(loss / run.accum)
            loss_sum += torch.stack([loss.detach().float(), kl.float(), mse.float()]) / run.accum
    norm = acc.clip_grad_norm_(run.params, cfg.grad_clip) if cfg.grad_clip > 0 else None
    if norm is not None:
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a replicated DTensor
        loss_sum = torch.cat([loss_sum, norm.detach().float().reshape(1).to(loss_sum.device)])
    meter.add(step + 1, lr_at(step, cfg), loss_sum)  # stays on the device: no sync here
    if read_back is not None:
        read_back()
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)


def _finish(run: _Training, student, cfg: DistillConfig):
    """The trained student as a plain module on the device (FSDP: gathered into the caller's `student`)."""
    acc = run.acc
    if run.fsdp:
        full = _gather_full_state(run.wrapper)
        run.wrapper = run.opt = run.params = None  # drop the shards and Adam state before the full model moves in
        acc.free_memory()
        student.load_state_dict(full)
        unwrapped = student.to(acc.device)
    else:
        unwrapped = acc.unwrap_model(run.wrapper).student
    if cfg.gradient_checkpointing:
        checkpointing_disable(unwrapped)
    unwrapped.requires_grad_(True)
    return unwrapped


def kept_in_fp32(model, name: str) -> bool:
    """Whether parameter `name` is one the model's class keeps in fp32 whatever its dtype (`A_log`, `dt_bias`:
    `_keep_in_fp32_modules_strict`, which `from_pretrained` honours and `Module.to` does not)."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    return bool(keep) and name.endswith(keep)


def frozen_to_bf16(model) -> dict:
    """Cast `model`'s frozen floating parameters to bf16 in place (those its class keeps in fp32 excepted);
    returns {name: exact fp32 value} for `restore_fp32`."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dtype == torch.float32 and not kept_in_fp32(model, name):
            out[name] = p.data
            p.data = p.data.to(torch.bfloat16)
    return out


def restore_fp32(model, fp32: dict) -> None:
    """Put back the fp32 values `frozen_to_bf16` kept, on each parameter's current device."""
    for name, value in fp32.items():
        p = model.get_parameter(name)
        p.data = value.to(p.device)


def compile_layers(model, local: bool = False) -> None:
    """torch.compile every decoder layer in place (`nn.Module.compile`: the module keeps its parameters and
    state-dict names). Per layer rather than the whole model: one layer's graph serves every layer of its type,
    and the JetBlock's Triton kernels break the graph only inside their own layers. With `local` (attention
    transfer) the JetBlocks run on their own, outside their decoder layers, so each layer's `self_attn` is
    compiled instead: the elementwise glue around the kernels (activations, norms, gates) is most of what a
    transfer step spends outside them."""
    for layer in model.model.layers:
        (layer.self_attn if local else layer).compile(dynamic=False)


def _speed_info(data, student, teacher, cfg: DistillConfig, acc, fp8: int = 0) -> dict:
    """FLOPs per token of this stage's trainable set and the device's peak (the step meter's MFU), logged; `fp8`:
    how many of the target teacher's projections run in FP8 (the FLOPs count them as any other)."""
    from .throughput import flops_per_token, peak_flops

    fpt = flops_per_token(student, teacher, data.seq_len, local=cfg.local)
    peak, peak_note = peak_flops(acc.device, cfg.mixed_precision == "bf16", cfg.peak_tflops)
    acc.print(f"stage {cfg.stage}: {fpt['total'] / 1e9:.3g} GFLOP per token (student {fpt['student'] / 1e9:.3g}, "
              f"teacher {fpt['teacher'] / 1e9:.3g}); MFU against {peak_note}; projections as one product: "
              f"{'on' if cfg.projections_as_one else 'off'}, KL: {'Triton kernel' if cfg.kl_kernel else 'PyTorch'}"
              f"{' (fused)' if cfg.fused_kl else ' (reference)'}"
              + (f" to the teacher with {cfg.kl_top1:g} of its mass on its first choice" if cfg.kl_top1 else "")
              + (f", each token's KL weighed by 1 + {cfg.kl_focus:g} (1 - the teacher's top probability)"
                 if cfg.kl_focus else "")
              + (f", attention MSE: {'Triton kernel' if cfg.mse_kernel else 'PyTorch'}" if cfg.mse_weight > 0 else "")
              + f", AdamW: {'fused' if cfg.fused_adam else 'default'}, teacher: "
              f"{sum(isinstance(m, KernelRMSNorm) for m in teacher.modules())} RMSNorms on ops.rmsnorm, "
              f"{sum(isinstance(m, KernelMLP) for m in teacher.modules())} MLPs on ops.swiglu, "
              f"{teacher_rope_count(teacher)} attentions' rotary on ops.rope"
              + (f", {fp8} MLP projections in FP8 for the targets (MFU still against the bf16 peak)" if fp8 else ""))
    return {"flops_per_token": fpt, "peak_flops": peak, "peak_note": peak_note}


def _log_flush(meter, history: list, acc, bar, cfg: DistillConfig, last_good) -> None:
    """Read the pending steps' losses back (one sync, averaged over processes), stop on a non-finite one, log the
    last one. Called before the newest pending step's optimizer update."""
    recs = meter.flush(lambda t: acc.reduce(t, reduction="mean"), cfg.stage)
    for r in recs:
        bad = [(k, r[k]) for k in ("loss", "grad_norm") if k in r and not math.isfinite(r[k])]
        bad = bad or [(k, r[k]) for k in ("kl", "mse") if not math.isfinite(r[k])]
        if bad:
            what, val = bad[0]
            what = "gradient norm" if what == "grad_norm" else what
            now = recs[-1]["step"]
            how = "stopped before applying it" if r["step"] == now else (
                f"stopped at step {now} before applying that step (losses are read back every log_every = "
                f"{cfg.log_every} steps); nothing since step {r['step']} was saved")
            raise NonFiniteLossError(f"stage {cfg.stage}: the {what} became {val} at step {r['step']}; {how}. "
                                     f"{_last_good(last_good)}")
    history.extend(recs)
    r = recs[-1]
    mfu = f" MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
    # the last step's gradient norm before clipping: whether the clip, the one part of AdamW's step that sees the
    # loss's scale, engages (a weighted KL, `kl_focus`, raises that scale)
    grad = "" if "grad_norm" not in r else f" grad norm {r['grad_norm']:.3g}" + (
        f" (clipped to {cfg.grad_clip:g})" if r["grad_norm"] > cfg.grad_clip else "")
    bar.set_postfix(loss=f"{r['loss']:.4f}", kl=f"{r['kl']:.4f}", tok_s=f"{r['tok_per_s']:.0f}")
    if acc.is_main_process and cfg.log_every:
        bar.write(f"step {r['step']}/{cfg.steps} loss {r['loss']:.4f} kl {r['kl']:.4f} nats/token mse {r['mse']:.4f} "
                  f"lr {r['lr']:.2e}{grad} {r['ms_per_step']:.0f} ms/step {r['tok_per_s']:,.0f} tok/s{mfu} "
                  f"gc {r['gc_ms_per_step']:.1f} ms/step ({r['gc_full']} full)"
                  # only where it happened: a steady stage should have neither (the CPU has no such allocator)
                  + (f" allocator {r['alloc_retries']} retries, {r['device_mallocs']} cudaMalloc"
                     if r.get("alloc_retries") or r.get("device_mallocs") else ""))


def save_checkpoint(acc, ckpt_dir: Path, step: int, history: list, keep: int, eval_kl_before=None,
                    identity: dict | None = None, chosen_steps: int | None = None) -> Path:
    """accelerate state + progress.json (step, history, run identity, the step count a time budget chose) into
    step_{step}, via a temporary name."""
    final = ckpt_dir / f"step_{step}"
    tmp = ckpt_dir / f".tmp_step_{step}"
    if acc.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()  # every process writes its own files (RNG state; FSDP: its shards) before the rename
    if acc.is_main_process:
        (tmp / "progress.json").write_text(json.dumps({"step": step, "history": history, "chosen_steps": chosen_steps,
                                                       "eval_kl_before": eval_kl_before, "identity": identity}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def plot_history(history: list[dict], path: str | Path, title: str = "distillation") -> None:
    """Loss / KL / MSE against step, log-scale y, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for key in ("loss", "kl", "mse"):
        vals = [h[key] if h[key] > 0 else float("nan") for h in history]  # a term a stage does not use: gap
        if any(v == v for v in vals):
            ax.plot(steps, vals, label=key)
    for a, b in zip(history, history[1:]):
        if a.get("stage") != b.get("stage"):
            ax.axvline(a["step"] + 0.5, color="grey", ls="--", lw=1)
            ax.text(a["step"] + 1, ax.get_ylim()[1], f" stage {b.get('stage')}", va="top", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats/token (kl), relative (mse)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
