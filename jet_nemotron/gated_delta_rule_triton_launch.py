"""How the gated-delta-rule kernels are launched: input checks, the chunk tables behind the grids, the precision
of fp32 tiles, and the tuned launch configurations with the measurements that chose them.
"""

from __future__ import annotations

import os

import torch

try:  # transformers' remote-code checker skips imports inside try blocks; ops.py catches the ImportError
    import triton
    from triton.runtime.errors import OutOfResources
except ImportError as err:  # pragma: no cover - exercised only on machines without Triton
    raise ImportError(f"jet_nemotron's Triton kernels need triton: {err}") from err

from .gated_delta_rule_triton_tiles import BT

# Route the backward's transposes of computed tiles through memory (`_trans_tile` in the backward); "1" forces it.
SAFE_TRANS = os.environ.get("JET_NEMOTRON_SAFE_TRANS", "0") == "1"
# The chunked forward keeps w, the chunk states h and v' for the backward, which then skips their recomputation (the
# w/u kernel and the sequential state pass: about 20 ms of a 680 ms attention-transfer step in an H100 profile). It
# costs memory while the graph lives: at the 2B shapes about 18 KB a token a JetBlock, 7 GB for 24 JetBlocks at
# 8 x 2,048 tokens. On since its card test passed and a step was timed with it (H100, 2026-12-05: with the
# one-kernel conv backward, a stage-1 step 616 -> 570 ms, stage 2 at 2 rows 1,537 -> 1,445 ms, peak +6.7 / +1.8 GB;
# benchmarks/results/profiles/switches_h100/); JET_NEMOTRON_KEEP_STATES=0 trades that time back for the memory.
# Read at each forward, like SAFE_TRANS.
KEEP_STATES = os.environ.get("JET_NEMOTRON_KEEP_STATES", "1") == "1"

# BV of the V slices of the chunked kernels: the backward's dv_local runs one program per chunk and slice, the forward
# output kernel one per chunk walking them.
CHUNK_BV = 64
# Warps of the per-chunk kernels launched one program a chunk (and V slice for dv_local). Read at each call, so
# `benchmarks/kernel_ab.py --variant` can time another setting beside these. Built for sm_90 on the CPU
# (`benchmarks/kernel_registers.py`, Triton 3.6, 2B shapes, bf16), 8 warps spill less than 4 (w/u 1,280 -> 152 B of
# stack a thread, output 256 -> 0, dv_local 16 -> 0) but leave one program an SM where 4 warps fit two, and ran slower
# (H100, 8 x 2,048 tokens: forward 0.908 against 0.832 ms, forward + backward 3.040 against 2.973;
# benchmarks/results/profiles/chunk_addressing_h100/), so 4 stays.
CHUNK_WARPS = {"prepare": 4, "wu": 4, "fwd_o": 4, "dv_local": 4}
# The sequential state passes have only N*H*V/BV programs, so small slices keep more SMs busy.
# Forward: BV 32, 4 warps, 3 stages, the fastest of BV 16-64 x 2-8 warps x 1-3 stages (2B shapes, 64K, bf16, H100:
# 1.34 ms; 2 stages 1.6x slower; benchmarks/results/state_pass_sweep_h100.json).
STATE_PASS_FWD = dict(BV=32, num_warps=4, stages=3)
# Backward: BV 32, 8 warps, 3 stages, the fastest of the same sweep that keeps q's L2 norm in the loop (3.53 ms; 4
# warps and 2 stages 4.90 ms).
# Reading q and k normalised (q's written by the dv_local kernel, k's kept from the forward's w/u kernel) instead of
# normalising both in the loop made the chunked backward slower, 0.978x (H100, 2B shapes, 8 x 2,048 tokens, bf16,
# 2026-12-06; benchmarks/results/profiles/jetblock_kernels_h100/): the extra write and read cost more than the norms.
STATE_PASS_BWD = dict(BV=32, num_warps=8, stages=3)
# The per-chunk backward (`_bwd_chunk_kernel`, one program per chunk and head walking V in BV slices) by whether its
# tiles are fp32 (half the columns fit) or 16-bit. It is a training step's largest JetBlock kernel (1.75 ms a call at
# 8 x 2,048 tokens on the H200); `benchmarks/chunk_bwd_sweep.py` times the alternatives against this, side by side.
# Read at each call, so the sweep can set it.
# sum_sds: reduce sum(S * dS) slice by slice instead of holding a [BK, BV] fp32 tile (the kernel's SUM_SDS). Swept
# on an H100 at 8 x 2,048 tokens, bf16, 2B shapes (benchmarks/results/chunk_bwd_sweep_h100.json): BV 64 x 8 warps x 2
# stages stays the fastest launch, and with sum_sds the whole chunked backward took 2.97 ms against 3.30 (1.11x);
# sum_sds was faster in each of the six launches. fp32 is not measured and keeps the tile.
# Two state products in a kernel of their own (do S^T and dv' S^T; two fp32 tiles fewer held) were slower on the
# same H100 (3.05 against 3.02 ms at BV 64, 3.22 against 3.07 at BV 32; chunk_bwd_sweep_split_h100.json) and are gone.
# Since 2026-12-06 the kernel loads q and k after its V loop (1.10x on an H100 that day at BV 64 x 8 warps x 2 stages,
# still the fastest launch, as in a sweep on an H200 after the change: 2.57 ms; 16 warps 1.4x slower;
# benchmarks/results/profiles/jetblock_kernels_h100/).
CHUNK_BWD = {"fp32": dict(BV=32, num_warps=8, stages=2, sum_sds=False),
             "16-bit": dict(BV=64, num_warps=8, stages=2, sum_sds=True)}
# (BV, num_warps) of the token loop by the dtype the state is read and written in. Each program holds a [BK, BV]
# fp32 slice of the state in registers; N*H*V/BV programs fill the GPU at decode batch sizes. From a sweep of BV
# 16..128 x 1..8 warps per state dtype at B = 256 and 2048 on an H200 (benchmarks/kernel_speed.py --only step_variants):
# fp32 BV 16 x 1 warp, 81% / 84% of the copy roofline (BV 32 x 2, the earlier choice from an H100 sweep where the
# two tied: 77% / 79%); bf16 BV 32 x 1 warp, 55% / 58%, the best of all 16 configs (BV 64 x 4: 51% / 54%). A bf16
# state halves the bytes but not the per-program latency, so it gains 1.4x, not 2x.
RECURRENT_CONFIG = {torch.float32: (16, 1), torch.bfloat16: (32, 1)}


def dot_precision(dtype: torch.dtype) -> str:
    """How the kernels multiply fp32 tiles: IEEE, unless TF32 is allowed for fp32 matmuls, as PyTorch's own matmuls
    do (`torch.set_float32_matmul_precision("high")`, or `torch.backends.cuda.matmul.allow_tf32 = True`, which sets
    the same precision: read here through the function every torch version has). Triton's own default is TF32,
    which put fp32 training gradients 3x further from the exact ones than the reference path's under TF32 (A_log
    2.7e-2 against 8.4e-3, H100). bf16 tiles are unaffected (wgmma either way), so bf16 inputs keep "tf32" and
    their speed."""
    return "ieee" if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest" else "tf32"


def dot_bf16(bk: int, on_card: bool) -> bool:
    """Whether the per-chunk backward (`_bwd_chunk_kernel`) multiplies bf16 operands: on a card where fp32 [BT, BK]
    operands would overflow an SM's shared memory (BK > 64); Triton's interpreter has none to overflow and keeps
    them fp32, exact as the CPU tests hold them."""
    return bk > 64 and on_card


def pow2_block(n: int) -> int:
    """The block that holds a whole head dimension n: the next power of two, at least 32."""
    # at least 32: with a 16-wide K block the backward kernels read out of bounds on Hopper with Triton 3.6
    # (illegal address at K = 16 on an H200, with or without SAFE_TRANS; K = 16 padded to 32 matches the reference)
    return max(32, triton.next_power_of_2(n))


def launch_pipelined(kernel, grid, *args, stages: int = 2, **kwargs):
    """Launch with `stages` software-pipeline stages, or fewer where the stages' shared-memory buffers do not fit
    (fp32 BK = 128 tiles of q, k and w in the state loops need more than a Hopper SM's 227 KB at 3 stages)."""
    for n in range(stages, 0, -1):
        try:
            return kernel[grid](*args, num_stages=n, **kwargs)
        except OutOfResources:
            if n == 1:
                raise


class ChunkMeta:
    """Flattened-token bookkeeping shared by forward and backward: N sequences, chunk tables when packed."""

    def __init__(self, B: int, T: int, cu_seqlens: torch.Tensor | None, device):
        self.varlen = cu_seqlens is not None
        self.T = T  # per-sequence length when not packed; unused otherwise
        if self.varlen:
            if B != 1:
                raise ValueError(f"cu_seqlens needs a batch of 1 packed sequence, got batch {B}")
            bounds = cu_seqlens.tolist()  # one host sync per call, as the chunk table is host-built
            self.N = len(bounds) - 1
            n_chunks = [triton.cdiv(bounds[i + 1] - bounds[i], BT) for i in range(self.N)]
            idx = [(i, j) for i in range(self.N) for j in range(n_chunks[i])]
            offsets = [0]
            for c in n_chunks:
                offsets.append(offsets[-1] + c)
            self.cu = cu_seqlens.to(device=device, dtype=torch.int32)
            self.chunk_indices = torch.tensor(idx or [(0, 0)], dtype=torch.int32, device=device).flatten()
            self.chunk_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)
            self.NT = 0  # unused when packed
            self.total_chunks = len(idx)
        else:
            self.N = B
            self.cu = self.chunk_indices = self.chunk_offsets = None
            self.NT = triton.cdiv(T, BT)
            self.total_chunks = B * self.NT

    def args(self):
        return self.cu, self.chunk_indices, self.chunk_offsets


def _check_shapes(q, k, v, g, beta, initial_state, N):
    """Raise naming the tensor whose shape disagrees (shapes as `gated_delta_rule_ref`)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (B, T, H) or g.shape != (B, T, H) or beta.shape != (B, T, H):
        raise ValueError(f"shapes disagree: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} "
                         f"g {tuple(g.shape)} beta {tuple(beta.shape)}")
    if K > 256:
        raise ValueError(f"head dim K={K} > 256 is not supported by the Triton kernels")
    if initial_state is not None and initial_state.shape != (N, H, K, V):
        raise ValueError(f"initial_state must be {(N, H, K, V)}, got {tuple(initial_state.shape)}")


def prep_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens):
    """Checked, contiguous inputs (g fp32, the initial state fp32), the scale and the chunk tables."""
    B, T, H, K = q.shape
    meta = ChunkMeta(B, T, cu_seqlens, q.device)
    _check_shapes(q, k, v, g, beta, initial_state, meta.N)
    scale = K ** -0.5 if scale is None else float(scale)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    return (q.contiguous(), k.contiguous(), v.contiguous(), g.float().contiguous(), beta.contiguous(),
            scale, h0, meta)
