"""Same-input projections as one product while training (`fused_projections.linears_as_one`): the same outputs and
gradients as separate projections, used only while gradients are recorded, switched off after a distillation."""

import pytest
import torch
from torch import nn

from conftest import tiny_model
from jet_nemotron import fused_projections
from jet_nemotron.fused_projections import linears_as_one, set_projections_as_one


@pytest.mark.parametrize("bias", [True, False])
def test_one_product_gives_each_linear_its_output_and_gradients(bias):
    torch.manual_seed(0)
    linears = [nn.Linear(16, n, bias=bias) for n in (8, 3, 24)]
    x = torch.randn(2, 5, 16, requires_grad=True)
    w = [torch.randn(2, 5, n) for n in (8, 3, 24)]

    def run(outputs):
        for lin in linears:
            lin.zero_grad(set_to_none=True)
        x.grad = None
        sum((o * wi).sum() for o, wi in zip(outputs, w)).backward()
        return [o.detach() for o in outputs], x.grad.clone(), [p.grad.clone() for lin in linears
                                                               for p in lin.parameters()]

    one, sep = run(linears_as_one(x, linears)), run([lin(x) for lin in linears])
    for a, b in zip(one[0] + [one[1]] + one[2], sep[0] + [sep[1]] + sep[2]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_mixed_biases_are_refused():
    with pytest.raises(ValueError, match="linears_as_one: some projections have a bias"):
        linears_as_one(torch.randn(2, 4), [nn.Linear(4, 2), nn.Linear(4, 2, bias=False)])
    from jet_nemotron.fused_projections import fuse_linears

    with pytest.raises(ValueError, match="cannot fuse qkv: some projections have a bias"):
        fuse_linears(nn.Module(), "qkv", [nn.Linear(4, 2), nn.Linear(4, 2, bias=False)])


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_model_trains_alike_with_its_projections_as_one(monkeypatch):
    """Every JetBlock, attention and MLP switched: one training step's loss and every parameter's gradient equal the
    separate projections' (fp32); without gradients the separate projections run, bit for bit as before."""
    model = tiny_model().train()
    ids = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    loss_sep, g_sep = _loss_and_grads(model, ids)
    with torch.no_grad():
        before = model(input_ids=ids, use_cache=False).logits
    switched = set_projections_as_one(model)
    assert len(switched) == 4 + 4  # the mixer and the MLP of each of the 4 layers
    calls = []
    real = fused_projections._as_one  # the one product of `linears_as_one` and `one_product` (the MLPs' while training)
    monkeypatch.setattr(fused_projections, "_as_one", lambda *a: calls.append(1) or real(*a))
    loss_one, g_one = _loss_and_grads(model, ids)
    assert len(calls) == 8 and loss_one == pytest.approx(loss_sep, rel=1e-6) and set(g_one) == set(g_sep)
    for name in g_sep:  # fp32 summation order, carried through the gated delta rule: ~2e-5 of a tensor's largest
        torch.testing.assert_close(g_one[name], g_sep[name], atol=1e-4 * g_sep[name].abs().max().item(),
                                   rtol=1e-4, msg=name)
    calls.clear()
    with torch.no_grad():
        after = model(input_ids=ids, use_cache=False).logits
    assert not calls and torch.equal(before, after)


def test_under_bf16_autocast_the_input_gradient_stays_within_bf16_of_fp32():
    torch.manual_seed(0)
    linears = [nn.Linear(64, n, bias=False) for n in (64, 64, 128, 128, 2, 2, 8)]  # a JetBlock's seven
    x = torch.randn(4, 32, 64)
    w = [torch.randn(4, 32, lin.out_features) for lin in linears]

    def grad_x(fn, autocast):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            outs = fn(xi)
        sum((o.float() * wi).sum() for o, wi in zip(outs, w)).backward()
        return xi.grad

    exact = grad_x(lambda xi: [lin(xi) for lin in linears], False)
    for fn in (lambda xi: linears_as_one(xi, linears), lambda xi: [lin(xi) for lin in linears]):
        got = grad_x(fn, True)
        assert got.dtype == torch.float32
        assert ((got - exact).norm() / exact.norm()).item() < 2e-2


def test_adapter_wrapped_projections_are_left_alone():
    """A projection that is not a plain nn.Linear (PEFT's LoRA wraps them) must run its own forward."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    switched = set_projections_as_one(model)
    assert switched and all(type(lin) is nn.Linear for m in switched for lin in m.same_input_linears())
    assert len(switched) == 4  # the 4 MLPs; every mixer holds a wrapped q_proj


def test_a_distillation_switches_them_on_for_its_steps_and_off_after(monkeypatch):
    """On for the stage's steps (the JetBlocks project as one), off for the caller's student afterwards, so it does
    not concatenate weights at every decode step; the same losses as a run with them off (fp32)."""
    from convert.distill import DistillConfig, distill
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model
    from test_convert_conversion import tiny_qwen

    teacher = tiny_qwen("qwen2", layers=4, seed=0)
    rows = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(1))
    seen, real = [], fused_projections._as_one
    monkeypatch.setattr(fused_projections, "_as_one", lambda *a: seen.append(1) or real(*a))
    losses = []
    for on in (True, False):
        student = convert_model(teacher, parse_spec("jet,attn,swa,jet"), window=8)
        cfg = DistillConfig(stage=2, steps=3, batch_size=4, micro_batch=4, lr=1e-3, warmup_steps=1, log_every=1,
                            projections_as_one=on)
        losses.append([h["loss"] for h in distill(student, teacher, rows, cfg)["history"]])
        assert bool(seen) is on and not any(getattr(m, "project_as_one", False) for m in student.modules())
        seen.clear()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_the_training_kernels_run_only_while_gradients_are_recorded(monkeypatch):
    """Training runs the MLP's silu(gate) * up through `ops.swiglu` and the decoder's norms through `ops.rmsnorm`
    (one kernel each way on CUDA); inference keeps the eager code, the official model's arithmetic. On the CPU's
    reference path both give the same fp32 values."""
    from jet_nemotron import modeling_jet_nemotron as modeling

    model = tiny_model()
    calls = []
    swiglu, rmsnorm = modeling.swiglu, modeling.rmsnorm
    monkeypatch.setattr(modeling, "swiglu", lambda g, u, backend: calls.append(("swiglu", backend))
                        or swiglu(g, u, backend))
    monkeypatch.setattr(modeling, "rmsnorm", lambda x, w, eps, backend: calls.append(("rmsnorm", backend))
                        or rmsnorm(x, w, eps, backend))
    ids = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids).logits
    assert calls == []
    fused = model(ids).logits
    n = model.config.num_hidden_layers
    assert calls.count(("swiglu", "auto")) == n and calls.count(("rmsnorm", "auto")) >= 2 * n + 1
    assert torch.equal(fused.detach(), eager)
    # the config's backend is read at each call, as the JetBlocks read it
    model.config.kernel_backend, calls[:] = "reference", []
    model(ids)
    assert calls and {backend for _, backend in calls} == {"reference"}
