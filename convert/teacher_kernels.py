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
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from jet_nemotron.ops import rmsnorm, swiglu

# the norms whose forward is `rmsnorm_ref`'s arithmetic (checked against each class's own forward in the tests)
NORM_CLASSES = ("Qwen2RMSNorm", "Qwen3RMSNorm", "JetNemotronRMSNorm")
# the MLPs whose forward is down(act(gate(x)) * up(x)) (checked likewise)
MLP_CLASSES = ("Qwen2MLP", "Qwen3MLP", "JetNemotronMLP")


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


def with_teacher_kernels(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """(a copy of `model` whose RMSNorms run `ops.rmsnorm` and whose silu MLPs `ops.swiglu`, {"rmsnorm": how many,
    "swiglu": how many}). The copy shares every parameter and buffer with `model` (no tensor is copied), and `model`
    itself is left as it is: the caller's teacher keeps its eager modules for evaluation."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    out = copy.deepcopy(model, memo)
    n = {"rmsnorm": 0, "swiglu": 0}
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ in NORM_CLASSES:
                setattr(parent, name, KernelRMSNorm(child))
                n["rmsnorm"] += 1
            elif _swappable_mlp(child):
                setattr(parent, name, KernelMLP(child))
                n["swiglu"] += 1
    return out, n
