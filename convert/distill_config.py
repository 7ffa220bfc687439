"""What one distillation stage is: `DistillConfig` (steps, batch, learning-rate schedule, losses, trainable set,
precision, the throughput opt-ins), its defaults decided and every field checked by `resolved`, before any model
loads. `TrainSchedule` is the part the search's supernet training shares. `distill.py` runs a stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


# what a stage trains (`distill.set_trainable`): the JetBlocks; the token mixers (JetBlocks and kept attention) with
# the norms, everything but the MLPs, the embeddings and the (tied) head; everything but the MLPs; everything
TRAIN_SETS = ("jet", "mixers", "non-mlp", "all")


@dataclass
class TrainSchedule:
    """Steps, batch and learning-rate schedule (warm-up, then cosine to min_lr_ratio * lr): shared by the
    distillation stages and the search's supernet training."""
    steps: int = 100
    batch_size: int = 8  # sequences per optimizer step (global)
    micro_batch: int = 8  # sequences per forward per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10


@dataclass
class DistillConfig(TrainSchedule):
    stage: int = 1  # 1, 2, or 3 (a long-context stage: stage 2's defaults, usually with a longer seq_len)
    # peak lr of the JetBlocks' own weights (on the same schedule) where the stage also trains pretrained weights:
    # the JetBlocks are new and still far from their attention after stage 1, the copied weights are not. None: lr
    jet_lr: float | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_weight: float = 1.0
    mse_weight: float | None = None  # default: 1.0 in stage 1, 0 in stage 2
    train: str | None = None  # one of TRAIN_SETS; default: "jet" in stage 1, "all" in stage 2
    temperature: float = 1.0
    # the KL's target sharpened towards the teacher's first choice: this share of its mass moved onto the teacher's
    # argmax (`kl.py`), a margin for greedy decoding where the teacher is unsure. 0: the plain KL
    kl_top1: float = 0.0
    # each token's KL weighed by 1 + kl_focus (1 - the teacher's top probability there), towards the tokens where
    # the teacher is unsure (`kl.py`). 0: the plain mean over tokens
    kl_focus: float = 0.0
    kl_chunk: int = 1024  # tokens per KL chunk
    fused_kl: bool = True  # each KL chunk's gradients taken in its forward (kl.py); False: the checkpointed reference
    mixed_precision: str = "no"  # "no" or "bf16"
    gradient_checkpointing: bool = False
    save_every: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_batch: int = 8
    seed: int = 0
    seq_len: int | None = None  # rows of this stage; None: the pipeline's --seq-len
    compile: bool = False  # torch.compile each decoder layer of the student (opt-in: compile time, graph breaks)
    # stage 1 only: each JetBlock learns its attention layer's map from the teacher's own input to the teacher's
    # attention output (normalised MSE), all layers side by side with no end-to-end pass and no KL ("attention
    # transfer"); about half a full stage-1 step's FLOPs, and no layer waits for the ones below it to be right.
    # None: on wherever it applies (stage 1 training the JetBlocks alone with mse_weight > 0), the recipe that won
    # on the H200 (benchmarks/results/real_model/recipe_variants/); FSDP cannot shard it, so there None means off
    local: bool | None = None
    # bf16 runs: the stage's frozen parameters held in bf16 while it trains (as the teacher is), so autocast does not
    # cast them again in every forward and the residual stream runs in bf16 from the frozen embeddings; restored
    # to their exact fp32 values when the stage ends. Opt-in until measured on the GPU
    frozen_bf16: bool = False
    # bf16 runs, end-to-end stages (attention transfer has no residual stream): the student's residual stream in bf16
    # from its embedding's output, as the teacher and a served bf16 student run it, and with it the norms' outputs
    # (`JetNemotronRMSNorm.weight_in_input_dtype`). With trainable fp32 embeddings and norms both are fp32 under
    # autocast, and every layer casts hidden states to bf16 for its products and sums their fp32 gradients back (672
    # casts of [4, 2048, 1536] and the fp32 adds, about 50 ms of a 1,144 ms stage-2 step in an H100 profile,
    # benchmarks/results/profiles/jetblock_kernels_h100/). Changes the arithmetic (each residual add and norm output
    # rounds to bf16). Off by default; `--recipe 15min` turns it on since run o (H100, 2026-12-07: the same held-out
    # KL as the fp32 stream's run m, 1,141.7 -> 1,096.8 ms a profiled stage-2 step)
    residual_bf16: bool = False
    # the student's same-input projections (a JetBlock's seven, attention's q/k/v, the MLP's gate/up) run as one
    # product each while training: the input is cast once under autocast and its gradient accumulates in fp32 inside
    # one product (`jet_nemotron.fused_projections.linears_as_one`). None: on in bf16 runs that are not local, where
    # those casts are. With the KL kernel below, a stage-2 step of the real 1.5B on the H200 took 1,538 ms against
    # 1,611-1,657 ms without either, in one process (benchmarks/results/real_model/knobs_3min/). Local attention
    # transfer feeds each JetBlock the bf16 teacher's states, which need neither cast nor gradient, so there the
    # product only adds the weights' and gradients' concatenations: 705 against 684 ms a step on the H200, one lease
    # (benchmarks/results/real_model/knobs_v2_3min_cut/)
    projections_as_one: bool | None = None
    # the fused KL's per-chunk softmax work in one Triton kernel (`kl_rows_triton.py`). None: on on CUDA with the
    # fused KL; True elsewhere is an error (TRITON_INTERPRET=1 excepted)
    kl_kernel: bool | None = None
    # the attention-output loss (normalised MSE) in one Triton kernel each way (`normalised_mse_triton.py`) instead
    # of PyTorch's fp32 copies and chain, about 30 ms of a 684 ms attention-transfer step on the H200. None: on on
    # CUDA; True elsewhere is an error (TRITON_INTERPRET=1 excepted)
    mse_kernel: bool | None = None
    # AdamW's fused kernel (one launch for all parameters) instead of its per-tensor-list default. Its stage-2 step
    # took 98 ms of 1,622 on the H200 (2026-12-04 profile); opt-in until measured there
    fused_adam: bool = False
    # the teacher's RMSNorms on `ops.rmsnorm` and its MLPs' act(gate) * up on `ops.swiglu` (one kernel each on CUDA,
    # the teacher's own rounding; `teacher_kernels.py`) instead of eager PyTorch's chains: about 40 and 20 ms of a
    # 684 ms attention-transfer step in the H200 profile
    teacher_kernels: bool = True
    # the teacher's MLP projections in FP8 (e4m3, a scale a row; `teacher_fp8.py`) for the targets it gives while
    # the stage trains; the held-out KL stays against the teacher as given. Off: on an H100 it made a stage-1 step
    # slower, 639 against 568 ms (the per-token rounding in PyTorch;
    # benchmarks/results/real_model/knobs_v9_fp8_stage1_h100/)
    teacher_fp8: bool = False
    peak_tflops: float | None = None  # MFU's denominator per device; None: the card's bf16 spec (throughput.py)
    # wall-clock seconds for this stage, from the moment `distill` is called: `steps` is then a cap. The stage times
    # its own steps over its warm-up (whose rates do not depend on the total) and sets `steps` to what fits, at most
    # the cap, so a plan need not guess a card's step time (a 15-minute plan made from another run's times left
    # 104 s unused on 2026-12-06). Work after the last step (held-out KL, saving) is the caller's to leave room for.
    # The chosen count is saved with each checkpoint, so a resumed run keeps it
    time_budget_s: float | None = None
    # a diagnostic: `trace_steps` optimizer steps of the stage, after its first `trace_after` (past the warm-up that
    # a time budget is timed on), run under torch.profiler and written to `trace_dir` as each kernel's time a step
    # (`step_trace.py`), to set a run's own step beside a random-weight profile of it. 0: none
    trace_steps: int = 0
    trace_after: int = 50
    trace_dir: str | None = None
    trace_shapes: bool = False  # the trace records input shapes and the glue ops by shape (profile_distill.py's)
    history: list = field(default_factory=list)

    def resolved(self, fsdp: bool = False) -> "DistillConfig":
        """A copy with every None default decided and every field checked (ValueError naming the field). `fsdp`:
        the stage runs under FSDP, which cannot shard attention transfer, so there `local`'s default is off and
        `local=True` is refused. Resolving a resolved config under the same `fsdp` changes nothing."""
        return replace(self)._resolve(fsdp)

    def _resolve(self, fsdp: bool) -> "DistillConfig":
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage}")
        if self.mse_weight is None:
            self.mse_weight = 1.0 if self.stage == 1 else 0.0
        if self.train is None:
            self.train = "jet" if self.stage == 1 else "all"
        if self.train not in TRAIN_SETS:
            raise ValueError(f"train must be one of {', '.join(TRAIN_SETS)}, got {self.train!r}")
        if self.kl_weight <= 0 and self.mse_weight <= 0:
            raise ValueError("kl_weight and mse_weight are both zero: nothing to train on")
        for name in ("steps", "batch_size", "micro_batch", "kl_chunk", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage {self.stage}: {name} must be >= 1, got {getattr(self, name)}")
        if self.trace_steps and not self.trace_dir:
            raise ValueError(f"stage {self.stage}: trace_steps {self.trace_steps} needs a trace_dir to write to")
        for name in ("warmup_steps", "save_every", "log_every", "keep_checkpoints", "weight_decay", "grad_clip",
                     "kl_weight", "mse_weight", "trace_steps", "trace_after"):
            v = getattr(self, name)
            if not v >= 0 or not math.isfinite(v):
                raise ValueError(f"stage {self.stage}: {name} must be >= 0, got {v}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"stage {self.stage}: lr must be a positive number, got {self.lr}")
        if self.jet_lr is not None and not (self.jet_lr > 0 and math.isfinite(self.jet_lr)):
            raise ValueError(f"stage {self.stage}: jet_lr must be a positive number or None, got {self.jet_lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"stage {self.stage}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.temperature > 0:
            raise ValueError(f"stage {self.stage}: temperature must be > 0, got {self.temperature}")
        if not (self.kl_focus >= 0 and math.isfinite(self.kl_focus)):
            raise ValueError(f"stage {self.stage}: kl_focus weighs a token's KL by 1 + kl_focus (1 - the teacher's "
                             f"top probability), a finite number >= 0; got {self.kl_focus}")
        if not (0 <= self.kl_top1 < 1):
            raise ValueError(f"stage {self.stage}: kl_top1 is the share of the KL's target moved onto the teacher's "
                             f"first choice, in [0, 1); got {self.kl_top1}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"stage {self.stage}: seq_len must be >= 2, got {self.seq_len}")
        if self.time_budget_s is not None and not (self.time_budget_s > 0 and math.isfinite(self.time_budget_s)):
            raise ValueError(f"stage {self.stage}: time_budget_s must be a positive number or None, got "
                             f"{self.time_budget_s}")
        if self.peak_tflops is not None and not (self.peak_tflops > 0 and math.isfinite(self.peak_tflops)):
            raise ValueError(f"peak_tflops must be a positive number, got {self.peak_tflops}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.kl_kernel and not self.fused_kl:
            raise ValueError(f"stage {self.stage}: kl_kernel is the fused KL's kernel; it needs fused_kl=True")
        if self.residual_bf16 and self.mixed_precision != "bf16":
            raise ValueError(f"stage {self.stage}: residual_bf16 runs the student's residual stream in bf16 for a bf16 "
                             f"run; it needs mixed_precision 'bf16', got {self.mixed_precision!r}")
        if self.frozen_bf16 and self.mixed_precision != "bf16":
            raise ValueError(f"stage {self.stage}: frozen_bf16 holds frozen weights in bf16 for a bf16 run; it needs "
                             f"mixed_precision 'bf16', got {self.mixed_precision!r}")
        if self.local is None:
            self.local = self.stage == 1 and self.train == "jet" and self.mse_weight > 0 and not fsdp
        elif self.local and fsdp:  # FSDP gathers a decoder layer's weights in its forward, which transfer skips
            raise ValueError("local attention transfer (stage 1 --stage1-local) runs the JetBlocks outside their "
                             "decoder layers, which FSDP cannot shard: leave the flag out or pass --no-stage1-local "
                             "(DistillConfig(local=None / False): an end-to-end stage 1), or run that stage on one "
                             "GPU or under DDP")
        if self.projections_as_one is None:  # after `local`, on which its default depends
            self.projections_as_one = self.mixed_precision == "bf16" and not self.local
        if self.local and (self.stage != 1 or self.train != "jet" or not self.mse_weight > 0):
            raise ValueError(f"local attention transfer trains the JetBlocks alone on the attention MSE: it needs "
                             f"stage 1, train 'jet' and mse_weight > 0 (got stage {self.stage}, train "
                             f"{self.train!r}, mse_weight {self.mse_weight})")
        if self.kl_top1 and (self.local or not self.kl_weight > 0):
            raise ValueError(f"stage {self.stage}: kl_top1 sharpens the KL's target, but this stage has no KL "
                             f"({'attention transfer' if self.local else 'kl_weight 0'})")
        if self.kl_focus and (self.local or not self.kl_weight > 0):
            raise ValueError(f"stage {self.stage}: kl_focus weighs the KL's tokens, but this stage has no KL "
                             f"({'attention transfer' if self.local else 'kl_weight 0'})")
        return self


def fsdp_turns_off_transfer(cfg: DistillConfig, fsdp: bool) -> bool:
    """Whether `cfg` (not yet resolved) would run as attention transfer by default but runs end to end under FSDP:
    the callers say so in one log line."""
    return fsdp and cfg.local is None and cfg.resolved().local
