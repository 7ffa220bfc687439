"""Acceptance 5 (+ training basics): loss from labels, gradients reach every JetBlock parameter (the kernel
generator included), gradient checkpointing gives the same gradients, bf16 trains."""

import torch

from conftest import tiny_model
from jet_nemotron.transformers_compat import checkpointing_enable


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_loss_matches_shifted_cross_entropy():
    model = tiny_model().train()
    ids = torch.randint(3, 128, (2, 50))
    out = model(ids, labels=ids)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128).float(), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def test_gradients_reach_every_jetblock_parameter():
    model = tiny_model().train()
    ids = torch.randint(3, 128, (2, 70))  # > one chunk, so the chunked path is differentiated across chunks
    _, grads = _grads(model, ids)
    jet_params = [n for n, _ in model.named_parameters() if ".layers.0." in n or ".layers.3." in n]
    jet_params = [n for n in jet_params if ".self_attn." in n]
    assert any("kernel_generator.w1" in n for n in jet_params)
    assert len(jet_params) == 2 * 13
    for n in jet_params:
        assert n in grads, f"{n} got no gradient"
        assert torch.isfinite(grads[n]).all(), n
        assert grads[n].abs().sum() > 0, f"{n} got an all-zero gradient"
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in grads]
    assert missing == [], missing


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    ids = torch.randint(3, 128, (2, 70))
    loss, plain = _grads(model, ids)
    checkpointing_enable(model, use_reentrant=False)
    assert model.model.layers[0].gradient_checkpointing
    loss_ckpt, ckpt = _grads(model, ids)
    torch.testing.assert_close(loss_ckpt, loss)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_bf16_training_step_lowers_the_loss():
    model = tiny_model().to(torch.bfloat16).train()
    ids = torch.randint(3, 128, (4, 40), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(ids, labels=ids)
        assert out.logits.dtype == torch.bfloat16
        loss = out.loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


@torch.no_grad()
def test_packed_documents_equal_each_document_alone():
    """Packed training rows (positions restart per document, no mask): attention stays inside each document through
    transformers' masks and the JetBlocks restart state and convolution at the same boundaries."""
    model = tiny_model()
    lengths = [[30, 70], [5, 45, 50]]
    docs = [[torch.randint(3, 128, (n,)) for n in row] for row in lengths]
    ids = torch.stack([torch.cat(row) for row in docs])
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    packed = model(ids, position_ids=pos, use_cache=False).logits
    for b, row in enumerate(docs):
        start = 0
        for doc in row:
            alone = model(doc[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[b, start : start + len(doc)], alone, atol=1e-4, rtol=1e-4)
            start += len(doc)


def test_packed_documents_train_with_gradients():
    model = tiny_model().train()
    ids = torch.randint(3, 128, (1, 80))
    pos = torch.cat([torch.arange(33), torch.arange(47)])[None]
    loss = model(ids, position_ids=pos, labels=ids).loss
    loss.backward()
    assert model.model.layers[0].self_attn.dynamic_conv1d.kernel_generator.w1.weight.grad.abs().sum() > 0
