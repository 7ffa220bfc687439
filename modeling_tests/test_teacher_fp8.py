"""The teacher's MLPs in FP8 (convert/teacher_fp8.py): the rounding, its reference against the CUDA product, the
swap, and a distillation that takes its targets from the FP8 copy and its held-out KL from the teacher itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convert.distill import DistillConfig, distill
from convert.layer_map import parse_spec
from convert.qwen_to_jet import convert_model
from convert.teacher_fp8 import Fp8Linear, fp8_linear, fp8_linear_ref, quantize_rows, with_fp8_mlps
from convert.teacher_kernels import with_teacher_kernels

from test_convert_conversion import tiny_qwen

CUDA = torch.cuda.is_available()


def test_rows_round_to_e4m3_with_their_largest_entry_at_448():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, generator=g) * torch.logspace(-3, 3, 6)[:, None]
    x[2] = 0.0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (6, 1) and scale.dtype == torch.float32
    back = q.float() * scale
    assert torch.equal(back[2], torch.zeros(64)) and scale[2].item() == 1.0
    # e4m3 keeps 3 mantissa bits: a normal entry within 1/16 of itself; the row's largest is exact
    top = x.abs().argmax(-1)
    assert torch.allclose(back.gather(-1, top[:, None]), x.gather(-1, top[:, None]), rtol=1e-6)
    normal = x.abs() >= scale * 2 ** -6
    assert ((back - x).abs() <= x.abs() / 16 + 1e-30)[normal].all()
    assert ((back - x).abs() <= scale * 2 ** -9)[~normal].all()  # the subnormals' step


def test_the_reference_product_is_the_rounded_factors_product_and_near_the_exact_one():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 48, bias=True)
    x = torch.randn(3, 5, 64, generator=g)
    f = Fp8Linear(lin)
    got = f(x)
    xq, xs = quantize_rows(x.reshape(-1, 64))
    want = (xq.float() * xs) @ (f.w_q.float() * f.w_scale).t() + lin.bias
    assert got.shape == (3, 5, 48) and torch.allclose(got.reshape(-1, 48), want, atol=1e-6)
    exact = lin(x)
    err = (got - exact).norm() / exact.norm()
    assert 1e-3 < err < 0.06  # FP8 rounds (it is not the exact product), by a few percent at most


@pytest.mark.skipif(not CUDA, reason="torch._scaled_mm is CUDA's (Hopper or newer for e4m3)")
def test_on_cuda_the_fp8_product_is_its_reference_to_bf16_rounding():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8960, 1536, generator=g).cuda().bfloat16()
    x = torch.randn(4, 2048, 1536, generator=g).cuda().bfloat16()
    w_q, w_scale = quantize_rows(w)
    got, want = fp8_linear(x, w_q, w_scale), fp8_linear_ref(x, w_q, w_scale)
    assert got.dtype == torch.bfloat16 and (got.float() - want.float()).norm() / want.float().norm() < 5e-3


def test_the_fp8_copy_swaps_every_mlp_projection_and_leaves_the_teacher_as_it_was():
    teacher = tiny_qwen("qwen2", layers=3, seed=0)
    before = {n: p.clone() for n, p in teacher.state_dict().items()}
    for model in (teacher, with_teacher_kernels(teacher)[0]):  # eager MLPs, and the kernel copy's KernelMLPs
        fp8, n = with_fp8_mlps(model)
        assert n == 9 and sum(isinstance(m, Fp8Linear) for m in fp8.modules()) == 9
        assert not any(isinstance(m, Fp8Linear) for m in model.modules())
        assert fp8.model.embed_tokens.weight is model.model.embed_tokens.weight  # the rest shared, not copied
        ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            a, b = model(input_ids=ids).logits, fp8(input_ids=ids).logits
        assert not torch.equal(a, b) and (a - b).norm() / a.norm() < 0.1  # a random tiny model; the real one: NOTES
    for n, p in teacher.state_dict().items():
        assert torch.equal(p, before[n]), n


def test_a_stage_with_an_fp8_teacher_trains_on_its_targets_and_measures_against_the_teacher(monkeypatch, capsys):
    """teacher_fp8: the targets come from the FP8 copy (the training KL moves), the held-out KL from the teacher
    itself (the same as without before any step); the first log line counts the FP8 projections."""
    import convert.distill as d

    teacher = tiny_qwen("qwen2", layers=2, seed=0)
    rows = torch.randint(0, 101, (12, 32), generator=torch.Generator().manual_seed(1))
    runs, seen = [], []
    real = d.teacher_targets
    monkeypatch.setattr(d, "teacher_targets", lambda t, *a, **k: seen.append(t) or real(t, *a, **k))
    for fp8 in (False, True):
        student = convert_model(teacher, parse_spec("jet,attn"))
        cfg = DistillConfig(stage=2, steps=2, batch_size=4, micro_batch=4, lr=1e-3, warmup_steps=0, log_every=1,
                            teacher_fp8=fp8)
        runs.append(distill(student, teacher, rows[:8], cfg, eval_rows=rows[8:]))
    assert not any(isinstance(m, Fp8Linear) for t in seen[:2] for m in t.modules())
    assert all(sum(isinstance(m, Fp8Linear) for m in t.modules()) == 6 for t in seen[2:])
    assert runs[1]["eval_kl_before"] == pytest.approx(runs[0]["eval_kl_before"], rel=1e-6)
    assert runs[1]["history"][0]["kl"] != runs[0]["history"][0]["kl"]
    assert runs[1]["history"][0]["kl"] == pytest.approx(runs[0]["history"][0]["kl"], rel=0.1)
    assert "6 MLP projections in FP8 for the targets" in capsys.readouterr().out


def test_the_fp8_copy_takes_a_subset_of_the_projections_and_refuses_other_names():
    teacher = tiny_qwen("qwen2", layers=2, seed=0)
    fp8, n = with_fp8_mlps(teacher, ("gate_proj", "up_proj"))
    mlp = fp8.model.layers[0].mlp
    assert n == 4 and isinstance(mlp.gate_proj, Fp8Linear) and isinstance(mlp.down_proj, nn.Linear)
    for bad in ((), ("q_proj",)):
        with pytest.raises(ValueError, match="FP8 projections are some of"):
            with_fp8_mlps(teacher, bad)
    # another rounding in the same places (teacher_fp8_error.py --blocks): the swap calls it with each projection
    seen = []
    other, n = with_fp8_mlps(teacher, ("down_proj",), linear=lambda lin: seen.append(lin) or nn.Identity())
    assert n == 2 and isinstance(other.model.layers[1].mlp.down_proj, nn.Identity)
    # each the copy's projection, holding the teacher's own weight
    layers = teacher.model.layers
    assert len(seen) == 2 and all(a.weight is layer.mlp.down_proj.weight for a, layer in zip(seen, layers))


def test_a_card_without_fp8_products_is_refused_by_name(monkeypatch):
    from convert.teacher_fp8 import check_fp8_device

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match="NVIDIA A100-SXM4-80GB has no FP8 products .*8.9 or newer"):
        check_fp8_device(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    check_fp8_device(torch.device("cuda"))
    check_fp8_device(torch.device("cpu"))


def test_attention_transfer_takes_its_targets_from_the_fp8_teacher():
    """Stage 1 as attention transfer (`--teacher-fp8 1`, v11): the JetBlocks learn towards the FP8 copy's attention
    outputs, which differ from the teacher's, so the losses differ from the exact teacher's by a little."""
    teacher = tiny_qwen("qwen2", layers=2, seed=0)
    rows = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for fp8 in (False, True):
        # the JetBlock in layer 1, whose input and target the FP8 MLP of layer 0 moves (layer 0's attention has
        # no MLP below it)
        student = convert_model(teacher, parse_spec("attn,jet"))
        cfg = DistillConfig(stage=1, steps=2, batch_size=4, micro_batch=4, lr=1e-3, warmup_steps=0, log_every=1,
                            teacher_fp8=fp8)
        assert cfg.resolved().local
        losses.append([h["mse"] for h in distill(student, teacher, rows, cfg)["history"]])
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=0.2)
