"""The teacher's RMSNorms on `ops.rmsnorm` and its MLPs on `ops.swiglu` while it distils (`convert/teacher_kernels.py`):
each norm and MLP class's own arithmetic, a copy that shares every tensor and leaves the caller's teacher as it was,
and a distillation that trains alike with and without it."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from convert.distill import DistillConfig, distill
from convert.layer_map import parse_spec
from convert.qwen_to_jet import convert_model
from convert.teacher_kernels import KernelMLP, KernelRMSNorm, with_teacher_kernels

from test_convert_conversion import tiny_qwen


def _norms(model):
    from convert.teacher_kernels import NORM_CLASSES

    return [m for m in model.modules() if type(m).__name__ in NORM_CLASSES]


def _mlps(model):
    from convert.teacher_kernels import MLP_CLASSES

    return [m for m in model.modules() if type(m).__name__ in MLP_CLASSES]


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "jet"])
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32)])
def test_each_norm_class_gives_its_own_forward_bit_for_bit(kind, x_dtype, w_dtype):
    """On the CPU `ops.rmsnorm` is the reference: it must be the norm class's own arithmetic exactly, in every dtype
    pair a teacher runs (fp32; bf16 weights on a bf16 stream; fp32 weights under autocast)."""
    model = tiny_model() if kind == "jet" else tiny_qwen(kind)
    norm = _norms(model)[0]
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
    norm = norm.to(w_dtype)
    x = (torch.randn(3, 7, norm.weight.shape[0], generator=torch.Generator().manual_seed(0)) * 5).to(x_dtype)
    with torch.inference_mode():
        want, got = norm(x), KernelRMSNorm(norm)(x)
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "jet"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_mlp_class_gives_its_own_forward_bit_for_bit(kind, dtype):
    """On the CPU `ops.swiglu` with `act_rounded` is the reference: the MLP class's own eager arithmetic exactly, in
    fp32 and in bf16 (silu(gate) rounded to bf16 before the product, then the product rounded)."""
    model = (tiny_model() if kind == "jet" else tiny_qwen(kind)).to(dtype)
    mlp = _mlps(model)[0]
    x = (torch.randn(3, 7, mlp.gate_proj.in_features, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    with torch.inference_mode():
        want, got = mlp(x), KernelMLP(mlp)(x)
    assert got.dtype == want.dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_the_copy_shares_the_weights_and_leaves_the_teacher_as_it_was(kind):
    teacher = tiny_qwen(kind, layers=3)
    before = [type(m) for m in teacher.modules()]
    fast, n = with_teacher_kernels(teacher)
    # 2 a layer and the final norm; Qwen3 adds its q / k norms; one MLP a layer
    assert n == {"rmsnorm": 3 * 2 + 1 + (3 * 2 if kind == "qwen3" else 0), "swiglu": 3, "rope": 3}
    assert n["rmsnorm"] == sum(isinstance(m, KernelRMSNorm) for m in fast.modules())
    assert n["swiglu"] == sum(isinstance(m, KernelMLP) for m in fast.modules())
    assert [type(m) for m in teacher.modules()] == before and not any(
        isinstance(m, (KernelRMSNorm, KernelMLP)) for m in teacher.modules())
    ptrs = {p.data_ptr() for p in teacher.parameters()} | {b.data_ptr() for b in teacher.buffers()}
    assert {p.data_ptr() for p in fast.parameters()} | {b.data_ptr() for b in fast.buffers()} == ptrs
    ids = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(fast(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_a_silu_mlp_alone_is_swapped():
    """An MLP with another activation, or a Jet-Nemotron MLP fused for inference, keeps its own forward."""
    teacher = tiny_qwen("qwen2", layers=2)
    teacher.model.layers[0].mlp.config = type(teacher.config)(**{**teacher.config.to_dict(), "hidden_act": "gelu"})
    assert with_teacher_kernels(teacher)[1]["swiglu"] == 1
    jet = tiny_model()
    jet.model.layers[0].mlp.fuse_projections()
    assert with_teacher_kernels(jet)[1]["swiglu"] == len(jet.model.layers) - 1


def test_a_distillation_trains_alike_with_the_teacher_on_the_kernels(capsys):
    """One run each way (CPU: the reference, Qwen's arithmetic): the same losses step by step, the caller's teacher
    keeps its own modules, and the step log says how many norms and MLPs ran on the kernels."""
    teacher = tiny_qwen("qwen2", layers=4)
    lm = parse_spec("jet,attn,jet,jet")
    rows = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(2))
    hist = {}
    for on in (True, False):
        student = convert_model(teacher, lm).float()
        cfg = DistillConfig(stage=1, steps=3, batch_size=4, micro_batch=2, lr=1e-3, log_every=1, warmup_steps=1,
                            teacher_kernels=on)
        hist[on] = [(h["loss"], h["kl"]) for h in distill(student, teacher, rows, cfg)["history"]]
        out = capsys.readouterr().out
        assert f"teacher: {9 if on else 0} RMSNorms on ops.rmsnorm, {4 if on else 0} MLPs on ops.swiglu" in out
    assert len(hist[True]) == 3
    if torch.cuda.is_available():  # the kernels' fp32 sums run in another order than PyTorch's: the third step's
        # loss differed in its 8th digit on an H200 (2026-12-05)
        flat = {on: [x for step in h for x in step] for on, h in hist.items()}
        assert flat[True] == pytest.approx(flat[False], rel=1e-5, abs=1e-7)
    else:
        assert hist[True] == hist[False]
    assert not any(isinstance(m, (KernelRMSNorm, KernelMLP)) for m in teacher.modules())


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_teachers_rotary_on_ops_rope_is_its_own_bit_for_bit_and_only_inside(kind, dtype, monkeypatch):
    """`teacher_targets` of a kernel copy rotates q and k on `ops.rope` (called once a layer; on the CPU the
    reference, the attention's own eager arithmetic) and gives the eager teacher's targets exactly; the modeling
    module's own function is back afterwards, also after an error inside."""
    import sys

    import convert.teacher_kernels as tk
    from convert.distill_loss import teacher_targets
    from jet_nemotron.rope_ref import rope_ref

    teacher = tiny_qwen(kind, layers=3).to(dtype)
    fast, n = with_teacher_kernels(teacher)
    calls = []
    monkeypatch.setattr(tk, "rope", lambda *a: calls.append(1) or rope_ref(*a))
    module = sys.modules[type(fast.model.layers[0].self_attn).__module__]
    own = module.apply_rotary_pos_emb
    ids = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(1))
    want = teacher_targets(teacher, ids, [0, 2], inputs=True)
    got = teacher_targets(fast, ids, [0, 2], inputs=True)
    assert len(calls) == n["rope"] == 3 and module.apply_rotary_pos_emb is own
    for a, b in zip((want[0], *want[1], *want[2]), (got[0], *got[1], *got[2])):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)
    with pytest.raises(RuntimeError, match="inside"), tk.rope_kernels(fast):
        assert module.apply_rotary_pos_emb is tk._rope
        raise RuntimeError("inside")
    assert module.apply_rotary_pos_emb is own


def test_the_teachers_rotary_kernel_can_be_turned_off_for_a_run(monkeypatch):
    """JET_NEMOTRON_TEACHER_ROPE=0 (set by the GPU session where the kernel's card test failed): the copy keeps
    eager's rotary, and says so in its counts."""
    import convert.teacher_kernels as tk
    from convert.distill_loss import teacher_targets

    monkeypatch.setenv("JET_NEMOTRON_TEACHER_ROPE", "0")
    fast, n = with_teacher_kernels(tiny_qwen("qwen2", layers=2))
    calls = []
    monkeypatch.setattr(tk, "rope", lambda *a: calls.append(1))
    teacher_targets(fast, torch.randint(0, 101, (1, 9)), [])
    assert n["rope"] == 0 and tk.teacher_rope_count(fast) == 0 and calls == []
