"""What a distillation step measures: the teacher's targets (its final hidden states, and the attention outputs and
inputs of the layers that became JetBlocks) and the student's loss against them (`DistillLoss`: the chunked logit KL,
the per-layer attention-output MSE, or in attention transfer each JetBlock alone on the teacher's inputs).

    teacher_targets(teacher, ids [B, L], layers) -> final states [B, L, d] (or None: final=False), attention outputs
                                                    / inputs [B, L, d] each
    DistillLoss(student, ...)(ids, final states, teacher head [V, d], outputs, inputs) -> (loss, kl, mse) scalars
    layer_mse(student, teacher, held-out ids [N, L], layers) -> attention transfer's loss per layer, held out
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

from jet_nemotron.fused_projections import set_projections_as_one

from .kl import chunked_kl
from .teacher_kernels import rope_kernels
from .triton_device import check_triton_device


class _Capture:
    """Forward hooks that record the output of `self_attn` of the given layers (in call order) and, with `inputs`,
    the hidden states it was given (positional or keyword `hidden_states`). With `stop`, the hook of the last layer
    raises `_Captured` once it has recorded: a forward that needs nothing after it ends there."""

    def __init__(self, model, layers: list[int], inputs: bool = False, stop: bool = False):
        self.outputs: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        base = model.model
        self.handles = [base.layers[i].self_attn.register_forward_hook(self._hook, with_kwargs=True)
                        for i in layers]
        self.record_inputs = inputs
        self.stop_after = len(layers) if stop else None

    def _hook(self, module, args, kwargs, output):
        self.outputs.append(output[0] if isinstance(output, tuple) else output)
        if self.record_inputs:
            self.inputs.append(args[0] if args else kwargs["hidden_states"])
        if len(self.outputs) == self.stop_after:
            raise _Captured

    def close(self):
        for h in self.handles:
            h.remove()


class _Captured(Exception):
    """Raised by `_Capture(stop=True)` when its last layer has recorded."""


class DistillLoss(nn.Module):
    """Wraps the student so one DDP forward returns the loss (gradients are then synchronised by DDP).

    forward(input_ids [B, L], teacher_hidden [B, L, d], teacher_head [V, d], teacher_attn list of [B, L, d])
    -> (loss, kl, mse) scalars.
    """

    def __init__(self, student, mse_layers: list[int], kl_weight: float, mse_weight: float, chunk: int,
                 temperature: float, compiled: bool = False, local: bool = False, fused_kl: bool = True,
                 projections_as_one: bool = False, kl_kernel: bool = False, mse: Callable | None = None,
                 kl_top1: float = 0.0, residual_dtype: torch.dtype | None = None, kl_focus: float = 0.0):
        super().__init__()
        self.local, self.fused_kl, self.kl_kernel, self.kl_top1 = local, fused_kl, kl_kernel, kl_top1
        self.kl_focus = kl_focus
        self.mse = mse or normalised_mse  # the attention-output loss: `mse_fn`'s choice
        self.student = student
        # the student's residual stream from its embedding's output cast to it, and its norms' outputs with it
        # (switched off again in `release`)
        self.residual_dtype = residual_dtype
        self._norms_in_input_dtype(residual_dtype is not None)
        # switched off again in `release`: the caller's student must decode without concatenating weights each step
        self.as_one = set_projections_as_one(student) if projections_as_one else []
        # FSDP's transformer-based wrap looks for the layer classes here: one shard unit per decoder layer
        self._no_split_modules = getattr(student, "_no_split_modules", None)
        self.mse_layers, self.kl_weight, self.mse_weight = mse_layers, kl_weight, mse_weight
        self.chunk, self.temperature = chunk, temperature
        # compiled layers guard on their hooks: new hooks every forward would recompile every step, so the
        # capture stays registered for the stage (`release` removes it)
        # (attention transfer calls the JetBlocks itself and needs no capture)
        self.persistent = _Capture(student, mse_layers) if compiled and mse_weight > 0 and not local else None

    def release(self) -> None:
        """Remove the stage's persistent hooks and compiled layers: the caller's student must not keep capturing
        outputs, and evaluates eagerly (nn.Module.compile keeps its compiled forward in `_compiled_call_impl`)."""
        if self.persistent is not None:
            self.persistent.close()
            self.persistent = None
        for layer in self.student.model.layers:
            layer._compiled_call_impl = layer.self_attn._compiled_call_impl = None
        if self.as_one:  # the same modules set_projections_as_one switched on, by the same rule
            set_projections_as_one(self.student, on=False)
        self.as_one = []
        self._norms_in_input_dtype(False)

    def _norms_in_input_dtype(self, on: bool) -> None:
        for m in self.student.modules():
            if hasattr(m, "weight_in_input_dtype"):
                m.weight_in_input_dtype = on

    def forward(self, input_ids, teacher_hidden, teacher_head, teacher_attn=None, teacher_attn_in=None):
        if self.local:
            return self._local(teacher_attn_in, teacher_attn)
        cap = self.persistent
        if cap is not None:
            cap.outputs = []
        elif self.mse_weight > 0:
            cap = _Capture(self.student, self.mse_layers)
        if self.residual_dtype is None:
            given = {"input_ids": input_ids}
        else:
            given = {"inputs_embeds": self.student.model.embed_tokens(input_ids).to(self.residual_dtype)}
        try:
            h = self.student.model(**given, use_cache=False).last_hidden_state
        finally:
            if cap is not None and cap is not self.persistent:
                cap.close()
        zero = h.new_zeros((), dtype=torch.float32)
        kl = chunked_kl(h, self.student.lm_head.weight, teacher_hidden, teacher_head, self.chunk,
                        self.temperature, self.fused_kl, self.kl_kernel, self.kl_top1,
                        focus=self.kl_focus) if self.kl_weight > 0 else zero
        mse = zero
        if cap is not None and cap.outputs:  # a student without JetBlocks has no attention output to match
            terms = [self.mse(s, t) for s, t in zip(cap.outputs, teacher_attn)]
            mse = torch.stack(terms).mean()
        return self.kl_weight * kl + self.mse_weight * mse, kl.detach(), mse.detach()

    def _local(self, inputs: list[torch.Tensor], targets: list[torch.Tensor]):
        """Attention transfer: each JetBlock on the teacher's input to that layer's attention, against its
        output; the layers are independent, so their gradients never cross a layer boundary."""
        mse = transfer_terms(self.student, self.mse_layers, inputs, targets, self.mse).mean()
        return self.mse_weight * mse, mse.new_zeros(()), mse.detach()


def transfer_terms(student, layers: list[int], inputs: list[torch.Tensor], targets: list[torch.Tensor],
                   mse: Callable | None = None) -> torch.Tensor:
    """Attention transfer's loss, one term a layer [len(layers)]: each of `layers`' JetBlock on the teacher's input
    to that layer's attention [B, L, d], against the teacher's output [B, L, d], by `mse` (`normalised_mse`)."""
    blocks, mse = student.model.layers, mse or normalised_mse
    return torch.stack([mse(blocks[i].self_attn(x)[0], t) for i, x, t in zip(layers, inputs, targets)])


def normalised_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean((s - t)^2) / mean(t^2), in fp32: the attention-output loss of stage 1 and of the search's supernet.
    s, t [...] of one shape -> a scalar. The reference of `normalised_mse_triton.normalised_mse_triton`."""
    return ((s.float() - t.float()) ** 2).mean() / (t.float() ** 2).mean().clamp(min=1e-8)


@torch.no_grad()
def layer_mse(student, teacher, rows: torch.Tensor, layers: list[int], batch: int = 8) -> list[float]:
    """Attention transfer's objective on held-out rows [N, L], per layer: the `normalised_mse` of each of `layers`'
    JetBlock on the teacher's input to that layer, against the teacher's attention output, taken per batch of rows
    and averaged weighted by rows (in `layers`' order; one batch gives the training loss's terms on those rows).
    Which JetBlocks stage 1 left furthest from their teacher layer, beside the one number the held-out KL gives."""
    student.eval()
    device = next(student.parameters()).device
    totals, n = torch.zeros(len(layers), device=device), 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i : i + batch].to(device)
        _, targets, inputs = teacher_targets(teacher, x, layers, inputs=True, final=False)
        totals += transfer_terms(student, layers, inputs, targets) * x.shape[0]
        n += x.shape[0]
    return (totals / n).tolist()


def mse_fn(kernel: bool, device):
    """`normalised_mse`, or with `kernel` its Triton twin: on CUDA, or on the CPU in Triton's interpreter (tests).
    Asked for where neither holds, it is an error, not a quiet fallback to the reference."""
    if not kernel:
        return normalised_mse
    check_triton_device("the Triton attention-MSE kernel (DistillConfig.mse_kernel)", device)
    from .normalised_mse_triton import normalised_mse_triton

    return normalised_mse_triton


@torch.no_grad()
def teacher_on(teacher: nn.Module, device, dtype: torch.dtype | None = None) -> nn.Module:
    """`teacher` in eval mode, frozen, on `device` with floating parameters in `dtype` (None: their own).

    Returns the teacher itself when it is already there, else a copy whose parameters are cast one at a time
    straight onto the device, so the caller's model keeps its weights: casting it in place rounded them to
    bf16 for good, and the teacher perplexity measured after a bf16 run was then a bf16 model's. Buffers
    (rotary frequencies) keep their dtype.
    """
    teacher.eval().requires_grad_(False)
    device = torch.device(device)
    params = list(teacher.parameters())

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, dtype if dtype is not None and t.is_floating_point() else t.dtype)

    if all(p.device == device and cast(p) is p for p in params):
        return teacher
    # deepcopy takes the cast tensors from the memo instead of copying the originals (tied weights stay tied)
    memo = {id(p): nn.Parameter(cast(p.detach()), requires_grad=False) for p in params}
    memo.update({id(b): b.detach().to(device) for b in teacher.buffers()})
    return copy.deepcopy(teacher, memo)


@torch.no_grad()
def teacher_targets(teacher, input_ids, mse_layers: list[int], inputs: bool = False, final: bool = True):
    """(teacher's final hidden states [B, L, d] (None without `final`), the attention outputs of `mse_layers`, and
    with `inputs` the hidden states each of those attention layers was given, else None), no grad.

    Without `final` (attention transfer, which has no KL) the forward ends at the last of `mse_layers`' attention:
    the layers after it, the rest of that layer and the final norm are not run. The forward runs under no_grad, not
    inference mode: autograd refuses to save inference tensors, which the student's loss saves (the MSE's
    normaliser, the checkpointed KL chunks), so each output would need a copy (under inference mode they were
    cloned: 3.4 ms of a 567 ms attention-transfer step on an H100).
    """
    if not final and not mse_layers:
        raise ValueError("teacher_targets: final=False needs mse_layers, the forward's only outputs")
    cap = _Capture(teacher, mse_layers, inputs, stop=not final) if mse_layers else None
    rotary = rope_kernels(teacher) if getattr(teacher, "teacher_rope_modules", None) else nullcontext()
    h = None
    try:
        with rotary:  # no_grad: the decorator
            h = teacher.model(input_ids=input_ids, use_cache=False).last_hidden_state
    except _Captured:
        pass
    finally:
        if cap is not None:
            cap.close()
    attn = cap.outputs if cap is not None else None
    given = cap.inputs if cap is not None and inputs else None
    return h, attn, given
