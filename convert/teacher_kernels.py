"""The frozen teacher's RMSNorms and MLP activations on the project's kernels while it distils.

Qwen's RMSNorm in eager PyTorch is a chain of elementwise kernels over fp32 copies of the residual stream: cast up,
square, mean, rsqrt, product, cast down, product with the weight. The teacher runs 57 of them a forward (28 layers x
2, and the final norm). In the H200 profile of an attention-transfer step (`benchmarks/results/real_model/
knobs_v2_3min_cut/profile/`, 32,768 tokens a step), those chains took about 40 ms of 684: two [8, 2048, 1536]
products of 114 calls a step (9.1 and 7.6 ms), and 228 of the step's 420 casts of that shape. `ops.rmsnorm` reads x
once and writes y once, with Qwen's rounding (the norm in fp32, rounded to x's dtype before the weight). On a CPU it
is the reference, Qwen's own arithmetic; `JET_NEMOTRON_KERNELS=reference` keeps the reference on CUDA too.

The MLP's `act(gate) * up` is two more passes over [tokens, 8,960] bf16 a layer (silu, then the product): in the
same profile 8.6 and 11.1 ms a step, 56 calls each. `ops.swiglu` with `act_rounded` reads gate and up once and
writes once, with eager bf16's two roundings (silu(gate) rounded before the product); only a silu MLP is swapped.

The rotary embedding of queries and keys (`apply_rotary_pos_emb`: two products, rotate_half's negation and
concatenation, a sum) took about 16 ms of a 589 ms H100 attention-transfer step. Qwen2 / Qwen3's attention calls it
as a function of its modeling module, so `rope_kernels(model)` points that module's name at `ops.rope` (eager's
three roundings, bit for bit) while the teacher's forward runs, and back after: `distill_loss.teacher_targets`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import sys
from collections.abc import Iterator

import torch
from torch import nn

from jet_nemotron.ops import rmsnorm, rope, swiglu

# the norms whose forward is `rmsnorm_ref`'s arithmetic (checked against each class's own forward in the tests)
NORM_CLASSES = ("Qwen2RMSNorm", "Qwen3RMSNorm", "JetNemotronRMSNorm")
# the MLPs whose forward is down(act(gate(x)) * up(x)) (checked likewise)
MLP_CLASSES = ("Qwen2MLP", "Qwen3MLP", "JetNemotronMLP")
# the attentions that call their modeling module's `apply_rotary_pos_emb(q, k, cos, sin)` (checked likewise)
ROPE_CLASSES = ("Qwen2Attention", "Qwen3Attention")


def _rope(q, k, cos, sin, unsqueeze_dim: int = 1):
    """`apply_rotary_pos_emb`'s signature on `ops.rope` (heads on dim 1, the only layout these classes use)."""
    if unsqueeze_dim != 1:
        raise ValueError(f"the teacher's rotary kernel takes heads on dim 1 (unsqueeze_dim=1), got {unsqueeze_dim}")
    return rope(q, k, cos, sin)


def rope_modules(model: nn.Module) -> list[str]:
    """The names of the modeling modules whose `apply_rotary_pos_emb` `model`'s attention layers call
    (`ROPE_CLASSES`)."""
    mods = {type(m).__module__ for m in model.modules() if type(m).__name__ in ROPE_CLASSES}
    return [n for n in sorted(mods) if callable(getattr(sys.modules[n], "apply_rotary_pos_emb", None))]


@contextlib.contextmanager
def rope_kernels(model: nn.Module) -> Iterator[None]:
    """Within: `model`'s Qwen attention layers rotate q and k on `ops.rope`, by pointing their modeling module's
    `apply_rotary_pos_emb` at it; every model of that class in the process does so while inside (the caller runs
    one frozen teacher's forward there). A `with_teacher_kernels` copy names its modules once
    (`teacher_rope_modules`), so its forward of every micro-step does not walk the model for them."""
    names = getattr(model, "teacher_rope_modules", None)
    saved = [(m, m.apply_rotary_pos_emb) for m in map(sys.modules.__getitem__,
                                                      rope_modules(model) if names is None else names)]
    try:
        for m, _ in saved:
            m.apply_rotary_pos_emb = _rope
        yield
    finally:
        for m, fn in saved:
            m.apply_rotary_pos_emb = fn


class KernelRMSNorm(nn.Module):
    """A Qwen RMSNorm's weight and eps, its forward through `ops.rmsnorm`. x [..., D] -> [..., D]."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight = norm.weight  # the same Parameter: nothing is copied
        self.variance_epsilon = norm.variance_epsilon
        # a Jet-Nemotron teacher's own kernel choice (its config's kernel_backend) still holds
        self.backend = getattr(getattr(norm, "config", None), "kernel_backend", None) or "auto"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rmsnorm(hidden_states, self.weight, self.variance_epsilon, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, on ops.rmsnorm"


class KernelMLP(nn.Module):
    """A silu MLP's three projections (the same modules), its activation through `ops.swiglu` with eager bf16's
    rounding. x [..., D] -> [..., D]."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.backend = getattr(mlp.config, "kernel_backend", None) or "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), backend=self.backend, act_rounded=True))


def _swappable_mlp(m: nn.Module) -> bool:
    """A silu MLP of `MLP_CLASSES` that computes its projections apart (a Jet-Nemotron MLP fused for inference
    reads one concatenated buffer instead, and keeps its own forward)."""
    return (type(m).__name__ in MLP_CLASSES and getattr(m.config, "hidden_act", None) == "silu"
            and getattr(m, "fused_sizes", None) is None)


def _rotating(model: nn.Module, modules: list[str]) -> int:
    """How many of `model`'s attentions call the `apply_rotary_pos_emb` of one of `modules` (`rope_modules`)."""
    return sum(type(m).__name__ in ROPE_CLASSES and type(m).__module__ in modules for m in model.modules())


def teacher_rope_count(model: nn.Module) -> int:
    """How many of `model`'s attentions rotate on `ops.rope` in its forward for distillation (0 unless it is a
    `with_teacher_kernels` copy)."""
    return _rotating(model, getattr(model, "teacher_rope_modules", []))


def copy_sharing_tensors(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree whose parameters and buffers are `model`'s own (none copied): modules swapped
    in the copy leave `model` as it is."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def with_teacher_kernels(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """(a copy of `model` whose RMSNorms run `ops.rmsnorm` and whose silu MLPs `ops.swiglu`, {"rmsnorm": how many,
    "swiglu": how many, "rope": how many attentions rotate on `ops.rope` inside `rope_kernels`}). The copy shares
    every parameter and buffer with `model` (no tensor is copied), and `model` itself is left as it is: the caller's
    teacher keeps its eager modules for evaluation. The copy's `teacher_rope_modules` (names; empty when off) tells
    `teacher_targets` to run its forward inside `rope_kernels`."""
    out = copy_sharing_tensors(model)
    # JET_NEMOTRON_TEACHER_ROPE=0 keeps eager's rotary (the GPU session's driver sets it where the kernel's card test
    # failed that very lease; the distillation's log line then says 0 attentions)
    out.teacher_rope_modules = rope_modules(out) if os.environ.get("JET_NEMOTRON_TEACHER_ROPE", "1") != "0" else []
    n = {"rmsnorm": 0, "swiglu": 0, "rope": _rotating(out, out.teacher_rope_modules)}
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ in NORM_CLASSES:
                setattr(parent, name, KernelRMSNorm(child))
                n["rmsnorm"] += 1
            elif _swappable_mlp(child):
                setattr(parent, name, KernelMLP(child))
                n["swiglu"] += 1
    return out, n
