"""Distillation: chunked KL equals the full KL, KL falls on CPU, a killed run resumes to identical weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convert.distill import DistillConfig, batch_rows, distill, param_groups
from convert.kl import chunked_kl
from convert.layer_map import parse_spec
from convert.qwen_to_jet import convert_model

from test_convert_conversion import tiny_qwen


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunk,temperature", [(1, 2.0), (7, 2.0), (64, 2.0), (1000, 2.0), (7, 1.0)])
def test_chunked_kl_matches_kl_div_forward_and_backward(chunk, temperature, fused):
    torch.manual_seed(0)
    hs = torch.randn(2, 19, 16, requires_grad=True)
    ws = torch.randn(50, 16, requires_grad=True)
    ht, wt = torch.randn(2, 19, 16), torch.randn(50, 16)
    got = chunked_kl(hs, ws, ht, wt, chunk=chunk, temperature=temperature, fused=fused)
    s, t = (hs @ ws.t()).flatten(0, 1) / temperature, (ht @ wt.t()).flatten(0, 1) / temperature
    want = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                    reduction="batchmean") * temperature ** 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g_got = torch.autograd.grad(got, (hs, ws))
    g_want = torch.autograd.grad(want, (hs, ws))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunk,temperature", [(7, 1.0), (1000, 2.0)])
def test_the_sharpened_kl_is_the_kl_to_the_teacher_with_a_share_moved_onto_its_first_choice(chunk, temperature, fused):
    """top1: the KL to q = (1 - top1) p_t + top1 onehot(argmax), q built here from full logits, forward and backward;
    its student optimum is q itself (a zero gradient there), which ranks the teacher's first choice further ahead."""
    torch.manual_seed(0)
    hs = torch.randn(2, 19, 16, requires_grad=True)
    ws = torch.randn(50, 16, requires_grad=True)
    ht, wt = torch.randn(2, 19, 16), torch.randn(50, 16)
    got = chunked_kl(hs, ws, ht, wt, chunk=chunk, temperature=temperature, fused=fused, top1=0.3)
    s, t = (hs @ ws.t()).flatten(0, 1) / temperature, (ht @ wt.t()).flatten(0, 1) / temperature
    q = 0.7 * F.softmax(t, -1) + 0.3 * F.one_hot(t.argmax(-1), 50)
    want = F.kl_div(F.log_softmax(s, -1), q, reduction="batchmean") * temperature ** 2
    plain = chunked_kl(hs, ws, ht, wt, chunk=chunk, temperature=temperature, fused=fused)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain, rtol=1e-2)
    for a, b in zip(torch.autograd.grad(got, (hs, ws)), torch.autograd.grad(want, (hs, ws))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # a student whose logits are log q: the loss and its gradient vanish
    s_opt = (q.log() * temperature).requires_grad_(True)
    at_q = chunked_kl(s_opt, torch.eye(50), (ht @ wt.t()).flatten(0, 1), torch.eye(50), chunk=chunk,
                      temperature=temperature, fused=fused, top1=0.3)
    (g,) = torch.autograd.grad(at_q, s_opt)
    assert abs(at_q.item()) < 1e-5 and g.abs().max() < 1e-6


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunk,temperature,top1", [(7, 1.0, 0.0), (1000, 2.0, 0.3)])
def test_the_focused_kl_weighs_each_token_by_the_teachers_uncertainty(chunk, temperature, top1, fused):
    """focus: mean over tokens of w KL, w = 1 + focus (1 - max p_t) built here from full logits, forward and
    backward (w a constant); tokens where the teacher is sure keep w = 1, and focus 0 is the plain mean."""
    torch.manual_seed(0)
    hs = torch.randn(2, 19, 16, requires_grad=True)
    ws = torch.randn(50, 16, requires_grad=True)
    ht, wt = torch.randn(2, 19, 16), torch.randn(50, 16)
    ht[0, :3] *= 30  # near one-hot teacher rows beside flat ones
    s, t = (hs @ ws.t()).flatten(0, 1) / temperature, (ht @ wt.t()).flatten(0, 1) / temperature
    p_t = F.softmax(t, -1)
    q = (1 - top1) * p_t + top1 * F.one_hot(t.argmax(-1), 50)
    w = 1 + 2.0 * (1 - p_t.amax(-1))
    assert w.min() < 1.01 and w.max() > 2.5  # the weights span sure and unsure tokens
    per_token = (q * (q.clamp_min(1e-30).log() - F.log_softmax(s, -1))).sum(-1)
    want = (w * per_token).mean() * temperature ** 2
    got = chunked_kl(hs, ws, ht, wt, chunk=chunk, temperature=temperature, fused=fused, top1=top1, focus=2.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(got, (hs, ws)), torch.autograd.grad(want, (hs, ws))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    plain = chunked_kl(hs, ws, ht, wt, chunk=chunk, temperature=temperature, fused=fused, top1=top1)
    assert torch.equal(chunked_kl(hs, ws, ht, wt, chunk=chunk, temperature=temperature, fused=fused, top1=top1,
                                  focus=0.0), plain)


@pytest.mark.parametrize("focus", [-0.5, float("nan"), float("inf")])
def test_a_negative_focus_is_refused(focus):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="focus weighs a token's KL"):
        chunked_kl(x, torch.randn(5, 8), x, torch.randn(5, 8), focus=focus)
    with pytest.raises(ValueError, match="kl_focus weighs"):
        DistillConfig(stage=2, kl_focus=focus).resolved()
    with pytest.raises(ValueError, match="weighs the KL's tokens, but this stage has no KL"):
        DistillConfig(stage=1, kl_focus=1.0).resolved()


def test_a_stage_with_a_focus_trains_on_the_focused_kl(monkeypatch, capsys):
    """DistillConfig.kl_focus reaches the stage's KL (and its first log line); the held-out KL stays the plain one."""
    import convert.distill_loss as distill_loss

    focuses = []
    real = distill_loss.chunked_kl
    monkeypatch.setattr(distill_loss, "chunked_kl", lambda *a, **k: focuses.append(k.get("focus")) or real(*a, **k))
    runs = []
    for focus in (0.0, 3.0):
        teacher, student, train, held = _setup()
        runs.append(distill(student, teacher, train, DistillConfig(stage=2, steps=2, batch_size=4, micro_batch=4,
                                                                   warmup_steps=0, log_every=1, kl_focus=focus),
                            eval_rows=held))
    assert focuses == [0.0, 0.0, 3.0, 3.0]
    assert runs[1]["history"][0]["kl"] > runs[0]["history"][0]["kl"] * 1.01  # w >= 1, > 1 at unsure tokens
    assert runs[1]["eval_kl_before"] == pytest.approx(runs[0]["eval_kl_before"], rel=1e-6)
    assert "each token's KL weighed by 1 + 3 (1 - the teacher's top probability)" in capsys.readouterr().out


@pytest.mark.parametrize("top1", [-0.1, 1.0, float("nan")])
def test_a_top1_share_outside_zero_to_one_is_refused(top1):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="first choice, in \\[0, 1\\)"):
        chunked_kl(x, torch.randn(5, 8), x, torch.randn(5, 8), top1=top1)
    with pytest.raises(ValueError, match="kl_top1 is the share"):
        DistillConfig(stage=2, kl_top1=top1).resolved()


@pytest.mark.parametrize("kw", [dict(stage=1), dict(stage=2, kl_weight=0.0, mse_weight=1.0)])
def test_a_top1_share_where_the_stage_has_no_kl_is_refused(kw):
    with pytest.raises(ValueError, match="sharpens the KL's target, but this stage has no KL"):
        DistillConfig(kl_top1=0.2, **kw).resolved()


def test_a_stage_with_a_top1_share_trains_on_the_sharpened_kl(monkeypatch, capsys):
    """DistillConfig.kl_top1 reaches the stage's KL (and its first log line); the held-out KL stays the plain one."""
    import convert.distill_loss as distill_loss

    shares = []
    real = distill_loss.chunked_kl
    monkeypatch.setattr(distill_loss, "chunked_kl", lambda *a, **k: shares.append(a[8]) or real(*a, **k))
    teacher, student, train, held = _setup()
    plain = distill(student, teacher, train, DistillConfig(stage=2, steps=2, batch_size=4, micro_batch=4,
                                                           warmup_steps=0, log_every=1), eval_rows=held)
    assert shares == [0.0, 0.0]
    teacher, student, train, held = _setup()
    sharp = distill(student, teacher, train, DistillConfig(stage=2, steps=2, batch_size=4, micro_batch=4,
                                                           warmup_steps=0, log_every=1, kl_top1=0.4), eval_rows=held)
    assert shares[2:] == [0.4, 0.4]
    assert sharp["history"][0]["kl"] != pytest.approx(plain["history"][0]["kl"], rel=1e-3)
    assert sharp["eval_kl_before"] == pytest.approx(plain["eval_kl_before"], rel=1e-6)
    assert "to the teacher with 0.4 of its mass on its first choice" in capsys.readouterr().out


def test_chunked_kl_under_bf16_autocast_gives_what_explicit_fp32_copies_gave():
    """Under autocast, at a temperature of 1, the fp32 softmax of the bf16 logits without the division by 1: the
    same loss and the same fp32 gradients as the explicit copy and division gave."""
    torch.manual_seed(0)
    hs = torch.randn(37, 16, requires_grad=True)
    ws = torch.randn(50, 16, requires_grad=True)
    ht, wt = torch.randn(37, 16), torch.randn(50, 16)

    def with_copies(chunk=8):  # the formulation before: .float() / T on every chunk's logits
        total = 0
        for i in range(0, 37, chunk):
            log_s = F.log_softmax((hs[i:i + chunk] @ ws.t()).float() / 1.0, dim=-1)
            log_t = F.log_softmax((ht[i:i + chunk] @ wt.t()).float() / 1.0, dim=-1)
            total = total + (log_t.exp() * (log_t - log_s)).sum()
        return total / 37

    with torch.autocast("cpu", torch.bfloat16):
        got, want = chunked_kl(hs, ws, ht, wt, chunk=8, fused=False), with_copies()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    g_got, g_want = torch.autograd.grad(got, (hs, ws)), torch.autograd.grad(want, (hs, ws))
    for a, b in zip(g_got, g_want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("trained", ["hidden", "head"])
def test_fused_kl_takes_only_the_gradients_asked_for_and_matches_the_reference(trained):
    """A frozen head (stage 1 end to end) or frozen hidden states: the fused KL gives the reference's gradient for
    what trains, and a loss scaled by the caller scales it."""
    torch.manual_seed(1)
    hs = torch.randn(23, 16, requires_grad=trained == "hidden")
    ws = torch.randn(50, 16, requires_grad=trained == "head")
    ht, wt = torch.randn(23, 16), torch.randn(50, 16)
    x = hs if trained == "hidden" else ws
    (g_fused,) = torch.autograd.grad(3.0 * chunked_kl(hs, ws, ht, wt, chunk=5, temperature=1.5), x)
    (g_ref,) = torch.autograd.grad(3.0 * chunked_kl(hs, ws, ht, wt, chunk=5, temperature=1.5, fused=False), x)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-6, rtol=1e-5)


def test_fused_kl_under_bf16_autocast_matches_the_reference():
    """Under autocast both run the products in bf16, so their gradients differ by bf16 rounding (the fused one rounds
    p_s - p_t once, the reference autograd's log-softmax backward): within 0.5% of each other, and the fused one no
    farther than the reference from the fp32 gradient."""
    torch.manual_seed(0)
    hs = torch.randn(37, 16, requires_grad=True)
    ws = torch.randn(50, 16, requires_grad=True)
    ht, wt = torch.randn(37, 16), torch.randn(50, 16)
    with torch.autocast("cpu", torch.bfloat16):
        fused, ref = chunked_kl(hs, ws, ht, wt, chunk=8), chunked_kl(hs, ws, ht, wt, chunk=8, fused=False)
    exact = chunked_kl(hs, ws, ht.bfloat16().float(), wt.bfloat16().float(), chunk=8, fused=False)
    torch.testing.assert_close(fused, ref, atol=1e-6, rtol=1e-6)
    grads = [torch.autograd.grad(x, (hs, ws)) for x in (fused, ref, exact)]
    for a, b, e in zip(*grads):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).norm() / b.norm() < 5e-3
        assert (a - e).norm() <= 1.1 * (b - e).norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the fp32-output GEMM is CUDA's")
def test_on_cuda_the_fused_kl_sums_the_head_gradient_in_fp32_inside_the_product():
    """On CUDA each chunk's head gradient goes into the fp32 sum inside the GEMM, not rounded to bf16 first: the sum
    is the fp64 one to fp32 precision (rounding first errs by ~1e-3), and the fused KL gives the same loss and
    hidden-state gradient as with the rounded sums, and a head gradient within bf16 rounding of theirs."""
    from convert import kl

    torch.manual_seed(0)
    a, b = torch.randn(1000, 300, device="cuda").bfloat16(), torch.randn(300, 64, device="cuda").bfloat16()
    acc = torch.randn(1000, 64, device="cuda")
    want = acc.double() + a.double() @ b.double()
    rounded = acc + (a @ b).float()
    kl._add_product(acc, a, b)
    assert acc.dtype == torch.float32
    assert (acc.double() - want).norm() / want.norm() < 1e-5 < (rounded.double() - want).norm() / want.norm()

    hs = torch.randn(300, 64, device="cuda", requires_grad=True)
    ws = torch.randn(1000, 64, device="cuda", requires_grad=True)
    ht, wt = torch.randn(300, 64, device="cuda"), torch.randn(1000, 64, device="cuda")

    def run():
        with torch.autocast("cuda", torch.bfloat16):
            loss = chunked_kl(hs, ws, ht, wt, chunk=32)
        return loss, torch.autograd.grad(loss, (hs, ws))

    loss, (g_h, g_w) = run()
    real = kl._add_product
    try:  # the CPU's way on the same card: each product rounded to bf16, then added
        kl._add_product = lambda acc, a, b: acc.add_((a @ b).float())
        loss_r, (g_h_r, g_w_r) = run()
    finally:
        kl._add_product = real
    assert loss == loss_r and torch.equal(g_h, g_h_r)
    assert g_w.dtype == torch.float32 and (g_w - g_w_r).norm() / g_w_r.norm() < 5e-3


def test_batches_are_a_function_of_the_step():
    a = torch.cat([batch_rows(s, 10, 4, 0) for s in range(5)])
    assert sorted(a[:10].tolist()) == list(range(10))  # first epoch is a permutation
    assert torch.equal(batch_rows(3, 10, 4, 0), batch_rows(3, 10, 4, 0))


def _setup(seed=0):
    teacher = tiny_qwen("qwen2", layers=4, seed=seed)
    student = convert_model(teacher, parse_spec("jet,attn,swa,jet"), window=8)  # 2B-style: mostly JetBlocks
    g = torch.Generator().manual_seed(1)
    # data the teacher is confident about: short repeating patterns it can partly predict
    rows = torch.randint(0, 101, (24, 32), generator=g)
    return teacher, student, rows[:20], rows[20:]


def test_the_steps_run_with_the_set_up_objects_frozen_out_of_the_collector(capsys):
    """The objects alive when the steps start are frozen (a full collection would walk all of them while the
    kernels wait), unfrozen when the stage ends, also when it is stopped; the step log gives the collector's time."""
    import gc

    teacher, student, train, _ = _setup()
    frozen = []

    def stop(step):
        frozen.append(gc.get_freeze_count())
        return step == 3

    before = gc.get_freeze_count()
    s = distill(student, teacher, train, DistillConfig(stage=1, steps=6, batch_size=4, micro_batch=2, lr=1e-2,
                                                       warmup_steps=2, log_every=1, grad_clip=1e-3), stop=stop)
    assert s["stopped_at"] == 3 and len(frozen) == 3
    assert min(frozen) > before + 10_000  # torch, transformers and the models
    assert gc.get_freeze_count() == before
    log = capsys.readouterr()
    assert " gc " in log.out + log.err and " ms/step (" in log.out + log.err
    # each logged step's gradient norm before clipping, as the history holds it
    line = next(ln for ln in (log.out + log.err).splitlines() if ln.startswith("step 3/6 "))
    assert f" grad norm {s['history'][2]['grad_norm']:.3g}" in line
    assert s["history"][2]["grad_norm"] > 1e-3 and "(clipped to 0.001)" in line, line
    assert all(h["gc_ms_per_step"] >= 0 and h["gc_full"] >= 0 for h in s["history"])
    # a caller's own freeze (a forking server's, say) is left as it was: the stage's unfreeze would have undone it
    gc.freeze()
    try:
        callers = gc.get_freeze_count()
        distill(student, teacher, train, DistillConfig(stage=1, steps=2, batch_size=4, micro_batch=2, lr=1e-2,
                                                       warmup_steps=1, log_every=0))
        assert gc.get_freeze_count() > 0.9 * callers  # still frozen (less the objects freed meanwhile), not 0
    finally:
        gc.unfreeze()


def test_the_collector_is_frozen_for_a_block_after_one_collection_when_asked():
    """`collector_frozen(collect=True)` (the CUDA path) collects first, so the garbage in a reference cycle is freed,
    not frozen with the rest, and says what that cost; the block runs frozen and ends unfrozen, also on an error."""
    import gc
    import weakref

    from convert.throughput import collector_frozen

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    with pytest.raises(RuntimeError, match="inside"):
        with collector_frozen(collect=True) as note:
            assert gone() is None and gc.get_freeze_count() > 1000
            assert note.startswith("a full garbage collection took ") and " objects;" in note
            raise RuntimeError("inside")
    assert gc.get_freeze_count() == 0
    with collector_frozen(collect=False) as note:
        assert note is None and gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


def test_attention_transfer_reports_its_held_out_loss_layer_by_layer():
    from convert.distill_loss import DistillLoss, layer_mse, teacher_targets

    teacher, student, train, held = _setup()
    jet = [0, 3]  # the JetBlocks of jet,attn,swa,jet
    before = layer_mse(student, teacher, held, jet)
    s = distill(student, teacher, train, DistillConfig(stage=1, steps=12, batch_size=4, micro_batch=2, lr=1e-2,
                                                       warmup_steps=2, log_every=0), eval_rows=held)
    after = s["eval_mse_by_layer"]
    assert list(after) == jet
    assert all(after[i] < b for i, b in zip(jet, before))  # each JetBlock moved towards its teacher layer
    # the held-out rows (4, one batch) give the number the stage trains on: the transfer loss's mean over layers
    dev = next(student.parameters()).device  # the trained student stays where it trained (a GPU when there is one)
    _, attn, given = teacher_targets(teacher.to(dev), held.to(dev), jet, inputs=True)
    with torch.no_grad():
        _, _, mse = DistillLoss(student, jet, 0.0, 1.0, 1024, 1.0, local=True)(held.to(dev), None, None, attn, given)
    assert sum(after.values()) / len(jet) == pytest.approx(mse.item(), rel=1e-5)
    # an end-to-end stage has no per-layer transfer loss to report
    s2 = distill(student, teacher, train, DistillConfig(stage=2, steps=2, batch_size=4, micro_batch=4, lr=3e-3,
                                                        warmup_steps=1, log_every=0), eval_rows=held)
    assert "eval_mse_by_layer" not in s2


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide precision, set by the first Accelerator: a bf16 test starts and ends with
    a fresh state, so it gets bf16 and later tests get theirs."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_distillation_lowers_held_out_kl():
    teacher, student, train, held = _setup()
    frozen = {n: p.clone() for n, p in student.state_dict().items() if "self_attn" not in n or ".layers.1." in n}
    s1 = distill(student, teacher, train, DistillConfig(stage=1, steps=12, batch_size=4, micro_batch=2, lr=1e-2,
                                                        warmup_steps=2, log_every=0), eval_rows=held)
    # stage 1 trains only the JetBlocks: MLPs, norms, embeddings and the kept attention are untouched
    for n, p in frozen.items():
        assert torch.equal(student.state_dict()[n].cpu(), p), n  # .cpu(): the same test runs on the GPU
    s2 = distill(student, teacher, train, DistillConfig(stage=2, steps=8, batch_size=4, micro_batch=4, lr=3e-3,
                                                        warmup_steps=2, log_every=0), eval_rows=held)
    print(f"held-out KL {s1['eval_kl_before']:.4f} -> {s1['eval_kl_after']:.4f} (stage 1) -> "
          f"{s2['eval_kl_after']:.4f} (stage 2) nats/token")
    assert s1["eval_kl_after"] < 0.8 * s1["eval_kl_before"]
    assert s2["eval_kl_after"] < s1["eval_kl_after"]


@pytest.mark.parametrize("kw", [dict(local=False), dict(local=True), dict(stage=2, lr=1e-4, jet_lr=1e-3)],
                         ids=["end-to-end", "attention-transfer", "stage2-jet-lr"])
def test_killed_run_resumes_to_identical_weights(tmp_path, kw):
    cfg = dict(stage=1, steps=6, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=2, save_every=2, log_every=0) | kw
    teacher, ref, train, _ = _setup()
    distill(ref, teacher, train, DistillConfig(**cfg))

    teacher, student, train, _ = _setup()
    out = distill(student, teacher, train, DistillConfig(**cfg), ckpt_dir=tmp_path,
                  stop=lambda step: step >= 3)  # "killed" after step 3
    assert out["stopped_at"] == 3 and (tmp_path / "step_2").is_dir() and not (tmp_path / "step_4").exists()
    teacher, fresh, train, _ = _setup()  # a new process would start from the converted weights again
    res = distill(fresh, teacher, train, DistillConfig(**cfg), ckpt_dir=tmp_path, resume=True)
    assert [h["step"] for h in res["history"]] == list(range(1, 7))
    for (n, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)


def test_bf16_distillation_leaves_the_callers_teacher_exact(fresh_accelerate_state):
    # distill() used to cast the caller's teacher to bf16 in place: every later teacher measurement was a
    # bf16-rounded model's
    teacher, student, train, held = _setup()
    before = {n: t.clone() for n, t in teacher.state_dict().items()}
    distill(student, teacher, train, DistillConfig(stage=1, steps=2, batch_size=4, micro_batch=2,
                                                   mixed_precision="bf16", log_every=0), eval_rows=held)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for n, t in before.items():
        assert after[n].dtype == t.dtype and torch.equal(after[n], t), n


def test_teacher_on_casts_a_copy_and_keeps_ties_and_buffers():
    from convert.distill_loss import teacher_on

    teacher = tiny_qwen("qwen2", layers=2, seed=0)
    teacher.config.tie_word_embeddings = True
    teacher.lm_head.weight = teacher.model.embed_tokens.weight
    assert teacher_on(teacher, "cpu") is teacher  # already there: no copy
    run = teacher_on(teacher, "cpu", torch.bfloat16)
    assert run is not teacher and run.lm_head.weight is run.model.embed_tokens.weight
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in run.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    for (n, a), b in zip(teacher.named_buffers(), run.buffers()):
        assert b.dtype == a.dtype, n  # rotary frequencies stay fp32
    x = torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        want, got = teacher(input_ids=x).logits, run(input_ids=x).logits.float()
    # the copy is the same model, rounded: bf16 logits within bf16 distance of the fp32 ones
    err = (got - want).abs().max() / want.abs().max()
    assert 0 < err < 3e-2, err


def test_local_attention_transfer_trains_each_jetblock_on_the_teachers_own_input():
    """Stage 1 with local=True: every JetBlock learns its layer's attention map from the teacher's input to it;
    nothing else runs in the student (no MLP, no end-to-end pass, no KL), nothing else changes, the MSE falls,
    and the trained JetBlocks lower the end-to-end held-out KL too."""
    teacher, student, train, held = _setup()
    mlp_calls = []
    hooks = [layer.mlp.register_forward_hook(lambda *a: mlp_calls.append(1)) for layer in student.model.layers]
    frozen = {n: p.clone() for n, p in student.state_dict().items() if "self_attn" not in n or ".layers.1." in n}
    jet_before = {n: p.clone() for n, p in student.state_dict().items() if ".layers.0.self_attn." in n}
    cfg = DistillConfig(stage=1, steps=15, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=2, log_every=1,
                        local=True)
    s = distill(student, teacher, train, cfg)
    for h in hooks:
        h.remove()
    assert not mlp_calls  # the student never ran a decoder layer end to end
    for n, p in frozen.items():
        assert torch.equal(student.state_dict()[n].cpu(), p), n  # .cpu(): the same test runs on the GPU
    assert any(not torch.equal(student.state_dict()[n].cpu(), p) for n, p in jet_before.items())
    mse = [h["mse"] for h in s["history"]]
    assert all(h["kl"] == 0 for h in s["history"])
    print(f"attention-transfer MSE {mse[0]:.4f} -> {mse[-1]:.4f}")
    assert sum(mse[-3:]) / 3 < 0.7 * sum(mse[:3]) / 3
    # the FLOPs the meter counts: the JetBlocks alone (6 per trained weight + 3x mixing), below an end-to-end
    # stage 1 of the same trainable set (forward through everything, backward down to the lowest JetBlock)
    from convert.distill import set_trainable
    from convert.throughput import flops_per_token

    set_trainable(student, "jet")
    full = flops_per_token(student, teacher, train.shape[1])["student"]
    assert 0 < s["flops_per_token"]["student"] < 0.7 * full
    # the teacher's forward without its head (attention transfer has no KL), ending at the last JetBlock's (layer 3's)
    # attention: its MLP does not run either
    assert s["flops_per_token"]["teacher"] == flops_per_token(student, teacher, train.shape[1], local=True)["teacher"]
    head = teacher.lm_head.weight.numel()
    mlp3 = sum(p.numel() for p in teacher.model.layers[3].mlp.parameters() if p.dim() == 2)
    assert s["flops_per_token"]["teacher"] == (flops_per_token(student, teacher, train.shape[1])["teacher"]
                                               - 2 * head - 2 * mlp3)
    from convert.distill import eval_kl

    fresh = _setup()[1]
    assert eval_kl(student.cpu(), teacher, held) < eval_kl(fresh, teacher, held)  # .cpu(): trained on a GPU if any


@pytest.mark.parametrize("kw, local", [
    (dict(stage=1), True),  # the default recipe: attention transfer
    (dict(stage=1, train="all"), False),
    (dict(stage=1, mse_weight=0.0), False),
    (dict(stage=2), False),
    (dict(stage=3), False),
    (dict(stage=1, local=False), False),  # an end-to-end stage 1, asked for
])
def test_attention_transfer_is_the_default_wherever_it_applies(kw, local):
    """The library, the CLI and the benchmark scripts share one default (the CLI passes None through)."""
    assert DistillConfig(**kw).resolved().local is local


@pytest.mark.parametrize("kw, as_one", [
    (dict(stage=1), False),  # attention transfer: the JetBlocks read the bf16 teacher's states, nothing to fuse
    (dict(stage=1, local=False), True),
    (dict(stage=2), True),
    (dict(stage=3), True),
    (dict(stage=1, projections_as_one=True), True),  # asked for
    (dict(stage=1, projections_as_one=False), False),
    (dict(stage=2, projections_as_one=False), False),
])
def test_projections_as_one_is_on_by_default_in_bf16_stages_that_are_not_local(kw, as_one):
    raw = DistillConfig(mixed_precision="bf16", **kw)
    cfg = raw.resolved()
    assert cfg.projections_as_one is as_one
    assert DistillConfig(mixed_precision="no", **kw).resolved().projections_as_one is kw.get("projections_as_one",
                                                                                              False)
    # FSDP turns a default attention transfer end to end: a default product follows it, an asked one stays
    under_fsdp = raw.resolved(fsdp=True)
    assert under_fsdp.local is False and under_fsdp.projections_as_one is kw.get("projections_as_one", True)
    # a copy: the caller's config keeps its Nones, and resolving again under the same setting changes nothing
    assert raw.local is kw.get("local") and raw.projections_as_one is kw.get("projections_as_one")
    assert cfg.resolved() == cfg and under_fsdp.resolved(fsdp=True) == under_fsdp


def test_attention_transfer_asked_for_under_fsdp_is_refused_by_the_config():
    """Asked for explicitly, attention transfer under FSDP is an error; by default it is off there."""
    with pytest.raises(ValueError, match="FSDP cannot shard: leave the flag out or pass --no-stage1-local"):
        DistillConfig(stage=1, local=True).resolved(fsdp=True)
    from convert.distill_config import fsdp_turns_off_transfer

    assert fsdp_turns_off_transfer(DistillConfig(stage=1), fsdp=True)
    assert not fsdp_turns_off_transfer(DistillConfig(stage=1), fsdp=False)
    assert not fsdp_turns_off_transfer(DistillConfig(stage=1, local=False), fsdp=True)
    assert not fsdp_turns_off_transfer(DistillConfig(stage=2), fsdp=True)


@pytest.mark.parametrize("kw, message", [
    (dict(stage=2, local=True), "needs stage 1"),
    (dict(stage=1, train="all", local=True), "train 'jet'"),
    (dict(stage=1, mse_weight=0.0, local=True), "mse_weight > 0"),
])
def test_local_attention_transfer_refuses_settings_it_cannot_honour(kw, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kw).resolved()


def test_frozen_bf16_trains_like_autocast_and_gives_back_exact_fp32(fresh_accelerate_state):
    """bf16 on the CPU: the frozen weights are bf16 while the stage runs (seen from inside a step), the losses
    follow the plain bf16-autocast run, and afterwards every frozen weight is its exact fp32 value again, also
    when the stage is stopped early."""
    runs, seen = {}, []
    _frozen_bf16_runs(runs, seen)
    assert {d for f, d in seen if f} == {torch.bfloat16} and {d for f, d in seen if not f} == {torch.float32}
    kl = {f: [h["kl"] for h in r] for f, r in runs.items()}
    n = len(kl[True])
    assert 0 < n < len(kl[False]) == 6 and kl[True] == pytest.approx(kl[False][:n], rel=0.05)


def _frozen_bf16_runs(runs: dict, seen: list) -> None:
    for frozen_bf16 in (False, True):
        teacher, student, train, held = _setup()
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        mlp = student.model.layers[0].mlp.up_proj.weight

        def stop(step):
            seen.append((frozen_bf16, mlp.dtype))
            return frozen_bf16 and step == 3  # the second run ends early, as a kill would
        cfg = DistillConfig(stage=1, steps=6, batch_size=4, micro_batch=2, warmup_steps=1, log_every=1,
                            mixed_precision="bf16", frozen_bf16=frozen_bf16)
        runs[frozen_bf16] = distill(student, teacher, train, cfg, stop=stop)["history"]
        for n, p in student.named_parameters():
            if ".self_attn." not in n or ".layers.1." in n or ".layers.2." in n:  # frozen in stage 1
                assert p.dtype == torch.float32 and torch.equal(p.cpu(), before[n]), n
            elif n.endswith("q_proj.weight"):
                assert p.dtype == torch.float32 and not torch.equal(p.cpu(), before[n]), n  # a JetBlock weight trained


def test_frozen_bf16_needs_a_bf16_run():
    with pytest.raises(ValueError, match="frozen_bf16 .* needs mixed_precision 'bf16'"):
        DistillConfig(frozen_bf16=True).resolved()


@pytest.mark.parametrize("local", [True, False], ids=["attention-transfer", "end-to-end"])
def test_a_compiled_student_trains_as_the_eager_one(local):
    """DistillConfig.compile: torch.compile (inductor, on the CPU here) of the decoder layers, or with attention
    transfer of the JetBlocks, which then run outside their layers. The losses match eager step by step, graphs
    were compiled, and the student is left eager for whatever measures it next."""
    from torch._dynamo.utils import counters

    cfg = dict(stage=1, steps=2, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=1, log_every=1, local=local)
    teacher, ref, train, _ = _setup()
    eager = distill(ref, teacher, train, DistillConfig(**cfg))
    torch._dynamo.reset()
    counters.clear()
    teacher, student, train, _ = _setup()
    compiled = distill(student, teacher, train, DistillConfig(**cfg, compile=True))
    assert counters["stats"]["unique_graphs"] > 0
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a, b)
    assert all(layer._compiled_call_impl is None and layer.self_attn._compiled_call_impl is None
               for layer in student.model.layers)
    torch._dynamo.reset()


@pytest.mark.parametrize("train", ["jet", "all"])
def test_the_fused_kl_gives_every_parameter_the_reference_gradient(train):
    """DistillLoss with the fused KL (default) against the checkpointed reference on a real student and teacher: the
    same loss and, for every trained parameter, the same gradient (end-to-end stage 1 trains the JetBlocks under a
    frozen head; stage 2 trains everything). Compared before any optimizer: Adam turns fp32 summation-order noise in
    near-zero gradients into visible weight differences."""
    from convert.distill import set_trainable
    from convert.distill_loss import DistillLoss

    teacher, student, train_rows, _ = _setup()
    set_trainable(student, train)
    x = train_rows[:4]
    with torch.no_grad():
        hidden = teacher.model(input_ids=x, use_cache=False).last_hidden_state
    grads = []
    for fused in (True, False):
        student.zero_grad(set_to_none=True)
        loss, kl, _ = DistillLoss(student, [], 1.0, 0.0, 16, 1.0, fused_kl=fused)(x, hidden, teacher.lm_head.weight)
        loss.backward()
        grads.append((kl.item(), {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}))
    (kl_f, g_f), (kl_r, g_r) = grads
    assert kl_f == pytest.approx(kl_r, rel=1e-6) and set(g_f) == set(g_r) and len(g_f) > 0
    assert ("lm_head.weight" in g_f) == (train == "all")
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_r[name], atol=1e-7 + 1e-5 * g_r[name].abs().max().item(),
                                   rtol=1e-4, msg=name)


def test_jet_lr_gives_the_jetblocks_their_own_step_size():
    # AdamW's first step moves each weight by lr x g / (|g| + eps), about lr where |g| >> eps (weight decay 0):
    # the JetBlocks' weights must move by jet_lr, every other weight by lr
    lr, jet_lr = 1e-5, 1e-3
    teacher, student, train, _ = _setup()
    with torch.no_grad():  # open the converted JetBlocks' zero output gates, so that all their weights get gradients
        for i in (0, 3):
            student.model.layers[i].self_attn.g_proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(i))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    distill(student, teacher, train, DistillConfig(stage=2, steps=1, batch_size=4, micro_batch=4, lr=lr,
                                                   jet_lr=jet_lr, warmup_steps=0, grad_clip=0, log_every=0))
    moved = {n: (p.detach().cpu() - before[n]).abs() for n, p in student.named_parameters()}  # the GPU too
    jet = [n for n in moved if ".layers.0.self_attn." in n or ".layers.3.self_attn." in n]
    assert jet and len(jet) < len(moved)
    still = [n for n, d in moved.items() if d.max() == 0]  # the kernel generator's w1 waits for its zero w2
    assert len(still) <= 2, still
    for n, d in moved.items():
        if n not in still:
            step = jet_lr if n in jet else lr
            assert 0.9 * step < d.max() < 1.1 * step, (n, d.max().item(), step)


def test_jet_lr_needs_a_trained_jetblock_and_a_positive_value():
    teacher, student, train, _ = _setup()
    with pytest.raises(ValueError, match="jet_lr must be a positive number"):
        DistillConfig(stage=2, jet_lr=-1.0).resolved()
    for n, p in student.named_parameters():
        p.requires_grad_(".self_attn." not in n)
    with pytest.raises(ValueError, match="no JetBlock weight trains"):
        param_groups(student, DistillConfig(stage=2, lr=1e-4, jet_lr=1e-3).resolved())


def test_stage2_with_frozen_mlps_held_in_bf16_trains_exactly_as_plain_autocast(fresh_accelerate_state):
    """The next H200 knob (train2 non-mlp + frozen_bf16 + jet_lr, projections as one by default in bf16): autocast
    casts a frozen fp32 MLP weight to bf16 in every forward, so holding it in bf16 must change speed only."""
    runs = {}
    for frozen_bf16 in (False, True):
        teacher, student, train, _ = _setup()
        cfg = DistillConfig(stage=2, steps=4, batch_size=4, micro_batch=2, warmup_steps=1, log_every=1, lr=1e-3,
                            jet_lr=3e-3, mixed_precision="bf16", train="non-mlp", frozen_bf16=frozen_bf16)
        runs[frozen_bf16] = (distill(student, teacher, train, cfg)["history"], student.state_dict())
    assert [h["kl"] for h in runs[True][0]] == [h["kl"] for h in runs[False][0]]
    for n, p in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][n], p, atol=0, rtol=0, msg=n)


def test_a_bf16_residual_stream_feeds_the_products_bf16_and_trains_alike(fresh_accelerate_state, monkeypatch):
    """DistillConfig.residual_bf16 (bf16 on the CPU, stage 2 with frozen MLPs): the decoder layers take and give bf16
    hidden states and the norms give bf16, so the student's same-input projections (run as one product) get bf16
    inputs that autocast need not cast, where the fp32 residual stream gives them fp32 ones; the losses stay within
    bf16 rounding of the fp32 stream's; and the student is left as it was given (its norms in Qwen2's arithmetic
    again, its own forward in fp32)."""
    import jet_nemotron.fused_projections as fp

    real, seen = fp._as_one, []
    monkeypatch.setattr(fp, "_as_one", lambda x, linears: seen.append(x.dtype) or real(x, linears))
    runs = {}
    for residual in (False, True):
        teacher, student, train, _ = _setup()
        layer_out = []
        hook = student.model.layers[1].register_forward_hook(lambda m, a, out: layer_out.append(out.dtype))
        seen.clear()
        cfg = DistillConfig(stage=2, steps=4, batch_size=4, micro_batch=2, warmup_steps=1, log_every=1, lr=1e-3,
                            mixed_precision="bf16", train="non-mlp", frozen_bf16=True, residual_bf16=residual)
        s = distill(student, teacher, train, cfg)
        hook.remove()
        runs[residual] = ([h["kl"] for h in s["history"]], set(seen), set(layer_out))
        assert not any(getattr(m, "weight_in_input_dtype", False) for m in student.modules())
        with torch.no_grad():
            assert student(input_ids=train[:1]).logits.dtype == torch.float32
    (kl32, in32, out32), (kl16, in16, out16) = runs[False], runs[True]
    assert in16 == {torch.bfloat16} and in32 == {torch.float32}
    assert out16 == {torch.bfloat16} and out32 == {torch.float32}
    assert kl16 == pytest.approx(kl32, rel=0.05) and kl16 != kl32  # another rounding, the same training
    with pytest.raises(ValueError, match="residual_bf16 .* needs mixed_precision 'bf16'"):
        DistillConfig(stage=2, residual_bf16=True).resolved()


def test_fused_adam_trains_as_the_default_adamw():
    """DistillConfig.fused_adam: AdamW's fused kernel (on the CPU here) gives the default's losses and weights to
    rounding, with two learning-rate groups."""
    runs = {}
    for fused in (False, True):
        teacher, student, train, _ = _setup()
        cfg = DistillConfig(stage=2, steps=4, batch_size=4, micro_batch=2, warmup_steps=1, log_every=1, lr=1e-3,
                            jet_lr=3e-3, fused_adam=fused)
        runs[fused] = (distill(student, teacher, train, cfg)["history"], student.state_dict())
    assert [h["kl"] for h in runs[True][0]] == pytest.approx([h["kl"] for h in runs[False][0]], rel=1e-5)
    for n, p in runs[False][1].items():
        # Adam divides by sqrt(v) + eps, which magnifies rounding where a gradient is tiny: 5e-5 is 0.4% of the
        # 1.2e-2 that four steps at lr 3e-3 can move a JetBlock weight
        torch.testing.assert_close(runs[True][1][n], p, atol=5e-5, rtol=0, msg=n)


class _CastCount:
    """Counts fp32 -> bf16 casts of tensors whose shape is one of `shapes` (a TorchDispatchMode, under autocast)."""

    def __init__(self, shapes):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
                        and args[0].dtype == torch.float32 and tuple(args[0].shape) in shapes):
                    outer.n += 1
                return func(*args, **kwargs)

        self.n, self.mode = 0, Mode()


def test_a_step_casts_and_concatenates_each_trainable_weight_once_whatever_its_micro_steps(
        fresh_accelerate_state, monkeypatch):
    """bf16 on the CPU: one autocast region and one `step_weights` span a step's micro-steps, so each trainable
    weight is cast to bf16 once a step and each set of projections run as one product concatenated once, not once
    a micro-step; and nothing else changes: losses and weights are the bits of a run whose caches are emptied at
    every micro-step, as when each micro-step had its own region."""
    import convert.distill as d
    from jet_nemotron import fused_projections as fp

    def run(micro, per_micro_step):
        teacher, student, train, _ = _setup()
        d_model = student.config.hidden_size
        # weights read by plain linears (o_proj, down_proj, ...): shapes no 2-D activation here has ([n, d_model])
        count = _CastCount({tuple(p.shape) for p in student.parameters() if p.ndim == 2 and p.shape[1] != d_model})
        concats, real_concat, real_targets = [], fp._concat, d.teacher_targets

        def targets(*a, **kw):  # called once at the start of each micro-step, inside the step's region
            if per_micro_step:
                torch.clear_autocast_cache()
                fp._STEP_WEIGHTS.clear()
            return real_targets(*a, **kw)
        monkeypatch.setattr(d, "teacher_targets", targets)
        monkeypatch.setattr(fp, "_concat", lambda *a: concats.append(1) or real_concat(*a))
        cfg = DistillConfig(stage=2, steps=2, batch_size=4, micro_batch=micro, lr=1e-3, warmup_steps=1,
                            log_every=1, mixed_precision="bf16")
        with count.mode:
            hist = distill(student, teacher, train, cfg)["history"]
        return (count.n, len(concats)), [h["loss"] for h in hist], {n: p.detach().clone()
                                                                    for n, p in student.named_parameters()}

    one, four, four_old = run(4, False), run(1, False), run(1, True)
    assert one[0] == four[0] and min(four[0]) > 0  # 1 and 4 micro-steps: the same casts and concatenations
    print(f"casts, concatenations: 1 micro-step {one[0]}, 4 {four[0]}, 4 with the caches emptied {four_old[0]}")
    assert four_old[0][0] > four[0][0] and four_old[0][1] == 4 * four[0][1]  # emptied: again every micro-step
    assert four[1] == four_old[1]
    for n, p in four[2].items():
        assert torch.equal(p, four_old[2][n]), n


def test_attention_transfer_targets_end_at_the_last_layers_attention():
    """teacher_targets(final=False): the same attention inputs and outputs as the whole forward, no final states,
    nothing run after the last captured layer's attention (its MLP, the final norm), and outputs that autograd can
    save (no inference tensors); without layers to capture it is refused."""
    from convert.distill_loss import teacher_targets

    teacher, _, train, _ = _setup()
    x = train[:2]
    ran = []
    hooks = [teacher.model.layers[3].mlp.register_forward_hook(lambda *a: ran.append("mlp 3")),
             teacher.model.norm.register_forward_hook(lambda *a: ran.append("norm"))]
    try:
        h, attn, given = teacher_targets(teacher, x, [0, 3], inputs=True)
        assert h is not None and ran == ["mlp 3", "norm"]
        ran.clear()
        h2, attn2, given2 = teacher_targets(teacher, x, [0, 3], inputs=True, final=False)
        assert h2 is None and ran == []
    finally:
        for hk in hooks:
            hk.remove()
    assert all(torch.equal(a, b) for a, b in zip(attn + given, attn2 + given2)) and len(attn2 + given2) == 4
    assert not any(t.is_inference() for t in attn2 + given2 + [h])
    w = torch.ones((), requires_grad=True)
    (w * given2[1]).sum().backward()  # saved for backward: an inference tensor would be refused here
    assert w.grad is not None
    with pytest.raises(ValueError, match="final=False needs mse_layers"):
        teacher_targets(teacher, x, [], final=False)


@pytest.mark.parametrize("tied", [True, False])
def test_mixers_train_the_token_mixers_and_norms_and_leave_mlps_embeddings_and_head(tied):
    """train="mixers": the JetBlocks, the kept attention and the norms train; the MLPs, the embeddings and the head
    (tied to them or not) stay as converted, and the stage's FLOP count drops the head's weight gradient."""
    from convert.distill import set_trainable
    from convert.throughput import flops_per_token

    teacher = tiny_qwen("qwen2", layers=4, seed=0, tie=tied)
    student = convert_model(teacher, parse_spec("jet,attn,swa,jet"), window=8)
    n = set_trainable(student, "mixers")
    on = {name for name, p in student.named_parameters() if p.requires_grad}
    assert n == sum(p.numel() for p in student.parameters() if p.requires_grad) > 0
    assert not any(".mlp." in name or "embed_tokens" in name or name.startswith("lm_head") for name in on)
    for i in range(4):
        assert any(name.startswith(f"model.layers.{i}.self_attn.") for name in on)  # JetBlocks and attention alike
        assert f"model.layers.{i}.input_layernorm.weight" in on
    assert "model.norm.weight" in on
    mixers = flops_per_token(student, teacher, 32)["student"]
    set_trainable(student, "non-mlp")
    assert {name for name, p in student.named_parameters() if p.requires_grad} - on == {"model.embed_tokens.weight"} | (
        set() if tied else {"lm_head.weight"})
    # the head's weight gradient (2 FLOPs a weight a token) is the whole difference in the count
    vocab, hidden = student.lm_head.weight.shape
    assert flops_per_token(student, teacher, 32)["student"] - mixers == 2 * vocab * hidden


def test_traced_steps_write_each_kernels_time_and_train_exactly_as_untraced(tmp_path, capsys):
    """trace_steps: the stage's steps 4-5 run under torch.profiler into a record of each kernel's time a step (on the
    CPU, self times), and the trained weights are those of the same stage untraced, bit for bit."""
    import json

    cfg = dict(stage=1, steps=7, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=2, log_every=1)
    teacher, ref, train, _ = _setup()
    distill(ref, teacher, train, DistillConfig(**cfg))
    teacher, student, train, _ = _setup()
    distill(student, teacher, train, DistillConfig(**cfg, trace_steps=2, trace_after=3, trace_dir=str(tmp_path)))
    for (n, a), b in zip(ref.state_dict().items(), student.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1_steps4-5.json", "stage1_steps4-5.txt"]
    rec = json.loads((tmp_path / "stage1_steps4-5.json").read_text())
    assert rec["stage"] == 1 and rec["steps"] == [4, 5] and rec["time_is"].startswith("cpu")
    assert rec["wall_ms_per_step"] > 0 and rec["busy_ms_per_step"] > 0
    names = [k["name"] for k in rec["kernels"]]
    assert "aten::mm" in names and not any(n.startswith("ProfilerStep") for n in names)
    ms = [k["ms_per_step"] for k in rec["kernels"]]
    assert ms == sorted(ms, reverse=True) and all(k["calls_per_step"] > 0 for k in rec["kernels"])
    assert "traced into" in capsys.readouterr().out


def test_a_trace_the_stage_ends_inside_writes_nothing_and_a_trace_needs_somewhere_to_go(tmp_path):
    teacher, student, train, _ = _setup()
    distill(student, teacher, train, DistillConfig(stage=1, steps=4, batch_size=4, micro_batch=2, warmup_steps=1,
                                                   trace_steps=3, trace_after=2, trace_dir=str(tmp_path)))
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="trace_steps 2 needs a trace_dir"):
        DistillConfig(trace_steps=2).resolved()
    with pytest.raises(ValueError, match="trace_after must be >= 0"):
        DistillConfig(trace_steps=2, trace_after=-1, trace_dir=str(tmp_path)).resolved()


def test_a_trace_that_fails_warns_and_the_run_goes_on_unchanged(tmp_path, monkeypatch):
    """A diagnostic must not end the run it watches: a trace whose record cannot be made warns, writes nothing, and
    the stage trains to the same weights as untraced."""
    import convert.step_trace as step_trace

    cfg = dict(stage=1, steps=6, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=2, log_every=0)
    teacher, ref, train, _ = _setup()
    distill(ref, teacher, train, DistillConfig(**cfg))

    def broken(*a, **k):
        raise RuntimeError("no kernel table")

    monkeypatch.setattr(step_trace, "kernel_times", broken)
    teacher, student, train, _ = _setup()
    with pytest.warns(RuntimeWarning, match=r"trace of steps 3-4 failed to write its record .*no kernel table"):
        distill(student, teacher, train, DistillConfig(**cfg, trace_steps=2, trace_after=2, trace_dir=str(tmp_path)))
    assert not list(tmp_path.glob("*.json"))
    for (n, a), b in zip(ref.state_dict().items(), student.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)
