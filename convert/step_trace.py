"""A few optimizer steps of a running stage under torch.profiler, written as each kernel's time a step, so a run's own
step can be set beside a random-weight profile of the same step (`benchmarks/profile_distill.py`, whose record keeps
the same table): on 2026-12-07 an H100 run's stage-1 step took 579 ms against its profile's 537 at the same clocks
and power, and only the run's own kernels can say where the 43 ms go.

    DistillConfig(trace_steps=2, trace_after=50, trace_dir="out/trace")   # steps 51-52 of the stage

The traced steps are the stage's own (same batches, same updates); the card is synchronised once before them and
once after, so their wall clock is theirs alone. The profiler's start and its table cost seconds, which stay in the
stage's step log and its time budget (a budgeted stage fits fewer steps). A trace that fails warns and is dropped:
the run it watches goes on. Writes TRACE_DIR/stage{N}_steps{a}-{b}.json
(and .txt, the profiler's table).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import torch


FAMILIES = [  # first match wins; patterns over lower-cased kernel names
    # our kernels (jet_nemotron/*_triton*.py): _fwd_h/_fwd_o/_bwd_*/_wu/_prepare (gated delta rule), _conv_*
    # (dynamic convolution), _norm_* (gated RMSNorm), _recurrent
    ("jetblock triton", r"_fwd_h_kernel|_fwd_o_kernel|_bwd_chunk_kernel|_bwd_dh_kernel|_bwd_dv_local_kernel|"
                        r"_wu_kernel|_prepare_kernel|_conv_\w*kernel|_norm_\w*kernel|_recurrent_kernel"),
    ("rmsnorm", r"_rmsnorm_\w*kernel"),  # the decoder's norms while training (rmsnorm_triton.py)
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|matmul|sm90_|cublas|ampere_|splitk|aten::(add)?mm$|aten::bmm|aten::linear"),
    ("kl / softmax", r"softmax|logsumexp|kl_div|log_softmax|cross_entropy|nll"),
    # the MLP's silu(gate) * up as ours (swiglu_triton.py), or PyTorch's silu kernels (the JetBlocks' too); before
    # 2026-12-04 evening these fell under "elementwise / reduce"
    ("silu / swiglu", r"_swiglu_\w*kernel|silu"),
    ("optimizer", r"adam|foreach|multi_tensor|fused_adam"),
    ("copy / cast", r"copy|cast|convert|to_copy|memcpy|memset|fill"),
    ("elementwise / reduce", r"elementwise|vectorized|reduce|triton_|unrolled|index|cat|where"),
]


def family(name: str) -> str:
    low = name.lower()
    return next((f for f, pat in FAMILIES if re.search(pat, low)), "other")


def by_family(kernels: list[dict]) -> dict[str, float]:
    """ms a step by family, most first, from `kernel_times`' kernels (a profile's or a run's trace): the families
    come from kernel names, a heuristic."""
    out: dict[str, float] = {}
    for k in kernels:
        f = family(k["name"])
        out[f] = out.get(f, 0.0) + k["ms_per_step"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def kernel_times(events, steps: int) -> dict:
    """{"time_is", "busy_ms_per_step", "kernels": [{"name", "ms_per_step", "calls_per_step"}]} from a finished
    torch.profiler run's `key_averages()` over `steps` steps (averaging a step's tens of thousands of events takes
    seconds: the caller does it once, for its table too): each kernel's own device time (CPU self time where nothing
    ran on a device), most first, every kernel (a few hundred), so families sum to busy, the sum over all of them.
    The profiler's step spans ("ProfilerStep#N") hold their kernels' time again and are left out."""
    on_device = [e for e in events if getattr(e, "device_type", None) is not None
                 and str(e.device_type).endswith("CUDA")]
    rows = [e for e in (on_device or events) if not e.key.startswith("ProfilerStep")]
    attr = "self_device_time_total" if on_device else "self_cpu_time_total"
    kernels = sorted(({"name": e.key, "ms_per_step": getattr(e, attr, 0.0) / 1e3 / steps,
                       "calls_per_step": e.count / steps} for e in rows), key=lambda k: -k["ms_per_step"])
    return {"time_is": "device" if on_device else "cpu (self time)",
            "busy_ms_per_step": sum(k["ms_per_step"] for k in kernels), "kernels": kernels}


# the glue around the matrix products: copies and casts, and the elementwise ops that the first H200 profile
# found as long as the products themselves; and concatenations (40 ms of an H100 stage-2 step, 2026-12-06; the
# profiler records no shapes for a list input, so their entry gives time and calls only)
GLUE_OPS = ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone", "aten::mul", "aten::add",
            "aten::add_", "aten::sub", "aten::div", "aten::mul_", "aten::exp", "aten::sigmoid", "aten::silu",
            "aten::cat")


def glue_by_shape(prof, steps: int, top: int = 40) -> list[dict]:
    """The glue ops of a finished torch.profiler run that recorded shapes, grouped by input shapes, most device time
    first: [{op, shapes, ms_per_step, calls_per_step}] (CPU time where there is no device). `aten::to` and
    `aten::contiguous` include the `copy_` they call, so a shape can show under both."""
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in GLUE_OPS:
            ms = (getattr(e, "device_time_total", 0.0) or getattr(e, "cpu_time_total", 0.0)) / 1e3 / steps
            rows.append({"op": e.key, "shapes": str(e.input_shapes), "ms_per_step": ms,
                         "calls_per_step": e.count / steps})
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:top]


class StepTrace:
    """Traces the loop's steps first .. first + steps - 1 (0-based, as the loop counts them): `before(step)` ahead of
    a step's work, `after(step)` once its update is applied, `close()` when the loop ends. A stage that ends before
    the window's last step writes nothing. `shapes`: the profiler records input shapes too, and the record holds
    the glue ops by shape (`glue_by_shape`; seconds more a trace, for `benchmarks/profile_distill.py`)."""

    def __init__(self, first: int, steps: int, out_dir: str | Path, stage: int, device: torch.device,
                 shapes: bool = False):
        self.first, self.last, self.stage, self.device = first, first + steps - 1, stage, device
        self.shapes = shapes
        self.out_dir = Path(out_dir)
        self.prof = None
        self.t0 = self.t_start = 0.0
        self.seconds = 0.0  # the trace's whole cost: the profiler's start, the steps, their table

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _failed(self, what: str, err: Exception) -> None:
        # a diagnostic that fails must not end the run it watches (a 15-minute lease's distillation): said loudly,
        # the trace dropped, training goes on
        warnings.warn(f"stage {self.stage}: the trace of steps {self.first + 1}-{self.last + 1} failed {what} "
                      f"({type(err).__name__}: {err}); nothing written, training goes on", RuntimeWarning)
        self.prof = None

    def before(self, step: int) -> None:
        if step != self.first:
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.t_start = time.perf_counter()
        self._sync()  # the steps before leave the card first: their kernels are not the traced steps'
        try:
            self.prof = profile(activities=acts, record_shapes=self.shapes)
            self.prof.__enter__()
        except Exception as err:  # noqa: BLE001 - e.g. another profiler holding the card's counters
            self._failed("to start", err)
        self.t0 = time.perf_counter()

    def after(self, step: int) -> Path | None:
        """The record's path once the window's last step is done, else None."""
        if step != self.last or self.prof is None:
            return None
        self._sync()
        wall = time.perf_counter() - self.t0
        try:
            return self._write(wall)
        except Exception as err:  # noqa: BLE001 - see _failed
            self._failed("to write its record", err)
            return None

    def _write(self, wall: float) -> Path:
        self.prof.__exit__(None, None, None)
        n = self.last - self.first + 1
        events = self.prof.key_averages()
        rec = {"stage": self.stage, "steps": [self.first + 1, self.last + 1], "wall_ms_per_step": wall * 1e3 / n,
               **kernel_times(events, n)}
        rec["busy_fraction"] = rec["busy_ms_per_step"] / rec["wall_ms_per_step"]
        if self.shapes:
            rec["glue_by_shape"] = glue_by_shape(self.prof, n)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"stage{self.stage}_steps{self.first + 1}-{self.last + 1}.json"
        path.write_text(json.dumps(rec, indent=1))
        sort = "self_cuda_time_total" if rec["time_is"] == "device" else "self_cpu_time_total"
        path.with_suffix(".txt").write_text(events.table(sort_by=sort, row_limit=40) + "\n")
        self.prof = None
        self.seconds = time.perf_counter() - self.t_start
        return path

    def close(self) -> None:
        """Ends a trace the stage stopped inside (a budget or `stop` ending it first), writing nothing."""
        if self.prof is not None:
            prof, self.prof = self.prof, None
            prof.__exit__(None, None, None)
