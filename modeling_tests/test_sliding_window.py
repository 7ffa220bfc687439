"""Sliding-window layers over a whole sequence band the window in blocks instead of taking transformers' dense
[T, T] mask: the banded form must equal the dense one, and the model must take it only where it is exact."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from jet_nemotron.modeling_jet_nemotron import banded_sliding_attention
from jet_nemotron.transformers_compat import CACHE_NAME


def dense_sliding(q, k, v, W, scale):
    """The reference: sdpa with the dense mask (query p sees keys p-W+1 .. p), GQA heads repeated."""
    T, rep = q.shape[2], q.shape[1] // k.shape[1]
    p = torch.arange(T)
    mask = (p[None, :] <= p[:, None]) & (p[None, :] > p[:, None] - W)
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                         attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("T", [1, 7, 8, 9, 16, 17, 24, 100])
def test_banded_equals_dense_mask(T):
    gen = torch.Generator().manual_seed(T)
    q = torch.randn(2, 4, T, 16, generator=gen)
    k, v = (torch.randn(2, 2, T, 16, generator=gen) for _ in range(2))
    out = banded_sliding_attention(q, k, v, 8, 0.25)
    assert out.shape == (2, T, 4, 16)
    torch.testing.assert_close(out, dense_sliding(q, k, v, 8, 0.25), atol=1e-6, rtol=1e-5)


def _calls(model, monkeypatch):
    import jet_nemotron.modeling_jet_nemotron as mod

    calls = []
    real = mod.banded_sliding_attention
    monkeypatch.setattr(mod, "banded_sliding_attention", lambda *a, **k: (calls.append(a[0].shape[2]), real(*a, **k))[1])
    return calls


@torch.no_grad()
def test_model_bands_only_where_exact(monkeypatch):
    """Window 8: a 40-token prompt takes the banded path; the logits equal the dense-mask path (eager attention,
    which always builds the mask); padding, a cache prefix and short prompts keep the dense mask."""
    model = tiny_model()
    model.config._attn_implementation = "sdpa"
    dense = tiny_model()
    dense.config._attn_implementation = "eager"
    calls = _calls(model, monkeypatch)
    ids = torch.randint(3, 128, (2, 40))
    out = model(ids, use_cache=True)
    assert calls == [40]
    torch.testing.assert_close(out.logits, dense(ids).logits, atol=1e-4, rtol=1e-4)
    # with an all-ones mask (as generate passes) still banded; continuing the cache is not
    model(ids, attention_mask=torch.ones_like(ids))
    assert calls == [40, 40]
    model(ids[:, :1], past_key_values=getattr(out, CACHE_NAME))
    model(ids[:, :10])  # 10 <= 2 * window
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    padded = model(ids, attention_mask=mask).logits
    assert calls == [40, 40]
    real = mask.bool()  # padding positions' logits are arbitrary and differ between attention implementations
    torch.testing.assert_close(padded[real], dense(ids, attention_mask=mask).logits[real], atol=1e-4, rtol=1e-4)
