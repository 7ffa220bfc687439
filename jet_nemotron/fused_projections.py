"""Inference-time fusion of the projections that read the same input into one matrix product.

At decode time a step is a few hundred small matrix-vector products; each launch has a floor of a few
microseconds, so at batch 1 the count of kernels, not the bytes, sets the speed. Reading q/k/v/g/a/b and the
kernel generator's w1 (JetBlock), q/k/v (attention) and gate/up (MLP) as one matrix each removes about half of
the launches and reads the same bytes. The original parameters become views into the fused weight, so no memory
is added and the parameter names are unchanged; the fused weight is a non-persistent buffer.

Training has the same shape of waste in another place. Under bf16 autocast with fp32 weights, the normed input of a
JetBlock is fp32 and each of its seven projections casts it to bf16 again, and in backward each of their input
gradients is cast back to fp32 and added to the others: about 1,400 copies of [8, 2048, 1536] a distillation step on
the H200 (75 ms of 1,622). `linears_as_one` runs such projections as one product over their concatenated weights,
which stay separate parameters: the input is cast once, and its gradient comes out of one product, accumulated in
fp32 inside it. The concatenation copies the weights at every call, which is small beside the activations of a
training batch but not beside a decode step's: modules use it only while gradients are recorded
(`project_as_one`, switched on for a distillation by `set_projections_as_one`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# {key: weight} while `step_weights` is open: each concatenation (and its autocast cast) made once for all the
# micro-steps of an optimizer step, None otherwise
_STEP_WEIGHTS: dict | None = None


@contextlib.contextmanager
def step_weights() -> Iterator[None]:
    """Within: `linears_as_one` concatenates (and, under autocast, casts) each set of weights once and reuses it,
    as autocast reuses its casts of leaf weights within one region. For a training step's micro-steps, where the
    weights change only at the optimizer step after it: at 2 rows a forward (8 micro-steps) the concatenations and
    their casts were about 60 ms of an H100's 1,586 ms stage-2 step. The same values and gradients: the one
    concatenation's backward runs once a micro-step, as each fresh one did. Entries also carry the weights'
    version counters, so a weight changed in place within is concatenated anew."""
    global _STEP_WEIGHTS
    outer, _STEP_WEIGHTS = _STEP_WEIGHTS, ({} if _STEP_WEIGHTS is None else _STEP_WEIGHTS)
    try:
        yield
    finally:
        if outer is None:
            _STEP_WEIGHTS = None


def _concat_bias(linears: list[nn.Linear], what: str, detach: bool) -> torch.Tensor | None:
    """The row-concatenation of the linears' biases, None when none has one; a mix is refused naming `what`."""
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError(f"{what}: some projections have a bias and some do not")
    if not all(has_bias):
        return None
    return torch.cat([lin.bias.detach() if detach else lin.bias for lin in linears])


def fuse_linears(module: nn.Module, name: str, linears: list[nn.Linear]) -> list[int]:
    """Register buffer `name` (weight) and `name + "_bias"` (or None) on `module` holding the row-concatenation of
    `linears`; their weights become views of it. Returns the output sizes, for `split`."""
    sizes = [lin.out_features for lin in linears]
    weight = torch.cat([lin.weight.detach() for lin in linears])
    bias = _concat_bias(linears, f"cannot fuse {name}", detach=True)
    module.register_buffer(name, weight, persistent=False)
    module.register_buffer(name + "_bias", bias, persistent=False)
    offset = 0
    for lin, n in zip(linears, sizes):
        lin.weight.data = weight[offset : offset + n]
        if bias is not None:
            lin.bias.data = bias[offset : offset + n]
        offset += n
    return sizes


def _concat(linears: list[nn.Linear], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of `linears` concatenated by rows; under autocast the weight cast to its dtype here, the cast
    the product would make (cast and concatenation commute, bit for bit), so that `step_weights` keeps it."""
    weight = torch.cat([lin.weight for lin in linears])
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and weight.dtype == torch.float32:
        weight = weight.to(torch.get_autocast_dtype(dev))
    return weight, _concat_bias(linears, "linears_as_one", detach=False)


def _as_one(x: torch.Tensor, linears: list[nn.Linear]) -> torch.Tensor:
    """x [..., in] -> the product over the linears' row-concatenated weights, [..., sum of out_features]."""
    if _STEP_WEIGHTS is None or not torch.is_grad_enabled():
        weight, bias = _concat(linears, x)
    else:
        dev = x.device.type
        key = (tuple(id(lin.weight) for lin in linears), torch.is_autocast_enabled(dev),
               torch.get_autocast_dtype(dev))
        versions = tuple(lin.weight._version for lin in linears)
        hit = _STEP_WEIGHTS.get(key)
        if hit is None or hit[0] != versions:
            hit = _STEP_WEIGHTS[key] = (versions, *_concat(linears, x))
        weight, bias = hit[1], hit[2]
    return nn.functional.linear(x, weight, bias)


def linears_as_one(x: torch.Tensor, linears: list[nn.Linear]) -> tuple[torch.Tensor, ...]:
    """x [..., in] -> each of `linears` applied to x, computed as one product over their row-concatenated weights
    (and biases, all or none). Gradients reach each linear's own parameters."""
    return _as_one(x, linears).split([lin.out_features for lin in linears], dim=-1)


def one_product(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor | None:
    """x [..., in] -> the output of `module.same_input_linears()` side by side [..., sum of their sizes] where `project`
    computes them as one product (fused, or `project_as_one` while gradients are recorded), else None. For a caller
    that reads the outputs as one tensor: its gradient then comes back whole, where the split's backward would
    concatenate the parts' gradients into a new tensor."""
    if module.fused_sizes is not None:
        return nn.functional.linear(x, getattr(module, name), getattr(module, name + "_bias"))
    if module.project_as_one and torch.is_grad_enabled():
        return _as_one(x, module.same_input_linears())
    return None


def project(module: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x [..., in] -> the outputs of `module.same_input_linears()`, in that order: through the inference fusion's
    buffer `name` once fused (`fuse_linears`), as one product over the concatenated weights while `project_as_one`
    is on and gradients are recorded (`one_product`), else each projection on its own. The one dispatch of the
    three modules."""
    out = one_product(module, name, x)
    linears = module.same_input_linears()
    if out is None:
        return tuple(lin(x) for lin in linears)
    return out.split(module.fused_sizes or [lin.out_features for lin in linears], dim=-1)


def set_projections_as_one(model: nn.Module, on: bool = True) -> list[nn.Module]:
    """Switch `project_as_one` on (or off) in every module of `model` that has it and whose projections are plain
    `nn.Linear` (an adapter-wrapped projection, e.g. PEFT's LoRA, must run its own forward). Returns the modules
    switched; while on, a module computes its same-input projections with `linears_as_one` whenever gradients are
    recorded, and as before otherwise."""
    switched = []
    for module in model.modules():
        if hasattr(module, "project_as_one") and all(type(lin) is nn.Linear for lin in module.same_input_linears()):
            module.project_as_one = on
            switched.append(module)
    return switched
