"""Distillation throughput: model FLOPs per token, the device's peak, and a step meter without per-step syncs.

Model FLOPs per training token (what MFU counts; recomputation from checkpointing is not counted):
    student  2 N_s             forward through every matmul weight (frozen ones too; embeddings are lookups)
           + 2 N_act           backward to the activations, through the layers at or above the lowest one that
                               trains (and the head)
           + 2 N_train         backward to the trainable weights
           + A_s (x3 where activations flow back, else x1)   token mixing, below
    teacher  2 N_t + A_t       forward only; under attention transfer (no KL) without the head, and only up to
                               the attention of the last layer that trains (the forward stops there)
N counts 2-D weights of the decoder layers plus the output head ([V, d], tied or not: the KL multiplies by it
in both models). Token mixing per token and layer, forward: full attention 4 H hd c with c the mean causal
context (L + 1) / 2; sliding attention the same with c the mean of min(i + 1, W); JetBlock 6 H dk dv (the
recurrent form: read the state with k, write it, read it with q; the chunked kernel does a little more).
MFU = tokens/s x FLOPs/token / (peak x devices). The peak is the dense bf16 tensor-core spec of the card
(H100 / H200 SXM: 989.4 TFLOP/s, A100: 312), or `peak_tflops` when given; on other devices or without bf16,
MFU is left out unless `peak_tflops` says what to divide by.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "GH200": 989.4, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.05, "B200": 2250.0}


def _matmul_params(model, stop: int | None = None) -> tuple[dict[int, tuple[int, int]], int, int]:
    """({layer: (matmul params, trainable ones)}, head params, trainable head params). With `stop`, only the weights
    a forward that ends after layer `stop`'s attention runs."""
    per: dict[int, list[int]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if p.dim() == 2 and len(parts) > 3 and parts[1] == "layers":
            i = int(parts[2])
            if stop is not None and (i > stop or (i == stop and parts[3] != "self_attn")):
                continue
            e = per.setdefault(i, [0, 0])
            e[0] += p.numel()
            e[1] += p.numel() if p.requires_grad else 0
    head = model.lm_head.weight
    return {k: (a, b) for k, (a, b) in per.items()}, head.numel(), head.numel() if head.requires_grad else 0


def _mixing_flops(config, seq_len: int) -> list[float]:
    """Forward token-mixing FLOPs per token of each layer (see the module docstring)."""
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    H = config.num_attention_heads
    out = []
    for t in types:
        if t == "linear_attention":
            d = config.jet_dims()
            out.append(6.0 * d.num_heads * d.head_k_dim * d.head_v_dim)
        else:
            w = getattr(config, "sliding_window", None) if t == "sliding_attention" else None
            c = (seq_len + 1) / 2 if not w else sum(min(i + 1, w) for i in range(seq_len)) / seq_len
            out.append(4.0 * H * hd * c)
    return out


def flops_per_token(student, teacher, seq_len: int, local: bool = False) -> dict[str, float]:
    """Model FLOPs per trained token, split {"student", "teacher", "total"}; reads requires_grad as set now.
    `local` (attention transfer): the student runs only its trainable token mixers, forward and backward, each
    on the teacher's input (6 FLOPs per weight, 3x the mixing)."""
    per, head, head_train = _matmul_params(student)
    mix = _mixing_flops(student.config, seq_len)
    t_mix = _mixing_flops(teacher.config, seq_len)
    if local:
        # no KL, so no head; the forward ends at the attention of the last layer that trains
        last = max((i for i, (_, tr) in per.items() if tr > 0), default=len(t_mix) - 1)
        t = 2 * sum(a for a, _ in _matmul_params(teacher, stop=last)[0].values()) + sum(t_mix[: last + 1])
        s = sum(6 * tr + 3 * mix[i] for i, (_, tr) in per.items() if tr > 0)
        return {"student": float(s), "teacher": float(t), "total": float(s + t)}
    t_per, t_head, _ = _matmul_params(teacher)
    t = 2 * (sum(a for a, _ in t_per.values()) + t_head) + sum(t_mix)
    trains = [i for i, (_, t) in per.items() if t > 0]
    lowest = min(trains) if trains else (len(mix) if head_train == 0 else len(mix) - 1)
    n_all = sum(a for a, _ in per.values()) + head
    n_act = sum(a for i, (a, _) in per.items() if i >= lowest) + head
    n_train = sum(t for _, t in per.values()) + head_train
    s = 2 * n_all + 2 * n_act + 2 * n_train + sum(m * (3 if i >= lowest else 1) for i, m in enumerate(mix))
    return {"student": float(s), "teacher": float(t), "total": float(s + t)}


def peak_flops(device, bf16: bool, peak_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, what it is) for MFU; (None, reason) when unknown."""
    if peak_tflops:
        return peak_tflops * 1e12, f"{peak_tflops:g} TFLOP/s (given)"
    device = torch.device(device)
    if device.type != "cuda":
        return None, f"no peak known for {device.type}"
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_BF16_TFLOPS.items():
        if key in name.replace(" ", ""):
            if not bf16:
                return None, f"{name}: MFU is quoted against the bf16 peak; this run is not bf16"
            return tf * 1e12, f"{name} bf16 dense spec {tf:g} TFLOP/s"
    return None, f"no peak known for {name}; pass peak_tflops"


_GC = {"ms": 0.0, "full": 0, "t0": None}  # the process's time in Python's cyclic collector, from gc.callbacks


def _gc_clock(phase: str, info: dict) -> None:
    if phase == "start":
        _GC["t0"] = time.perf_counter()
    elif _GC["t0"] is not None:
        _GC["ms"] += 1e3 * (time.perf_counter() - _GC["t0"])
        _GC["full"] += info.get("generation") == 2
        _GC["t0"] = None


def gc_clock() -> tuple[float, int]:
    """(ms spent in garbage collections, full collections) since this process first asked; the collector pauses the
    thread that launches the device's kernels, and a full collection walks every tracked object."""
    if _gc_clock not in gc.callbacks:
        gc.callbacks.append(_gc_clock)
    return _GC["ms"], _GC["full"]


def alloc_clock() -> tuple[int, int]:
    """(allocator retries, cudaMalloc calls) of the current CUDA device so far; (0, 0) before CUDA is in use. A
    retry frees the caching allocator's free blocks and mallocs again, and a cudaFree synchronises the device, so
    either in a steady stage means the cache does not hold the step's memory: the host waits where it would run
    ahead of the device."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return 0, 0
    stats = torch.cuda.memory_stats()
    return stats.get("num_alloc_retries", 0), stats.get("num_device_alloc", 0)


@contextmanager
def collector_frozen(collect: bool) -> Iterator[str | None]:
    """Everything Python's cyclic collector tracks when the block starts is frozen out of its reach until the block
    ends (stopped or not): a full collection walks every tracked object (220 ms for the 412,000 of a stage with the
    real 1.5B teacher, on a CI core) while the thread that launches the kernels waits. With `collect`, one full
    collection first, so that frozen garbage does not keep what it holds (an earlier stage's optimizer state in a
    reference cycle, say) alive through the block; yields a line saying what it cost, else None. A caller that froze
    objects itself manages the collector: the unfreeze at the end would thaw its objects too, so then nothing here
    touches it and the block gets None. Objects made inside the block are still collected (the H200 run of
    2026-12-06 had one full collection a stage, about 0.3 s of each)."""
    if gc.get_freeze_count():
        yield None
        return
    note = None
    if collect:
        t = time.perf_counter()
        gc.collect()
        note = (f"a full garbage collection took {1e3 * (time.perf_counter() - t):.0f} ms over "
                f"{len(gc.get_objects()):,} objects; they are frozen out of the collector for the steps")
    gc.freeze()
    try:
        yield note
    finally:
        gc.unfreeze()


class StepMeter:
    """Per-step losses stay on the device; `flush` reads all pending ones back with one host sync.

    Timing is per flush interval (the only honest clock on an asynchronous device): tok/s = steps x
    tokens_per_step / interval seconds, MFU from `flops_per_token` and `peak` (FLOP/s of one device, x world).
    Each record also carries the interval's end ("time", Unix seconds), its garbage-collection time a step
    ("gc_ms_per_step"), the full collections in it ("gc_full", the interval's count) and the CUDA caching
    allocator's retries and cudaMalloc calls in it ("alloc_retries", "device_mallocs"; `alloc_clock`).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float | None, world: int = 1):
        self.tokens_per_step, self.fpt, self.peak, self.world = tokens_per_step, flops_per_token, peak, world
        self.pending: list[tuple[int, float, torch.Tensor]] = []
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()
        self.gc0 = gc_clock()
        self.alloc0 = alloc_clock()

    def add(self, step: int, lr: float, losses: torch.Tensor) -> None:
        """Record optimizer step `step` (1-based) with its losses [3] = (loss, kl, mse), a device tensor, or [4]
        with the gradient norm after them."""
        self.pending.append((step, lr, losses))

    def flush(self, reduce=None, stage: int = 1) -> list[dict]:
        """History records of the pending steps (the device sync happens here); `reduce` averages processes."""
        if not self.pending:
            return []
        vals = torch.stack([p[2] for p in self.pending])
        if reduce is not None:
            vals = reduce(vals)
        vals = vals.tolist()  # the sync
        dt = time.perf_counter() - self.t0
        tok_s = len(self.pending) * self.tokens_per_step / dt
        mfu = tok_s * self.fpt / (self.peak * self.world) if self.peak else None
        # "time": when the interval ended (Unix seconds), to line the steps up with samples taken outside the
        # process (the card's clocks, power and utilisation: benchmarks/gpu_by_stage.py)
        now = time.time()
        (gc_ms, full), (gc_ms0, full0) = gc_clock(), self.gc0
        (retries, mallocs), (retries0, mallocs0) = alloc_clock(), self.alloc0
        recs = [{"stage": stage, "step": s, "loss": v[0], "kl": v[1], "mse": v[2], "lr": lr, "tok_per_s": tok_s,
                 "ms_per_step": 1000 * dt / len(self.pending), "mfu": mfu, "time": now,
                 "gc_ms_per_step": (gc_ms - gc_ms0) / len(self.pending), "gc_full": full - full0,
                 "alloc_retries": retries - retries0, "device_mallocs": mallocs - mallocs0,
                 **({"grad_norm": v[3]} if len(v) > 3 else {})}
                for (s, lr, _), v in zip(self.pending, vals)]
        self.pending = []
        self.restart_clock()
        return recs
