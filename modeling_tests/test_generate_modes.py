"""Every `generate()` mode gives the same tokens with and without the cache, on whichever transformers runs this
(CI runs this file on the newest release and on 5.17), with no deprecation warning from our code.

transformers 5.24 renamed the cache argument (`past_key_values` -> `cache`); a model reading only the old name got
no cache from `generate()`, recomputed each step from one token and returned other tokens without an error. These
tests fail that way: the uncached run sees the whole sequence, a lost cache sees only the last token.
"""

import logging
import warnings

import pytest
import torch

from conftest import tiny_model
from jet_nemotron import JetNemotronCache, JetNemotronStaticCache
from jet_nemotron.transformers_compat import CACHE_NAME


def _ids(B, T, seed):
    return torch.randint(3, 128, (B, T), generator=torch.Generator().manual_seed(seed))


def _left_padded(lengths, seed):
    T = max(lengths)
    ids = torch.full((len(lengths), T), 77, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = _ids(1, n, seed + i)[0]
        mask[i, T - n:] = 1
    return ids, mask


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _generate_quietly(model, *args, **kwargs):
    """generate() with every Python warning and transformers log warning recorded; fails on a deprecation."""
    handler = _Recorder()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model.generate(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    deprecations += [m for m in handler.messages if "deprecat" in m.lower()]
    assert not deprecations, deprecations
    return out


MODES = {
    "greedy": dict(do_sample=False),
    "beam": dict(do_sample=False, num_beams=3),
    "sampling": dict(do_sample=True, top_k=20, temperature=1.0),
    "static": dict(do_sample=False, cache_implementation="static"),
    "static-beam": dict(do_sample=False, num_beams=2, cache_implementation="static"),
}


@pytest.mark.parametrize("padded", [False, True], ids=["one-length", "left-padded"])
@pytest.mark.parametrize("mode", list(MODES))
@torch.no_grad()
def test_cached_generate_equals_uncached(mode, padded):
    model = tiny_model()
    ids, mask = _left_padded([30, 11], seed=3) if padded else (_ids(2, 30, seed=3), torch.ones(2, 30, dtype=torch.long))
    kw = dict(MODES[mode], attention_mask=mask, max_new_tokens=16, eos_token_id=None, pad_token_id=0,
              return_dict_in_generate=True)
    torch.manual_seed(0)
    cached = _generate_quietly(model, ids, **kw)
    torch.manual_seed(0)
    uncached = _generate_quietly(model, ids, use_cache=False, **{k: v for k, v in kw.items()
                                                                 if k != "cache_implementation"})
    assert torch.equal(cached.sequences, uncached.sequences), mode
    for row in cached.sequences[:, ids.shape[1]:]:
        assert len(set(row.tolist())) > 1, "a degenerate continuation would make this comparison meaningless"
    want = JetNemotronStaticCache if "static" in mode else JetNemotronCache
    assert isinstance(getattr(cached, CACHE_NAME), want), type(getattr(cached, CACHE_NAME))


ORDERS = [("jet", "swa", "jet", "attn"), ("swa", "jet", "attn", "jet"), ("jet", "swa", "jet", "jet")]


@pytest.mark.parametrize("mode", ["greedy", "static"])
@pytest.mark.parametrize("layer_types", ORDERS, ids=["-".join(o) for o in ORDERS])
@torch.no_grad()
def test_any_layer_order_generates_as_uncached(layer_types, mode):
    """A window before the first full-attention layer, or first of all, or no full attention at all. On 5.17 the
    first of these sized the full-attention mask by the window (static cache: a shape error on the H200) and the
    second raised in `get_seq_length`; the prompt is longer than the window so the window matters."""
    model = tiny_model(layer_types=layer_types)
    ids, mask = _left_padded([30, 11], seed=5)
    kw = dict(MODES[mode], attention_mask=mask, max_new_tokens=12, eos_token_id=None, pad_token_id=0)
    cached = _generate_quietly(model, ids, **kw)
    uncached = _generate_quietly(model, ids, use_cache=False, **{k: v for k, v in kw.items()
                                                                 if k != "cache_implementation"})
    assert model.config.sliding_window < 30
    assert torch.equal(cached, uncached), (layer_types, mode)
    assert all(len(set(row.tolist())) > 1 for row in cached[:, ids.shape[1]:])


@torch.no_grad()
def test_cache_bytes_after_generate():
    """After a 20-token prompt and 16 new tokens the cache holds 35 tokens of KV (the last token is never written
    back) for full attention, the window for sliding layers and a fixed state for JetBlocks."""
    model = tiny_model()
    cfg = model.config
    out = _generate_quietly(model, _ids(2, 20, seed=5), max_new_tokens=16, do_sample=False, eos_token_id=None,
                            pad_token_id=0, return_dict_in_generate=True)
    sizes = getattr(out, CACHE_NAME).nbytes_per_layer_type()
    kv_token = 2 * cfg.num_key_value_heads * cfg.head_dim * 4 * 2  # K and V, fp32, batch 2
    assert sizes["full_attention"] == cfg.layer_types.count("full_attention") * kv_token * 35
    assert sizes["sliding_attention"] == cfg.layer_types.count("sliding_attention") * kv_token * (cfg.sliding_window - 1)
    d = cfg.jet_dims()
    state = 2 * (d.num_heads * d.head_k_dim * d.head_v_dim * 4 + d.value_dim * d.conv_size * 4)
    assert sizes["linear_attention"] == cfg.layer_types.count("linear_attention") * state


@torch.no_grad()
def test_either_cache_name_reaches_the_model():
    """Our forward takes the cache under both names on every release, and refuses two different ones."""
    model = tiny_model()
    ids = _ids(1, 12, seed=6)
    full = model(ids, use_cache=False).logits[:, -1]
    for name in ("cache", "past_key_values"):
        cache = getattr(model(ids[:, :-1], use_cache=True), CACHE_NAME)
        step = model(ids[:, -1:], **{name: cache}).logits[:, -1]
        torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="pass the cache once"):
        model(ids[:, -1:], cache=JetNemotronCache(model.config), past_key_values=JetNemotronCache(model.config))
