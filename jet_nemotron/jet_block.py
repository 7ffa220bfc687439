"""JetBlock: gated-delta-rule linear attention whose values pass through a dynamic causal convolution.

Per layer, for hidden states x [B, T, hidden] (REFERENCE.md, "JetBlock"):
    q, k = silu(W_q x), silu(W_k x)                     [B, T, H, dk]  (L2-normalised inside the op)
    v    = silu(dynconv(W_v x; kernel = gen(x)))        [B, T, H, dv]
    beta = sigmoid(W_b x), g = -exp(A_log) softplus(W_a x + dt_bias)   [B, T, H]
    o    = gated_delta_rule(q, k, v, g, beta)           [B, T, H, dv]
    out  = W_o (RMSNorm(o) * silu(W_g x))               [B, T, hidden]
Parameter names match the official release so its checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_jet_nemotron import JetNemotronConfig
from .fused_projections import fuse_linears, project
from .transformers_compat import pick_cache
from .ops import (
    chunk_gated_delta_rule,
    dynamic_conv,
    dynamic_conv_step,
    fused_recurrent_gated_delta_rule,
    gated_delta_rule_step,
    gated_rmsnorm,
)


def decay_init(num_heads: int, device=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official (Mamba2-style) random start of the decay: A ~ U(1, 16), dt ~ logU(1e-3, 0.1); returns
    (A_log, dt_bias = softplus^-1(dt)), fp32 [H] each. `generator` (on `device`) makes it reproducible."""
    A = torch.empty(num_heads, device=device, dtype=torch.float32).uniform_(1, 16, generator=generator)
    u = torch.rand(num_heads, device=device, dtype=torch.float32, generator=generator)
    dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
    return A.log(), dt + torch.log(-torch.expm1(-dt))


class DynamicConvKernelGenerator(nn.Module):
    """Makes one depthwise kernel per token and channel from the layer input.

    x [B, T, hidden] -> kernels [B, T, C, K]; w2's output is channel-major (element c*K + j).
    """

    def __init__(self, hidden_size: int, channels: int, kernel_size: int, generator_hidden: int):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.w1 = nn.Linear(hidden_size, generator_hidden, bias=False)
        self.act = nn.SiLU()
        self.w2 = nn.Linear(generator_hidden, channels * kernel_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(x))).unflatten(-1, (self.channels, self.kernel_size))


class DynamicShortConvolution(nn.Module):
    """Holds the kernel generator under the official name `dynamic_conv1d.kernel_generator`."""

    def __init__(self, hidden_size: int, channels: int, kernel_size: int, generator_hidden: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.kernel_generator = DynamicConvKernelGenerator(hidden_size, channels, kernel_size, generator_hidden)


class JetGatedRMSNorm(nn.Module):
    """RMSNorm over the last dimension (dv, per head), times its weight, times silu(gate); fp32 inside.

    x, gate [..., dv] -> [..., dv] in x's dtype (`ops.gated_rmsnorm`: one Triton pass on CUDA)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        return gated_rmsnorm(x, gate, self.weight, self.eps, backend=backend)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class JetBlock(nn.Module):
    """The JetBlock token mixer of one layer (replaces self-attention; lives under `self_attn`)."""

    def __init__(self, config: JetNemotronConfig, layer_idx: int):
        super().__init__()
        d = config.jet_dims()
        self.config, self.layer_idx, self.dims = config, layer_idx, d
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, d.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, d.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, d.value_dim, bias=False)
        self.g_proj = nn.Linear(hidden, d.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden, d.num_heads, bias=False)
        self.b_proj = nn.Linear(hidden, d.num_heads, bias=False)
        # decay parameters stay fp32 (the official `_no_split`/keep-in-fp32 convention)
        self.A_log = nn.Parameter(torch.empty(d.num_heads, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(d.num_heads, dtype=torch.float32))
        self.dynamic_conv1d = DynamicShortConvolution(hidden, d.value_dim, d.conv_size, d.generator_hidden)
        self.o_norm = JetGatedRMSNorm(d.head_v_dim, eps=d.norm_eps)
        self.o_proj = nn.Linear(d.value_dim, hidden, bias=False)
        self.fused_sizes: list[int] | None = None
        self.project_as_one = False  # training: see `fused_projections.set_projections_as_one`
        self.reset_decay_parameters()

    def same_input_linears(self) -> list[nn.Linear]:
        """The projections that read the block's input: q, k, v, g, a, b and the kernel generator's w1."""
        return [self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.a_proj, self.b_proj,
                self.dynamic_conv1d.kernel_generator.w1]

    def fuse_projections(self) -> None:
        """Read q/k/v/g/a/b and the generator's w1 as one matrix (inference; see `fused_projections.py`)."""
        self.fused_sizes = fuse_linears(self, "in_proj_fused", self.same_input_linears())

    def _project(self, x: torch.Tensor):
        """x [B, T, hidden] -> q, k [B, T, H*dk], v, gate [B, T, H*dv], a, b [B, T, H], kernels [B, T, C, K]."""
        gen = self.dynamic_conv1d.kernel_generator
        q, k, v, gate, a, b, h = project(self, "in_proj_fused", x)  # h = gen.w1(x): the generator's first layer
        return q, k, v, gate, a, b, gen.w2(gen.act(h)).unflatten(-1, (gen.channels, gen.kernel_size))

    @torch.no_grad()
    def reset_decay_parameters(self) -> None:
        A_log, dt_bias = decay_init(self.dims.num_heads, self.A_log.device)
        self.A_log.copy_(A_log)
        self.dt_bias.copy_(dt_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        cu_seqlens: torch.LongTensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """hidden_states [B, T, hidden]; attention_mask [B, T] (1 = token, 0 = padding) or None; cu_seqlens [N + 1]
        offsets of packed documents in the flattened [B * T] tokens (state and convolution restart at each)."""
        x = hidden_states
        B, T, _ = x.shape
        d = self.dims
        backend = self.config.kernel_backend
        cache = pick_cache(cache, past_key_values)  # either name, as the model's forward

        q, k, v, gate, a, b, kernels = self._project(x)
        q = F.silu(q).view(B, T, d.num_heads, d.head_k_dim)
        k = F.silu(k).view(B, T, d.num_heads, d.head_k_dim)
        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())  # [B, T, H]
        if attention_mask is not None:
            # padding must not reach the state: zero values, zero write strength and no decay
            m = attention_mask[:, -T:].to(x.device)
            v = v * m[..., None].to(v.dtype)
            beta = beta * m[..., None].to(beta.dtype)
            g = g * m[..., None].to(g.dtype)

        if cu_seqlens is not None:
            # packed documents: all rows as one sequence [1, B*T, ...]; the ops restart at every document
            if cache is not None:
                raise ValueError("packed documents (cu_seqlens) cannot be combined with a cache")
            flat = lambda t: t.reshape(1, B * T, *t.shape[2:])  # noqa: E731
            v = dynamic_conv(flat(v), flat(kernels), None, cu_seqlens, backend=backend)
            o, _ = chunk_gated_delta_rule(flat(q), flat(k), v.view(1, B * T, d.num_heads, d.head_v_dim), flat(g),
                                          flat(beta), cu_seqlens=cu_seqlens, backend=backend)
        else:
            o = self._mix(q, k, v, g, beta, kernels, cache)

        o = self.o_norm(o.view(B, T, d.num_heads, d.head_v_dim), gate.view(B, T, d.num_heads, d.head_v_dim),
                        backend=backend)
        return self.o_proj(o.reshape(B, T, d.value_dim)), None

    def _mix(self, q, k, v, g, beta, kernels, cache) -> torch.Tensor:
        """Convolution + delta rule with the cache: the in-place one-token step when decoding, else the chunked
        (or, for one token in eval, recurrent) form continuing from the cached state. Returns o [B, T, H, dv]."""
        B, T = q.shape[:2]
        d, backend = self.dims, self.config.kernel_backend
        decoding = cache is not None and cache.has_previous_state(self.layer_idx)
        layer_cache = cache.layers[self.layer_idx] if cache is not None else None
        if decoding and T == 1:
            v = dynamic_conv_step(v[:, 0], kernels[:, 0], layer_cache.conv_states[0], backend=backend)[:, None]
        else:
            history = layer_cache.conv_states[0] if decoding else None
            v_in = v
            v = dynamic_conv(v, kernels, history, backend=backend)
            if cache is not None:
                # keeps the last conv_size raw inputs, zero-padded when the prompt is shorter
                cache.update_conv_state(v_in.transpose(1, 2), self.layer_idx, conv_kernel_size=d.conv_size)
        v = v.view(B, T, d.num_heads, d.head_v_dim)

        state = layer_cache.recurrent_states[0] if decoding else None
        if decoding and T == 1:
            return gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state,
                                         backend=backend)[:, None]
        op = chunk_gated_delta_rule if (T > 1 or self.training) else fused_recurrent_gated_delta_rule
        o, final_state = op(q, k, v, g, beta, initial_state=state, output_final_state=cache is not None,
                            backend=backend)
        if cache is not None:
            # the state is stored in recurrent_state_dtype (the cache allocates it from the first update's dtype)
            state_dtype = getattr(torch, self.config.recurrent_state_dtype)
            cache.update_recurrent_state(final_state.to(state_dtype), self.layer_idx)
        return o
