"""Triton kernels against the PyTorch references: forward, backward and final state, at awkward sizes.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1) at small sizes; on CUDA the full size
set runs (T = 1, 63, 64, 65, 300, 1000; 1-4 heads; dk 32/96/128; dv 64/256). Errors are relative norms
||a - b|| / ||b|| per tensor; each bound says why it is what it is.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
# TRITON_INTERPRET must be set before triton.language is imported: its own helpers (tl.zeros, tl.sigmoid, ...)
# are decorated at import. If another test module of this pytest process imported triton first (through
# jet_nemotron.ops), this file reruns itself in a fresh process instead (`test_in_fresh_process`).
IN_FRESH_PROCESS_ONLY = not CUDA and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from jet_nemotron import dynamic_conv_ref as conv_ref  # noqa: E402
from jet_nemotron import gated_delta_rule_ref as gdr_ref  # noqa: E402
from jet_nemotron import dynamic_conv_triton as conv_tri  # noqa: E402
from jet_nemotron import gated_delta_rule_triton as gdr_tri  # noqa: E402
from jet_nemotron import gated_rmsnorm_ref as norm_ref  # noqa: E402
from jet_nemotron import gated_rmsnorm_triton as norm_tri  # noqa: E402
from jet_nemotron import rmsnorm_ref as rms_ref  # noqa: E402
from jet_nemotron import rmsnorm_triton as rms_tri  # noqa: E402
from jet_nemotron import rope_ref  # noqa: E402
from jet_nemotron import rope_triton  # noqa: E402
from jet_nemotron import swiglu_ref as act_ref  # noqa: E402
from jet_nemotron import swiglu_triton as act_tri  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreter_guard(request):
    if IN_FRESH_PROCESS_ONLY and request.node.name != "test_in_fresh_process":
        pytest.skip("triton was imported without the interpreter: test_in_fresh_process runs this file")


@pytest.fixture(autouse=True)
def _two_kernel_conv_backward_in_the_interpreter(monkeypatch):
    """The dynamic convolution's one-kernel backward (the library's default since 2026-12-05) walks its tokens one by
    one, which Triton's interpreter runs about 7x slower than the two vectorised kernels (2 s against 15-20 s a
    300-token case; the suite 4.5 minutes longer on 2 cores). On the CPU the other tests take the two kernels; the
    one kernel is held to their gradients by its own test (which sets the switch itself) here and on the card, where
    every test runs the default. JET_NEMOTRON_CONV_FUSED_BWD given in the environment is kept."""
    if not CUDA and "JET_NEMOTRON_CONV_FUSED_BWD" not in os.environ:
        monkeypatch.setattr(conv_tri, "FUSED_BWD", False)


def test_in_fresh_process(tmp_path):
    """This file in fresh processes with the interpreter on, split over up to 2 of the machine's cores (CI has 2;
    `JET_NEMOTRON_TEST_SHARD`, conftest.py): the interpreter is single-threaded, so one process would leave a core
    idle for the file's 4 minutes."""
    if not IN_FRESH_PROCESS_ONLY:
        pytest.skip("the kernels run in this process")
    n = max(1, min(2, os.cpu_count() or 1))
    repo = Path(__file__).resolve().parents[1]
    runs = []
    for i in range(n):
        log = (tmp_path / f"shard{i}.log").open("w+")  # a file, not a pipe: a full pipe would stall its shard
        env = {**os.environ, "TRITON_INTERPRET": "1", "JET_NEMOTRON_TEST_SHARD": f"{i}/{n}"}
        runs.append((subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                                      cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
    codes = [proc.wait(timeout=900) for proc, _ in runs]  # all of them first: none is left running on a failure
    for i, (code, (_, log)) in enumerate(zip(codes, runs)):
        with log:
            log.seek(0)
            assert code == 0, f"shard {i}/{n}:\n" + log.read()[-8000:]


DEVICE = "cuda" if CUDA else "cpu"

# Bounds on ||a - b|| / ||b||.
# fp32 on the CPU interpreter: every dot is an exact fp32 numpy product, so only summation order differs
# from the reference (1e-6 measured); 1e-4 leaves room for the 64-step triangular solve.
TOL_FP32_CPU = 1e-4
# fp32 on CUDA: the kernels' fp32 products are IEEE unless torch allows TF32 (`dot_precision`, off by default);
# these bounds date from when they were TF32 (10-bit mantissa, ~5e-4 per product, chained through the solve, the
# state recursion and (backward) dA = -Ai^T dAi Ai^T) and still hold for a run with TF32 allowed.
TOL_FP32_GPU = {"o": 5e-3, "ht": 5e-3, "grad": 1e-2}
# bf16: w, u, v', h and the dot operands are rounded to bf16 (2^-8 = 4e-3 each) along the same chains.
TOL_BF16 = {"o": 2e-2, "ht": 2e-2, "grad": 4e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def tol(kind: str, dtype) -> float:
    if dtype == torch.bfloat16:
        return TOL_BF16[kind]
    return TOL_FP32_GPU[kind] if CUDA else TOL_FP32_CPU


def make_gdr(B, T, H, K, V, dtype, with_h0, n_seq=None, seed=0):
    """Random inputs like a JetBlock's: silu'd q/k (normalised in the kernel), decays in (-inf, 0)."""
    gen = torch.Generator().manual_seed(seed)
    N = B if n_seq is None else n_seq
    q = F.silu(torch.randn(B, T, H, K, generator=gen)).to(dtype)
    k = F.silu(torch.randn(B, T, H, K, generator=gen)).to(dtype)
    v = torch.randn(B, T, H, V, generator=gen).to(dtype)
    g = -torch.rand(B, T, H, generator=gen).mul(2.0).exp() * F.softplus(torch.randn(B, T, H, generator=gen))
    beta = torch.rand(B, T, H, generator=gen).to(dtype)
    h0 = torch.randn(N, H, K, V, generator=gen) * 0.1 if with_h0 else None
    xs = [q, k, v, g.float(), beta] + ([h0] if with_h0 else [])
    return [x.to(DEVICE).requires_grad_() for x in xs]


def run_gdr(fn, xs, with_h0, cu=None, backward=True, seed=1):
    q, k, v, g, beta = xs[:5]
    h0 = xs[5] if with_h0 else None
    o, ht = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
               use_qk_l2norm_in_kernel=True)
    if not backward:
        return o, ht, []
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(DEVICE, o.dtype)
    dht = torch.randn(ht.shape, generator=gen).to(DEVICE)
    grads = torch.autograd.grad((o.float() * do.float()).sum() + (ht * dht).sum(), xs)
    return o, ht, grads


NAMES = ["dq", "dk", "dv", "dg", "dbeta", "dh0"]


def check_gdr(fn, B, T, H, K, V, dtype=torch.float32, with_h0=True, lens=None, backward=True):
    cu = None
    if lens is not None:
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=DEVICE)
        B, T = 1, sum(lens)
    xs = make_gdr(B, T, H, K, V, dtype, with_h0, n_seq=None if lens is None else len(lens))
    o, ht, grads = run_gdr(fn, xs, with_h0, cu, backward)
    o_r, ht_r, grads_r = run_gdr(gdr_ref.recurrent_gated_delta_rule_ref, xs, with_h0, cu, backward)
    assert o.shape == o_r.shape and o.dtype == o_r.dtype and ht.dtype == torch.float32
    errs = {"o": rel(o, o_r), "ht": rel(ht, ht_r)}
    for name, a, b in zip(NAMES, grads, grads_r):
        assert a.dtype == b.dtype, name
        errs[name] = rel(a, b)
    for name, e in errs.items():
        bound = tol(name if name in ("o", "ht") else "grad", dtype)
        assert e < bound, f"{name}: {e:.2e} >= {bound:.0e} (all: {errs})"
    return errs


# (B, T, H, K, V, with_h0): every T of the spec at least once; K 32/96/128 and V 64/256 on CPU at small T
CPU_CASES = [
    (1, 1, 1, 32, 64, True),
    (1, 63, 2, 32, 64, False),
    (1, 64, 1, 96, 64, True),
    (2, 65, 2, 32, 64, True),
    (1, 65, 1, 128, 256, False),
    (1, 300, 1, 32, 64, True),
    (1, 1000, 1, 16, 32, False),
]
GPU_CASES = [(B, T, H, K, V, (T + H) % 2 == 0) for T in (1, 63, 64, 65, 300, 1000)
             for (B, H, K, V) in ((2, 1, 32, 64), (1, 2, 96, 256), (1, 4, 128, 256), (1, 3, 128, 64))]
CASES = GPU_CASES if CUDA else CPU_CASES
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]


@pytest.mark.parametrize("B,T,H,K,V,with_h0", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_matches_reference(B, T, H, K, V, with_h0, dtype):
    check_gdr(gdr_tri.chunk_gated_delta_rule_triton, B, T, H, K, V, dtype, with_h0)


@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_varlen_matches_reference(with_h0, dtype):
    # three unequal sequences: inside one chunk, exactly one chunk, across a chunk boundary
    lens = [37, 64, 100] if not CUDA else [37, 64, 700]
    check_gdr(gdr_tri.chunk_gated_delta_rule_triton, 0, 0, 2, 32 if not CUDA else 96, 64, dtype, with_h0, lens)


def _padded_or_varlen(B, K, lens):
    """fp32 inputs of 2 heads, dv 64 (make_gdr, with an initial state) and cu_seqlens: B x 130 tokens when lens is
    None, else the sequences 37, 64 and 100 packed into one row."""
    cu = None if lens is None else torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=DEVICE)
    B, T = (B, 130) if lens is None else (1, sum(lens))
    return make_gdr(B, T, 2, K, 64, torch.float32, True, n_seq=None if lens is None else len(lens)), cu


@pytest.mark.parametrize("lens", [None, [37, 64, 100]])
def test_kept_states_give_the_same_gradients_without_the_state_pass(monkeypatch, lens):
    """launch.KEEP_STATES: the backward takes the forward's w, h and v' instead of rerunning the w/u kernel and the
    sequential state pass, and the gradients are the same bits (the same kernels on the same inputs)."""
    from jet_nemotron import gated_delta_rule_triton_chunk_bwd as bwd
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    calls = []
    real = bwd.wu_and_states
    monkeypatch.setattr(bwd, "wu_and_states", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    xs, cu = _padded_or_varlen(2, 32, lens)
    runs = {}
    for keep in (False, True):
        monkeypatch.setattr(launch, "KEEP_STATES", keep)
        calls.clear()
        o, ht, grads = run_gdr(gdr_tri.chunk_gated_delta_rule_triton, xs, True, cu)
        runs[keep] = (o, ht, grads, len(calls))
    assert runs[False][3] == 1 and runs[True][3] == 0  # recomputed once without, never with
    for a, b in zip((runs[True][0], runs[True][1], *runs[True][2]), (runs[False][0], runs[False][1], *runs[False][2])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lens", [None, [37, 64, 100]])
def test_a_value_head_of_a_slice_and_a_part_gives_the_reference(lens):
    """dv 80: the kernels that walk V in slices of 64 (the forward output, the per-chunk backward) end on a partial
    slice; padded rows and packed sequences."""
    check_gdr(gdr_tri.chunk_gated_delta_rule_triton, 2, 130, 2, 48, 80, torch.float32, True, lens)


@pytest.mark.skipif(not CUDA, reason="Triton's interpreter (3.9) multiplies bf16 tl.dot operands as raw bits "
                    "(a 16x16 bf16 product came out 4e9 off): bf16 is checked on CUDA only")
def test_chunk_bf16_small():
    check_gdr(gdr_tri.chunk_gated_delta_rule_triton, 1, 65, 1, 32, 64, torch.bfloat16, True)


@pytest.mark.parametrize("T", [1, 63, 65] if not CUDA else [1, 63, 64, 65, 300])
@pytest.mark.parametrize("with_h0", [True, False])
def test_fused_recurrent_matches_reference(T, with_h0):
    # backward runs through the chunked backward: checked at one size (it is the chunk path, tested above)
    check_gdr(gdr_tri.fused_recurrent_gated_delta_rule_triton, 2, T, 1, 32, 32, torch.float32, with_h0,
              backward=(T == 65 and with_h0))


def test_fused_recurrent_varlen():
    check_gdr(gdr_tri.fused_recurrent_gated_delta_rule_triton, 0, 0, 2, 32, 64, torch.float32, True,
              lens=[5, 1, 30], backward=False)


@pytest.mark.parametrize("K,V", [(32, 64), (96, 256)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_step_in_place(K, V, dtype):
    B, H, steps = 3, 2, 4
    gen = torch.Generator().manual_seed(0)
    state = (torch.randn(B, H, K, V, generator=gen) * 0.1).to(DEVICE)
    state_r = state.clone()
    for _ in range(steps):
        q, k = (F.silu(torch.randn(B, H, K, generator=gen)).to(DEVICE, dtype) for _ in range(2))
        v = torch.randn(B, H, V, generator=gen).to(DEVICE, dtype)
        g = (-F.softplus(torch.randn(B, H, generator=gen))).to(DEVICE)
        beta = torch.rand(B, H, generator=gen).to(DEVICE, dtype)
        o = gdr_tri.gated_delta_rule_step_triton(q, k, v, g, beta, state)
        o_r = gdr_ref.gated_delta_rule_step_ref(q, k, v, g, beta, state_r)
        assert o.dtype == o_r.dtype and o.shape == (B, H, V)
        # same fp32 arithmetic per token, summed in another order; bf16 rounds only the output
        assert rel(o, o_r) < (1e-2 if dtype == torch.bfloat16 else 1e-5)
        assert rel(state, state_r) < 1e-5


def test_decode_step_with_a_bf16_state():
    """recurrent_state_dtype="bfloat16": the step reads and writes the state in bf16 and updates it in fp32. Against
    the reference given the same bf16 state: the output is the same fp32 arithmetic in another order (1e-5); the new
    state differs by the one rounding each applies on writing it back, at most 2^-8 relative per element: torch
    rounds to nearest, Triton's interpreter truncates (measured 4e-3 in norm, every other element), so 1e-2."""
    B, H, K, V = 3, 2, 32, 64
    gen = torch.Generator().manual_seed(1)
    state = (torch.randn(B, H, K, V, generator=gen) * 0.1).to(DEVICE, torch.bfloat16)
    state_r = state.clone()
    for _ in range(4):
        q, k = (F.silu(torch.randn(B, H, K, generator=gen)).to(DEVICE) for _ in range(2))
        v = torch.randn(B, H, V, generator=gen).to(DEVICE)
        g = (-F.softplus(torch.randn(B, H, generator=gen))).to(DEVICE)
        beta = torch.rand(B, H, generator=gen).to(DEVICE)
        o = gdr_tri.gated_delta_rule_step_triton(q, k, v, g, beta, state)
        o_r = gdr_ref.gated_delta_rule_step_ref(q, k, v, g, beta, state_r)
        assert state.dtype == torch.bfloat16
        assert rel(o, o_r) < 1e-5
        assert rel(state.float(), state_r.float()) < 1e-2
        state_r.copy_(state)  # the next step starts both from the same stored state
    with pytest.raises(ValueError, match="fp32 or bf16"):
        gdr_tri.gated_delta_rule_step_triton(q, k, v, g, beta, state.half())


def test_ops_dispatch_reaches_triton(monkeypatch):
    from jet_nemotron import ops

    if not CUDA:
        # ops may hold the kernels imported before the interpreter was switched on
        monkeypatch.setattr(ops, "chunk_gated_delta_rule_triton", gdr_tri.chunk_gated_delta_rule_triton)
    xs = make_gdr(1, 70, 1, 16, 32, torch.float32, True)
    o, ht = ops.chunk_gated_delta_rule(*xs[:5], initial_state=xs[5], output_final_state=True, backend="triton")
    o_r, ht_r = gdr_ref.recurrent_gated_delta_rule_ref(*xs[:5], initial_state=xs[5], output_final_state=True)
    assert rel(o, o_r) < tol("o", torch.float32) and rel(ht, ht_r) < tol("ht", torch.float32)


# ---------------------------------------------------------------------------------------------------------
# dynamic convolution


def make_conv(B, T, C, KW, dtype, hist_len, n_seq=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen).to(DEVICE, dtype).requires_grad_()
    kern = (torch.randn(B, T, C, KW, generator=gen) * 0.5).to(DEVICE, dtype).requires_grad_()
    hist = None
    if hist_len:
        hist = torch.randn(n_seq or B, C, hist_len, generator=gen).to(DEVICE, dtype)
    return x, kern, hist


@pytest.mark.parametrize("T", [1, 3, 63, 300] if not CUDA else [1, 3, 63, 64, 65, 300, 1000])
@pytest.mark.parametrize("hist_len", [0, 3, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dynamic_conv_matches_reference(T, hist_len, dtype):
    B, C, KW = 2, 96 if not CUDA else 768, 4
    x, kern, hist = make_conv(B, T, C, KW, dtype, hist_len)
    y = conv_tri.dynamic_conv_triton(x, kern, hist)
    y_r = conv_ref.dynamic_conv_ref(x, kern, hist)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), [x, kern])
    grads_r = torch.autograd.grad((y_r * dy).sum(), [x, kern])
    # fp32: a 4-term sum, exact up to ordering; bf16: the output and gradients are rounded to bf16 (4e-3),
    # while the reference's autograd rounds its intermediates at other points
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel(y, y_r) < bound
    for a, b in zip(grads, grads_r):
        assert a.dtype == b.dtype and rel(a, b) < bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,D", [(1, 64), (17, 96), (300, 256)])  # 1 row; a partial row block; D not 2^n
def test_gated_rmsnorm_matches_reference(rows, D, dtype):
    gen = torch.Generator().manual_seed(rows + D)
    x = (3 * torch.randn(rows, 2, D, generator=gen)).to(DEVICE, dtype).requires_grad_()
    gate = torch.randn(rows, 2, D, generator=gen).to(DEVICE, dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(D, generator=gen)).to(DEVICE, dtype).requires_grad_()
    y, y_r = norm_tri.gated_rmsnorm_triton(x, gate, w, 1e-6), norm_ref.gated_rmsnorm_ref(x, gate, w, 1e-6)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), [x, gate, w])
    grads_r = torch.autograd.grad((y_r * dy).sum(), [x, gate, w])
    # fp32: the same arithmetic, reduced in another order; bf16: y and the gradients are rounded once to bf16
    # (2^-8 = 4e-3) where the reference's autograd rounds at other points, and dw sums 2 * rows of them
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and rel(y, y_r) < bound
    for name, a, b in zip(("dx", "dgate", "dweight"), grads, grads_r):
        assert a.dtype == b.dtype and rel(a, b) < bound, name
    with torch.no_grad():  # inference takes the direct launch, without autograd's bookkeeping
        assert torch.equal(norm_tri.gated_rmsnorm_triton(x, gate, w, 1e-6), y)
    # a strided gate (the model's fused projection hands over a column slice) is laid out once for both passes
    wide = torch.cat([gate.detach(), torch.zeros_like(gate)], -1).requires_grad_()
    y_s = norm_tri.gated_rmsnorm_triton(x, wide[..., :D], w, 1e-6)
    assert torch.equal(y_s, y)
    assert torch.equal(torch.autograd.grad((y_s * dy).sum(), wide)[0][..., :D], grads[1])
    # a JetBlock's layout: the heads of each token side by side in one wider product's row, read in place
    row = torch.cat([torch.zeros(rows, 3, device=DEVICE, dtype=dtype), gate.detach().flatten(1),
                     torch.zeros(rows, 5, device=DEVICE, dtype=dtype)], -1).requires_grad_()
    in_row = row[:, 3:3 + 2 * D].view(rows, 2, D)
    ops = _aten_ops_of(lambda: norm_tri.gated_rmsnorm_triton(x, in_row, w, 1e-6))
    assert "clone" not in ops  # what .contiguous() runs (the interpreter copies arguments itself)
    y_p = norm_tri.gated_rmsnorm_triton(x, in_row, w, 1e-6)
    assert torch.equal(y_p, y)
    assert torch.equal(torch.autograd.grad((y_p * dy).sum(), row)[0][:, 3:3 + 2 * D].view(rows, 2, D), grads[1])
    with pytest.raises(ValueError, match="weight"):
        norm_tri.gated_rmsnorm_triton(x, gate, w[:-1], 1e-6)
    # the kernels' row arithmetic: a contiguous gate goes as flat rows (H = 1, the launch before gate took strides),
    # the in-place one by (token, head); one token's heads are contiguous wherever its row lies
    assert norm_tri._gate_rows(gate)[1:] == (1, D)
    assert norm_tri._gate_rows(in_row)[1:] == ((1, D) if rows == 1 else (2, 2 * D + 8))


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                              (torch.bfloat16, torch.float32)])  # the last: Qwen2's promotion
@pytest.mark.parametrize("rows,D", [(1, 64), (37, 1536), (5, 128)])  # 1 row; the 1.5B's D, partial blocks; head
def test_rmsnorm_matches_reference(rows, D, x_dtype, w_dtype):
    gen = torch.Generator().manual_seed(rows + D)
    x = (3 * torch.randn(rows, 2, D, generator=gen)).to(DEVICE, x_dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(D, generator=gen)).to(DEVICE, w_dtype).requires_grad_()
    y, y_r = rms_tri.rmsnorm_triton(x, w, 1e-6), rms_ref.rmsnorm_ref(x, w, 1e-6)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), [x, w])
    grads_r = torch.autograd.grad((y_r * dy).sum(), [x, w])
    # fp32: the same arithmetic, reduced in another order; bf16: x r is rounded to bf16 as in the reference, and
    # the gradients once (2^-8), where the reference's autograd rounds at other points; dw sums 2 * rows of them
    bound = 1e-5 if x_dtype == torch.float32 else 1e-2
    assert y.dtype == y_r.dtype == torch.promote_types(x_dtype, w_dtype) and rel(y, y_r) < bound
    if CUDA and x_dtype == torch.bfloat16:  # the reference's two roundings of a bf16 input, emulated: equal but
        # where r's last fp32 bit moves a rounding (the interpreter's fp32 -> bf16 cast truncates, so this holds on a
        # GPU only). An fp32 input has no rounding to hide the reduction order: half its values differ in the last
        # bits on an H200 (2026-12-05), within the bound above
        assert (y == y_r).float().mean() > 0.999
    for name, a, b in zip(("dx", "dweight"), grads, grads_r):
        assert a.dtype == b.dtype and rel(a, b) < bound, name
    with torch.no_grad():  # inference takes the direct launch, without autograd's bookkeeping
        assert torch.equal(rms_tri.rmsnorm_triton(x, w, 1e-6), y)
    frozen = w.detach()  # a frozen weight: no weight gradient is formed
    assert torch.equal(torch.autograd.grad((rms_tri.rmsnorm_triton(x, frozen, 1e-6) * dy).sum(), x)[0], grads[0])
    with pytest.raises(ValueError, match="weight"):
        rms_tri.rmsnorm_triton(x, w[:-1], 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,I", [(1, 64), (17, 1030), (3, 8960)])  # a partial block; the real model's I
def test_swiglu_matches_reference(rows, I, dtype):
    """silu(gate) * up forward and backward against the reference, on contiguous tensors and on the two halves of
    one wider product (what `linears_as_one` hands the MLP), whose row stride the kernels read in place."""
    gen = torch.Generator().manual_seed(rows + I)
    gate_up = (3 * torch.randn(rows, 2, 2 * I, generator=gen)).to(DEVICE, dtype).requires_grad_()
    gate, up = gate_up.split(I, dim=-1)
    y, y_r = act_tri.swiglu_triton(gate, up), act_ref.swiglu_ref(gate, up)
    dy = torch.randn_like(y)
    grad = torch.autograd.grad((y * dy).sum(), gate_up)[0]
    grad_r = torch.autograd.grad((y_r * dy).sum(), gate_up)[0]
    # fp32: the same arithmetic; bf16: each value rounded once to bf16 (2^-8) where the reference's autograd rounds
    # the product of fp32 gradients at other points
    bound = 1e-6 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and y.shape == (rows, 2, I) and rel(y, y_r) < bound
    assert grad.dtype == dtype and rel(grad, grad_r) < bound
    g, u = gate.detach().contiguous().requires_grad_(), up.detach().contiguous().requires_grad_()
    y_c = act_tri.swiglu_triton(g, u)
    assert torch.equal(y_c, y)
    dg, du = torch.autograd.grad((y_c * dy).sum(), [g, u])
    assert torch.equal(torch.cat([dg, du], -1), grad)
    with pytest.raises(ValueError, match="one shape"):
        act_tri.swiglu_triton(g, u[..., :-1])


def _aten_ops_of(fn) -> list[str]:
    """The aten ops `fn()` runs (forward and backward alike), by name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    seen = []
    with Record():
        fn()
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_of_one_product_gives_its_gradient_whole(dtype):
    """`swiglu_packed_triton(gate_up)`: the same output and gradient bits as `swiglu_triton` on gate_up's halves (and
    within the bounds above of the reference), the gradient written as one tensor: no concatenation in its backward,
    where the halves' split concatenates dgate and dup (112 copies of [4, 2048, 17920] a real stage-2 step)."""
    gen = torch.Generator().manual_seed(3)
    gate_up = (3 * torch.randn(2, 9, 2 * 1030, generator=gen)).to(DEVICE, dtype).requires_grad_()
    dy = torch.randn(2, 9, 1030, generator=gen).to(DEVICE, dtype)
    y = act_tri.swiglu_packed_triton(gate_up)
    grad = torch.autograd.grad((y * dy).sum(), gate_up)[0]
    y_h = act_tri.swiglu_triton(*gate_up.split(1030, dim=-1))
    assert torch.equal(y, y_h) and torch.equal(grad, torch.autograd.grad((y_h * dy).sum(), gate_up)[0])
    y_r = act_ref.swiglu_packed_ref(gate_up)
    bound = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel(y, y_r) < bound and rel(grad, torch.autograd.grad((y_r * dy).sum(), gate_up)[0]) < bound
    assert "cat" not in _aten_ops_of(lambda: torch.autograd.grad(act_tri.swiglu_packed_triton(gate_up).sum(), gate_up))
    assert "cat" in _aten_ops_of(lambda: torch.autograd.grad(act_tri.swiglu_triton(*gate_up.chunk(2, -1)).sum(),
                                                             gate_up))  # what the one tensor saves
    with pytest.raises(ValueError, match="even last size"):
        act_tri.swiglu_packed_triton(gate_up[..., :-1])


def test_a_training_mlp_projecting_as_one_runs_no_concatenation():
    """The decoder's MLP with its gate and up as one product (distillation's `project_as_one`) hands that product to
    the packed SwiGLU whole: its backward runs no `cat` (the forward's one is the weights', [2I, hidden]), and gives
    the separate projections' values."""
    from conftest import tiny_model
    from jet_nemotron.fused_projections import set_projections_as_one

    mlp = tiny_model().model.layers[0].mlp.to(DEVICE)
    mlp.config.kernel_backend = "triton"
    x = torch.randn(2, 7, mlp.config.hidden_size, device=DEVICE, requires_grad=True)
    y_sep = mlp(x)
    g_sep = torch.autograd.grad(y_sep.sum(), [x, mlp.gate_proj.weight])
    set_projections_as_one(mlp)
    y_one = mlp(x)
    g_one = []
    ops = _aten_ops_of(lambda: g_one.extend(torch.autograd.grad(y_one.sum(), [x, mlp.gate_proj.weight])))
    assert "cat" not in ops and "mm" in ops
    assert rel(y_one, y_sep) < 1e-6 and all(rel(a, b) < 1e-5 for a, b in zip(g_one, g_sep))


@pytest.mark.parametrize("with_hist", [True, False])
def test_dynamic_conv_varlen(with_hist):
    lens = [2, 40, 17]  # one sequence shorter than the kernel width
    C, KW = 80, 4
    x, kern, hist = make_conv(1, sum(lens), C, KW, torch.float32, 3 if with_hist else 0, n_seq=3)
    cu = torch.tensor([0, 2, 42, 59], device=DEVICE)
    y = conv_tri.dynamic_conv_triton(x, kern, hist, cu)
    y_r = conv_ref.dynamic_conv_ref(x, kern, hist, cu)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), [x, kern])
    grads_r = torch.autograd.grad((y_r * dy).sum(), [x, kern])
    assert rel(y, y_r) < 1e-5  # fp32, a 4-term sum
    for a, b in zip(grads, grads_r):
        assert rel(a, b) < 1e-5


# the one-kernel backward on the packed case only: it walks tokens one by one, 17 s a batch of two in the interpreter
@pytest.mark.parametrize("fused, B, T, lens", [(False, 2, 70, None), (False, 1, 59, [2, 40, 17]),
                                               (True, 1, 59, [2, 40, 17])])
def test_dynamic_conv_reads_a_slice_of_a_wider_product_in_place(monkeypatch, fused, B, T, lens):
    """x as a JetBlock hands it over (its v: a column slice of the block's one product, tokens a row apart) is read
    where it lies, without a copy, and gives the contiguous x's output and gradients bit for bit, both backwards."""
    monkeypatch.setattr(conv_tri, "FUSED_BWD", fused)
    C, KW = 80, 4
    x, kern, hist = make_conv(B, T, C, KW, torch.float32, 3, n_seq=None if lens is None else len(lens))
    cu = None if lens is None else torch.tensor([0] + list(itertools.accumulate(lens)), device=DEVICE)
    wide = torch.cat([torch.randn(B, T, 7, device=DEVICE), x.detach(), torch.randn(B, T, 5, device=DEVICE)], -1)
    wide.requires_grad_()
    x_in = wide[..., 7:7 + C]
    ops = _aten_ops_of(lambda: conv_tri.dynamic_conv_triton(x_in, kern, hist, cu))
    assert "clone" not in ops  # what .contiguous() runs (the interpreter copies arguments itself)
    dy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    y, y_in = conv_tri.dynamic_conv_triton(x, kern, hist, cu), conv_tri.dynamic_conv_triton(x_in, kern, hist, cu)
    assert torch.equal(y_in, y)
    (dx, dk), (dw, dk_in) = (torch.autograd.grad((o * dy).sum(), [a, kern]) for o, a in ((y, x), (y_in, wide)))
    assert torch.equal(dw[..., 7:7 + C], dx) and torch.equal(dk_in, dk) and not dw[..., :7].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# 140 tokens in blocks of 64 (FUSED_BT): the second block crosses into row 2, the third is partial
@pytest.mark.parametrize("B, T, hist_len, lens", [(2, 70, 0, None),
                                                   (2, 70, 3, None),  # each row's history, row 2's mid-block
                                                   (1, 59, 3, [2, 40, 17])])  # varlen, a sequence shorter than KW
def test_the_one_kernel_conv_backward_gives_the_two_kernels_gradients(monkeypatch, B, T, hist_len, lens, dtype):
    """dynamic_conv_triton.FUSED_BWD: dkernels as the two kernels give them, bit for bit (the same products), and dx
    to the order of its 4-term sums, across token blocks, sequence ends and the history."""
    C, KW = (300 if lens is None else 80), 4
    x, kern, hist = make_conv(B, T, C, KW, dtype, hist_len, n_seq=None if lens is None else len(lens))
    cu = None if lens is None else torch.tensor([0] + list(itertools.accumulate(lens)), device=DEVICE)
    dy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    grads = {}
    for fused in (False, True):
        monkeypatch.setattr(conv_tri, "FUSED_BWD", fused)
        y = conv_tri.dynamic_conv_triton(x, kern, hist, cu)
        grads[fused] = torch.autograd.grad((y * dy).sum(), [x, kern])
    (dx2, dk2), (dx1, dk1) = grads[False], grads[True]
    assert torch.equal(dk1, dk2)
    assert rel(dx1, dx2) < (1e-6 if dtype == torch.float32 else 1e-2)  # bf16: dx rounded once, from other sums
    y_r = conv_ref.dynamic_conv_ref(x, kern, hist, cu)
    dx_r = torch.autograd.grad((y_r * dy).sum(), [x])[0]
    assert rel(dx1, dx_r) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dynamic_conv_step_in_place(dtype):
    B, C, KW = 3, 200, 4
    gen = torch.Generator().manual_seed(0)
    state = torch.randn(B, C, KW, generator=gen).to(DEVICE, dtype)
    state_r = state.clone()
    for _ in range(5):
        x = torch.randn(B, C, generator=gen).to(DEVICE, dtype)
        kern = torch.randn(B, C, KW, generator=gen).to(DEVICE, dtype)
        y = conv_tri.dynamic_conv_step_triton(x, kern, state)
        y_r = conv_ref.dynamic_conv_step_ref(x, kern, state_r)
        assert torch.equal(state, state_r)  # a pure shift: bit-exact
        # fp32 4-term sum; bf16 rounds the output once
        assert rel(y, y_r) < (1e-5 if dtype == torch.float32 else 1e-2)


def _emulate_tf32_dots(monkeypatch):
    """Make the interpreter's fp32 tl.dot round its inputs to TF32 (10 mantissa bits) unless the dot asks for
    IEEE, as the GPU does by default: the one place a CPU run can see what TF32 costs."""
    import triton.runtime.interpreter as interp

    builder = getattr(interp, "InterpreterBuilder", None)
    round_tf32 = getattr(interp, "_round_f32_to_tf32", None)
    if builder is None or round_tf32 is None or not hasattr(builder, "create_dot"):
        pytest.skip("this Triton's interpreter has no create_dot / _round_f32_to_tf32 to emulate TF32 with")
    import triton.language as tl

    plain = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype == tl.float32 and b.dtype == tl.float32 and "ieee" not in str(input_precision).lower():
            a = interp.TensorHandle(round_tf32(a.data), a.dtype)
            b = interp.TensorHandle(round_tf32(b.data), b.dtype)
        return plain(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(builder, "create_dot", create_dot)


@pytest.mark.skipif(CUDA, reason="CPU interpreter only: on the GPU test_gpu_model.py measures real TF32")
def test_projections_as_one_feed_the_kernels_their_views():
    """Projected as one product (`set_projections_as_one`), q/k/v/g/a/b reach the kernels as slices of one output,
    not separate tensors: the kernels' training gradients must not change (tiny model, fp32)."""
    from conftest import tiny_model
    from jet_nemotron.fused_projections import set_projections_as_one

    ids = torch.randint(3, 128, (2, 70), generator=torch.Generator().manual_seed(0))

    def grads(as_one):
        model = tiny_model(kernel_backend="triton").train()
        set_projections_as_one(model, as_one)
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    sep, one = grads(False), grads(True)
    assert set(sep) == set(one)
    for n, g in sep.items():
        # the decay's gradient (A_log, dt_bias) is the small rest of cancelling terms (see the TF32 test below):
        # one product against seven, and the norm kernels' fp32 reduction order, move it by up to 1.7e-4
        # (measured at 130 tokens a row; 7e-5 with the norms on the reference path), everything else by at most 5e-5
        bound = 5e-4 if n.endswith(("A_log", "dt_bias")) else 1e-4
        assert rel(one[n], g) < bound, (n, rel(one[n], g))


@pytest.mark.skipif(CUDA, reason="CPU interpreter only: it emulates TF32 in the interpreter's dots, on CPU tensors")
def test_model_gradients_under_emulated_tf32(monkeypatch):
    """fp32 training gradients of a tiny model (dk 16) through the kernels, with the interpreter's dots rounding
    their inputs to TF32 wherever a kernel asks for TF32, against the exact reference path.

    By default (torch's fp32 matmul precision "highest") every fp32 product asks for IEEE, so the emulation must
    change nothing. With TF32 allowed, the output kernel still runs IEEE: under a strong decay an output is mostly
    its own q.k v' product and the decay's gradient is the small rest; with that product in TF32 the A_log gradient
    was 20% off (worst 2e-1). Measured with TF32 allowed: worst 1.3e-2 (dt_bias), median 2.4e-3; the bound 3e-2 is
    TF32's 5e-4 per product through four deliberately large-weight layers forward and back."""
    from conftest import tiny_model

    ids = torch.randint(3, 128, (2, 130), generator=torch.Generator().manual_seed(0))

    def grads(backend):
        model = tiny_model(kernel_backend=backend).train()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, exact = grads("reference"), grads("triton")
    _emulate_tf32_dots(monkeypatch)
    default = grads("triton")
    for n, g in exact.items():  # nothing asked for TF32: bit-identical to the unemulated run
        assert torch.equal(default[n], g), n
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed, as `allow_tf32 = True` sets it on older torch
    try:
        tf32 = grads("triton")
    finally:
        torch.set_float32_matmul_precision(old)
    err_exact = {n: rel(exact[n], g) for n, g in ref.items()}
    err_tf32 = {n: rel(tf32[n], g) for n, g in ref.items()}
    # the emulation must bite, or this test would measure nothing: exact fp32 dots agree to ~1e-5
    assert sorted(err_tf32.values())[len(ref) // 2] > 10 * sorted(err_exact.values())[len(ref) // 2]
    worst = max(err_tf32, key=err_tf32.get)
    assert err_tf32[worst] < 3e-2, (worst, err_tf32[worst])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,top1,focus", [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (1.0, 0.3, 0.0), (2.0, 0.3, 0.0),
                                                    (2.0, 0.0, 1.5), (1.0, 0.3, 2.0)])
def test_kl_rows_kernel_matches_its_reference(dtype, temperature, top1, focus):
    """The fused KL's per-chunk kernel (convert/kl_rows_triton.py) against `kl.kl_rows`: a vocabulary that is no
    multiple of the block (the last block is partial) and logits up to +-60, where an exp without its running max
    overflows; with a top1 share, teacher rows whose first choice is tied (in one block, in one lane of two blocks,
    in two lanes of two blocks), where torch.argmax takes the lowest index; with a focus, each row weighed by the
    teacher's uncertainty (rows from near-one-hot to flat). GPU: the real vocabulary and block."""
    from convert.kl import kl_rows
    from convert.kl_rows_triton import BLOCK, kl_rows_triton

    n, V, block = (64, 151936, BLOCK) if CUDA else (5, 300, 64)
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(n, V, generator=g) * 6).clamp(-60, 60)
    t = s + torch.randn(n, V, generator=g)
    s[0, :3], t[1, -1] = 60.0, -60.0
    for row, (a, b) in zip((2, 3, 4), ((20, 10), (block + 5, 5), (block + 6, 3))):
        t[row, a] = t[row, b] = 80.0  # exact in bf16 too
    s, t = s.to(DEVICE, dtype), t.to(DEVICE, dtype)
    kl, d = kl_rows_triton(s, t, temperature, top1, focus, block=block)
    kl_ref, d_ref = kl_rows(s, t, temperature, top1, focus)
    assert kl.dtype == torch.float32 and d.dtype == dtype and d.shape == (n, V)
    assert (kl >= -1e-6).all() and rel(kl, kl_ref) < 1e-5
    assert rel(d.float(), d_ref.float()) < (1e-5 if dtype == torch.float32 else 1e-2)
    # the share lands on one entry a row, the first of a tie: no other entry may differ by more than rounding
    assert (d.float() - d_ref.float()).abs().max() < (1e-5 if dtype == torch.float32 else 1e-2)
    if top1:
        assert torch.equal(kl_ref, kl_rows(s, t, temperature, top1, focus)[0])
        assert not torch.allclose(kl_ref, kl_rows(s, t, temperature, 0.0, focus)[0], rtol=1e-2)
    if focus:  # the weights must bite: the rows' teacher maxima span sure and unsure
        assert not torch.allclose(kl_ref, kl_rows(s, t, temperature, top1)[0], rtol=1e-2)


def test_the_fused_kl_with_the_kernel_gives_the_reference_gradients():
    from convert.kl import chunked_kl

    g = torch.Generator().manual_seed(1)
    hs = torch.randn(37, 16, generator=g, device="cpu").to(DEVICE).requires_grad_(True)
    ws = torch.randn(300, 16, generator=g).to(DEVICE).requires_grad_(True)
    ht, wt = torch.randn(37, 16, generator=g).to(DEVICE), torch.randn(300, 16, generator=g).to(DEVICE)
    out = {}
    for top1, focus in ((0.0, 0.0), (0.25, 0.0), (0.0, 2.0)):
        for kernel in (True, False):
            loss = chunked_kl(hs, ws, ht, wt, chunk=8, temperature=1.5, kernel=kernel, top1=top1, focus=focus)
            out[kernel] = (loss.item(), *torch.autograd.grad(loss, (hs, ws)))
        assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
        assert rel(out[True][1], out[False][1]) < 1e-5 and rel(out[True][2], out[False][2]) < 1e-5


def test_a_distillation_with_the_kl_kernel_trains_as_the_reference(monkeypatch):
    """DistillConfig.kl_kernel: the same losses as without it (tiny teacher and student, fp32, in the interpreter
    on the CPU); asked for on a CPU without the interpreter, or without the fused KL, it is refused before a step."""
    from convert.distill import DistillConfig, distill
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model
    from test_convert_conversion import tiny_qwen

    teacher = tiny_qwen("qwen2", layers=2, seed=0)
    rows = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for kernel in (True, False):
        student = convert_model(teacher, parse_spec("jet,attn"))
        cfg = DistillConfig(stage=2, steps=3, batch_size=4, micro_batch=4, lr=1e-3, warmup_steps=1, log_every=1,
                            kl_kernel=kernel, kl_chunk=16)
        losses.append([h["kl"] for h in distill(student, teacher, rows, cfg)["history"]])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    with pytest.raises(ValueError, match="needs fused_kl"):
        DistillConfig(stage=2, steps=1, kl_kernel=True, fused_kl=False).resolved()
    if not CUDA:
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="runs on CUDA, not on cpu"):
            distill(student, teacher, rows, DistillConfig(stage=2, steps=1, batch_size=4, micro_batch=4, kl_kernel=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 4095, 4096 * 3 + 17])  # one element; a partial block; several blocks and a rest
def test_normalised_mse_kernel_matches_its_reference(dtype, n):
    """Stage 1's attention-output loss (convert/normalised_mse_triton.py) against `distill_loss.normalised_mse`: the loss
    and the student's gradient, with an upstream gradient that is not 1 (a weighted mean of layers), and the
    reference's clamp of a target that is all zeros. GPU: a real [8, 2048, 1536] output too."""
    from convert.distill_loss import normalised_mse
    from convert.normalised_mse_triton import normalised_mse_triton

    g = torch.Generator().manual_seed(0)
    shapes = [(n,)] + ([(8, 2048, 1536)] if CUDA else [])
    for shape in shapes:
        t = torch.randn(shape, generator=g).to(DEVICE, dtype)
        for target in (t, torch.zeros_like(t)):
            s = (t.float() + 0.3 * torch.randn(shape, generator=g).to(DEVICE)).to(dtype).requires_grad_(True)
            got, want = normalised_mse_triton(s, target), normalised_mse(s, target)
            assert got.dtype == torch.float32 and got.shape == ()
            assert got.item() == pytest.approx(want.item(), rel=1e-5)
            (d_got,), (d_want,) = torch.autograd.grad(got * 0.25, s), torch.autograd.grad(want * 0.25, s)
            assert d_got.dtype == dtype
            # bf16: the two round the same fp32 gradient computed in another order
            assert rel(d_got.float(), d_want.float()) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_normalised_mse_kernel_refuses_what_it_does_not_do():
    from convert.normalised_mse_triton import normalised_mse_triton

    with pytest.raises(ValueError, match="of one shape"):
        normalised_mse_triton(torch.zeros(3, device=DEVICE), torch.zeros(4, device=DEVICE))
    with pytest.raises(ValueError, match="no gradient for the target"):
        normalised_mse_triton(torch.zeros(3, device=DEVICE), torch.zeros(3, device=DEVICE, requires_grad=True))


def test_attention_transfer_with_the_mse_kernel_trains_as_the_reference(monkeypatch):
    """DistillConfig.mse_kernel: an attention-transfer stage gives the reference's losses step by step (tiny teacher
    and student, fp32, in the interpreter on the CPU); asked for on a CPU without the interpreter, it is refused
    before a step."""
    from convert.distill import DistillConfig, distill
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model
    from test_convert_conversion import tiny_qwen

    teacher = tiny_qwen("qwen2", layers=3, seed=0)
    rows = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for kernel in (True, False):
        student = convert_model(teacher, parse_spec("jet,attn,jet"))
        cfg = DistillConfig(stage=1, steps=3, batch_size=4, micro_batch=2, lr=1e-3, warmup_steps=1, log_every=1,
                            mse_kernel=kernel)
        assert cfg.resolved().local
        losses.append([h["mse"] for h in distill(student, teacher, rows, cfg)["history"]])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0][-1] < losses[0][0]
    if not CUDA:
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="attention-MSE kernel .* runs on CUDA, not on cpu"):
            distill(student, teacher, rows, DistillConfig(stage=1, steps=1, batch_size=4, micro_batch=2,
                                                          mse_kernel=True))


def test_on_the_kernels_a_teacher_gives_its_own_final_states(monkeypatch):
    """The teacher's norms, MLPs and rotary embedding forced onto the kernels (convert/teacher_kernels.py; in fp32 on
    the CPU interpreter, whose bf16 is not the card's): its final states equal its eager ones to fp32 rounding, every
    norm, MLP and attention's rotary through a kernel."""
    from convert import teacher_kernels
    from convert.teacher_kernels import with_teacher_kernels
    from test_convert_conversion import tiny_qwen

    monkeypatch.setenv("JET_NEMOTRON_KERNELS", "triton")
    teacher = tiny_qwen("qwen3", layers=2).to(DEVICE)
    fast, n = with_teacher_kernels(teacher)
    ids = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    calls = []
    for name in ("rmsnorm", "swiglu", "rope"):
        real = getattr(teacher_kernels, name)
        monkeypatch.setattr(teacher_kernels, name, lambda *a, _n=name, _f=real, **k: calls.append(
            (_n, k.get("backend", "auto"), k.get("act_rounded"))) or _f(*a, **k))
    with torch.inference_mode():
        with teacher_kernels.rope_kernels(fast):
            got = fast.model(input_ids=ids).last_hidden_state
        want = teacher.model(input_ids=ids).last_hidden_state
    # two norms a layer, the final norm, Qwen3's q / k norms; an MLP and an attention a layer
    assert n == {"rmsnorm": 2 * 2 + 1 + 2 * 2, "swiglu": 2, "rope": 2}
    assert calls.count(("rmsnorm", "auto", None)) == 9 and calls.count(("swiglu", "auto", True)) == 2
    assert calls.count(("rope", "auto", None)) == 2
    assert rel(got, want) < 1e-5


def test_swiglu_with_the_activation_rounded_is_eager_low_precision():
    """`act_rounded` (a frozen teacher's MLP): silu(gate) rounded to the inputs' dtype, then the product rounded, as
    eager PyTorch's `F.silu(gate) * up`. bf16 on CUDA; fp16 in the CPU interpreter, whose bf16 casts do not round to
    nearest as a card does (NumPy has no bf16; its fp16 rounds as the card). The kernel's sigmoid is not PyTorch's to
    the last fp32 bit, so a rare silu(gate) rounds the other way, one step, which the product carries: at most two
    steps of the output, on a few of 135,000 values (27 here). Without the flag the rounding is once, and many values
    differ."""
    dtype = torch.bfloat16 if CUDA else torch.float16
    gen = torch.Generator().manual_seed(7)
    gate, up = (3 * torch.randn(2, 30, 4500, generator=gen)).to(DEVICE, dtype).unbind(0)
    eager = torch.nn.functional.silu(gate) * up
    y = act_tri.swiglu_triton(gate, up, act_rounded=True)
    assert torch.equal(act_ref.swiglu_ref(gate, up, act_rounded=True), eager)
    off = y != eager
    step = 2 * torch.finfo(dtype).eps * eager.float().abs()
    assert off.sum() <= 60 and bool(((y.float() - eager.float()).abs() <= step)[off].all()), int(off.sum())
    once = act_tri.swiglu_triton(gate, up)
    assert (once != eager).float().mean() > 0.05  # the flag is what makes the two roundings


@pytest.mark.parametrize("B, Hq, Hk, L, table", [(2, 3, 1, 45, "expanded"), (1, 2, 2, 64, "expanded"),
                                                  (3, 2, 1, 45, "one")])
def test_the_rotary_kernel_is_eager_low_precision_bit_for_bit(B, Hq, Hk, L, table):
    """q, k as the transposed head views of a projection; cos and sin expanded over the batch (stride 0), or one
    [1, L, D] table for it (transformers' default position ids); L not a multiple of the block: each product rounded,
    then the sum, as eager PyTorch. bf16 on CUDA; fp16 in the CPU interpreter, whose bf16 casts do not round to
    nearest as a card does. Outputs keep the inputs' strides."""
    dtype = torch.bfloat16 if CUDA else torch.float16
    D = 32
    gen = torch.Generator().manual_seed(3)
    q = (2 * torch.randn(B, L, Hq * D, generator=gen)).to(DEVICE, dtype).view(B, L, Hq, D).transpose(1, 2)
    k = (2 * torch.randn(B, L, Hk * D, generator=gen)).to(DEVICE, dtype).view(B, L, Hk, D).transpose(1, 2)
    ang = torch.arange(L)[:, None] * (10000.0 ** (-torch.arange(D // 2) / (D // 2)))[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = (f(ang).to(DEVICE, dtype)[None].expand(B if table == "expanded" else 1, L, D)
                for f in (torch.cos, torch.sin))
    want = rope_ref.rope_ref(q, k, cos, sin)
    got = rope_triton.rope_triton(q, k, cos, sin)
    for g, w, x in zip(got, want, (q, k)):
        assert g.stride() == x.stride() and torch.equal(g, w)
    once = (q.float() * cos[:, None].float() + rope_ref._rotate_half(q).float() * sin[:, None].float()).to(dtype)
    with pytest.raises(ValueError, match="one batch"):
        rope_triton.rope_triton(q, k, cos[:, :-1], sin[:, :-1])
    assert not torch.equal(once, want[0])  # the roundings are what the kernel must reproduce
    with pytest.raises(RuntimeError, match="forward only"):
        rope_triton.rope_triton(q.detach().requires_grad_(), k, cos, sin)


def _chunk_bwd_sweep():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import chunk_bwd_sweep

    return chunk_bwd_sweep


def test_the_chunk_backward_sweep_checks_each_launch_against_the_default(tmp_path):
    """benchmarks/chunk_bwd_sweep.py: every launch config of the per-chunk backward gives the default's gradients
    (fp32: to the summation order of the V slices), one that cannot be built is recorded with its error, not fatal,
    and the default is back in `launch.CHUNK_BWD` afterwards."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    sweep = _chunk_bwd_sweep()
    before = json.dumps(launch.CHUNK_BWD)
    # the interpreter multiplies bf16 dots wrongly (test_chunk_bf16_small), so fp32 there; the training dtype on CUDA
    dtype, key = (torch.bfloat16, "16-bit") if CUDA else (torch.float32, "fp32")
    run = sweep.gradients_of(1, 70, 2, 32, 64, dtype, DEVICE)  # two chunks, the second partial
    default = dict(launch.CHUNK_BWD[key])
    other = dict(default, BV=64 if default["BV"] == 32 else 32, num_warps=4)
    summed = dict(default, sum_sds=not default["sum_sds"])  # S * dS reduced the other way: the same gradients
    configs = [default, other, dict(BV=48, num_warps=4, stages=2, sum_sds=False), summed]
    rows = sweep.sweep(run, configs, key, sweep.BOUND[dtype], None)
    assert rows[0]["default"] and rows[0]["ok"] and rows[0]["max_rel_err"] == 0.0
    assert rows[1]["ok"] and 0 <= rows[1]["max_rel_err"] < sweep.BOUND[dtype] and not rows[1]["default"]
    assert "power of 2" in rows[2]["error"] and "ok" not in rows[2]  # tl.arange over a BV of 48
    assert all(r["ok"] and r["max_rel_err"] < sweep.BOUND[dtype] and not r["default"] for r in rows[3:])
    assert json.dumps(launch.CHUNK_BWD) == before
    if not CUDA:  # the script's own --toy run (the interpreter), written stamped
        res = sweep.main(["--toy", "--out", str(tmp_path), "--bv", "32,64", "--warps", "4", "--stages", "2",
                          "--sum-sds", "0,1"])
        saved = json.loads((tmp_path / "chunk_bwd_sweep.json").read_text())
        assert saved["configs"] == res["configs"] and saved["stamp"][0]["card"] == "cpu"
        # the default first, not repeated; then 2 BV x 2 ways to sum S * dS
        assert [r["default"] for r in saved["configs"]] == [True] + [False] * 4
        assert sorted(r["sum_sds"] for r in saved["configs"][1:]) == [False, False, True, True]
        assert all(r["ok"] for r in saved["configs"]) and saved["fastest"] is None  # nothing timed on the CPU


def test_the_chunk_backward_sweep_marks_other_gradients_and_restores_the_default():
    """A config whose gradients leave the default's is marked and not timed; a run that fails midway still leaves
    the default launch in place."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    sweep = _chunk_bwd_sweep()
    before = json.dumps(launch.CHUNK_BWD)
    base = (torch.ones(4), torch.ones(3), None)

    def run():  # a miscompiled launch: BV 64's first gradient is off by 10%
        return (base[0] * 1.1, *base[1:]) if launch.CHUNK_BWD["16-bit"]["BV"] == 64 else base

    launch.CHUNK_BWD["16-bit"] = dict(BV=32, num_warps=8, stages=2)
    try:
        configs = [dict(BV=32, num_warps=8, stages=2), dict(BV=64, num_warps=8, stages=2)]
        rows = sweep.sweep(run, configs, "16-bit", 2e-2, timer=lambda fn: 1.0)
    finally:
        launch.CHUNK_BWD = json.loads(before)
    assert rows[0]["ok"] and rows[0]["ms"] == 1.0
    assert rows[1]["ok"] is False and abs(rows[1]["max_rel_err"] - 0.1) < 1e-6 and "ms" not in rows[1]

    calls = []

    def broken():  # the reference run passes, the first config's is interrupted
        calls.append(dict(launch.CHUNK_BWD["16-bit"]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return base

    with pytest.raises(KeyboardInterrupt):
        sweep.sweep(broken, configs[::-1], "16-bit", 2e-2, None)
    assert calls[1]["BV"] == 64 and json.dumps(launch.CHUNK_BWD) == before
