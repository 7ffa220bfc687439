"""The single dispatch point of the JetBlock's sequence ops, and of the decoder's RMSNorm and the MLP's gated
activation while training.

Each op has a PyTorch reference (`*_ref.py`, exact, any device) and a Triton kernel (`*_triton.py`, CUDA)
with the same signature. CUDA tensors take the Triton path when Triton is installed, everything else the
reference. The backend can be forced with the `JET_NEMOTRON_KERNELS` environment variable or the
config field `kernel_backend` ("auto", "triton", "reference"); asking for "triton" where it cannot run raises.
The first call logs, once per process and path, which path the ops take (transformers' logging).
"""

from __future__ import annotations

import os

import torch
from transformers.utils import logging

from .configuration_jet_nemotron import KERNEL_BACKENDS
from .dynamic_conv_ref import dynamic_conv_ref, dynamic_conv_step_ref
from .gated_rmsnorm_ref import gated_rmsnorm_ref
from .rmsnorm_ref import rmsnorm_ref
from .rope_ref import rope_ref
from .swiglu_ref import swiglu_packed_ref, swiglu_ref
from .gated_delta_rule_ref import (
    chunk_gated_delta_rule_ref,
    gated_delta_rule_step_ref,
    recurrent_gated_delta_rule_ref,
)

logger = logging.get_logger(__name__)

# the Triton functions, replaced below where Triton imports; `_choose` never picks one that is None
chunk_gated_delta_rule_triton = fused_recurrent_gated_delta_rule_triton = gated_delta_rule_step_triton = None
dynamic_conv_triton = dynamic_conv_step_triton = gated_rmsnorm_triton = rmsnorm_triton = swiglu_triton = None
rope_triton = swiglu_packed_triton = None
_TRITON_IMPORT_ERROR: Exception | None = None
try:
    import triton  # noqa: F401  (only to learn whether the kernels can be built)
except ImportError as err:  # CPU-only installs have no Triton
    _TRITON_IMPORT_ERROR = err

if _TRITON_IMPORT_ERROR is None:
    # Triton is there, so a broken kernel module is a bug and must not be swallowed.
    try:
        from .gated_delta_rule_triton import (
            chunk_gated_delta_rule_triton,
            fused_recurrent_gated_delta_rule_triton,
            gated_delta_rule_step_triton,
        )
        from .dynamic_conv_triton import dynamic_conv_step_triton, dynamic_conv_triton
        from .gated_rmsnorm_triton import gated_rmsnorm_triton
        from .rmsnorm_triton import rmsnorm_triton
        from .rope_triton import rope_triton
        from .swiglu_triton import swiglu_packed_triton, swiglu_triton
    except ImportError as err:
        _TRITON_IMPORT_ERROR = err

_logged: set[tuple[str, str]] = set()  # (path, reason) pairs already logged by this process


def _choose(op: str, x: torch.Tensor, backend: str) -> str:
    """Return "triton" or "reference" for this call; the first call on each path says so, once per process."""
    backend = os.environ.get("JET_NEMOTRON_KERNELS", backend) or "auto"
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel backend must be one of {KERNEL_BACKENDS}, got {backend!r} (JET_NEMOTRON_KERNELS / kernel_backend)")
    if backend == "auto":
        backend = "triton" if (x.is_cuda and _TRITON_IMPORT_ERROR is None) else "reference"
        reason = "CUDA tensor and Triton present" if backend == "triton" else (
            "tensor on CPU" if not x.is_cuda else f"Triton kernels unavailable: {_TRITON_IMPORT_ERROR}")
    else:
        reason = "forced"
    if backend == "triton":
        if _TRITON_IMPORT_ERROR is not None:
            raise RuntimeError(f"kernel backend 'triton' was asked for {op} but cannot run: {_TRITON_IMPORT_ERROR}")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"kernel backend 'triton' was asked for {op} on a {x.device} tensor; "
                               "set TRITON_INTERPRET=1 to run the kernels on the CPU interpreter")
    if (backend, reason) not in _logged:
        _logged.add((backend, reason))
        logger.warning("jet_nemotron: JetBlock ops run on the %s path (%s)", backend, reason)
    return backend


def _pick(op: str, fast, ref, x: torch.Tensor, backend: str):
    """The Triton or the reference function of `op` for this call (`_choose`)."""
    return fast if _choose(op, x, backend) == "triton" else ref


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           cu_seqlens=None, use_qk_l2norm_in_kernel=True, backend: str = "auto"):
    """Chunked gated delta rule for prefill and training. See `gated_delta_rule_ref` for shapes."""
    fn = _pick("chunk_gated_delta_rule", chunk_gated_delta_rule_triton, chunk_gated_delta_rule_ref, q, backend)
    return fn(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)


def fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                     cu_seqlens=None, use_qk_l2norm_in_kernel=True, backend: str = "auto"):
    """Token-by-token gated delta rule for short inputs (same function as the chunked form)."""
    return _pick("fused_recurrent_gated_delta_rule", fused_recurrent_gated_delta_rule_triton,
                 recurrent_gated_delta_rule_ref, q, backend)(q, k, v, g, beta, scale, initial_state,
                                                             output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)


def gated_delta_rule_step(q, k, v, g, beta, state, scale=None, use_qk_l2norm_in_kernel=True,
                          backend: str = "auto"):
    """One decode step, state updated in place. q, k [B, H, K]; v [B, H, V]; g, beta [B, H]."""
    fn = _pick("gated_delta_rule_step", gated_delta_rule_step_triton, gated_delta_rule_step_ref, q, backend)
    return fn(q, k, v, g, beta, state, scale, use_qk_l2norm_in_kernel)


def dynamic_conv(x, kernels, history=None, cu_seqlens=None, backend: str = "auto"):
    """Dynamic causal convolution + SiLU. x [B, T, C], kernels [B, T, C, K]. See `dynamic_conv_ref`."""
    return _pick("dynamic_conv", dynamic_conv_triton, dynamic_conv_ref, x, backend)(x, kernels, history, cu_seqlens)


def dynamic_conv_step(x, kernel, conv_state, backend: str = "auto"):
    """One decode step of the dynamic convolution; conv_state [B, C, K] updated in place."""
    fn = _pick("dynamic_conv_step", dynamic_conv_step_triton, dynamic_conv_step_ref, x, backend)
    return fn(x, kernel, conv_state)


def gated_rmsnorm(x, gate, weight, eps: float, backend: str = "auto"):
    """The JetBlock's output norm: RMSNorm(x) * weight * silu(gate). x, gate [..., D]; weight [D]."""
    return _pick("gated_rmsnorm", gated_rmsnorm_triton, gated_rmsnorm_ref, x, backend)(x, gate, weight, eps)


def swiglu(gate, up, backend: str = "auto", act_rounded: bool = False):
    """The MLP's silu(gate) * up in fp32, rounded once (`act_rounded`: silu(gate) rounded first, as eager bf16).
    gate, up [..., I]; y in gate's dtype. See `swiglu_ref`."""
    return _pick("swiglu", swiglu_triton, swiglu_ref, gate, backend)(gate, up, act_rounded)


def swiglu_packed(gate_up, backend: str = "auto", act_rounded: bool = False):
    """`swiglu` of the halves of one product's output gate_up [..., 2I] (gate first); its gradient comes back as one
    [..., 2I] tensor, not concatenated from two. See `swiglu_packed_ref`."""
    return _pick("swiglu", swiglu_packed_triton, swiglu_packed_ref, gate_up, backend)(gate_up, act_rounded)


def rope(q, k, cos, sin, backend: str = "auto"):
    """Rotary position embedding of q [B, Hq, L, D] and k [B, Hk, L, D] with cos, sin [B, L, D], eager's rounding;
    forward only (a frozen teacher's). See `rope_ref`."""
    return _pick("rope", rope_triton, rope_ref, q, backend)(q, k, cos, sin)


def rmsnorm(x, weight, eps: float, backend: str = "auto"):
    """The decoder's RMSNorm (Qwen2's rounding). x [..., D]; weight [D]. See `rmsnorm_ref`."""
    return _pick("rmsnorm", rmsnorm_triton, rmsnorm_ref, x, backend)(x, weight, eps)
