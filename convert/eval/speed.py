"""Speed and memory: prefill and decode tok/s and cache bytes at given contexts, with the machinery that
benchmarks/generation.py measures the architecture with (moved here so `jet-nemotron eval` reuses it):

- prefill: one sequence of `ctx` tokens, median of 3 (ms, tok/s).
- decode: a static cache filled with random contents as if `ctx` tokens had been seen (decode cost does not depend
  on the values), then `generate()` runs N1 and N2 new tokens, three times after a warm-up pair; tok/s = batch *
  (N2 - N1) / the median of (t2 - t1), which removes the first step. On CUDA the decode step is compiled (CUDA
  graphs). At batch 1 and at the largest batch whose cache fits (capped).
- cache bytes per sequence: `jet_nemotron.cache_nbytes_estimate` (bf16 KV, the JetBlock state in its dtype).
- A plain Qwen decodes through the same grouped-query attention as Jet-Nemotron's full-attention layers
  ("grouped_decode", sdpa for prefill), so neither pays for transformers' sdpa repeating K/V per head under a mask.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm
from transformers import StaticCache

from jet_nemotron import JetNemotronForCausalLM, JetNemotronStaticCache, cache_nbytes_estimate
from jet_nemotron.modeling_jet_nemotron import grouped_decode_attention
from jet_nemotron.transformers_compat import CACHE_NAME  # the cache argument's name in this transformers release

from .generation import compile_config as decode_compile_config
from .models import EvalModel, check_length, release_memory


def register_grouped_decode() -> str:
    """Give transformers' models our grouped decode attention as attn_implementation "grouped_decode"."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module, query, key, value, attention_mask, **kwargs):
        if query.shape[2] == 1 and key.shape[2] > 1:
            return grouped_decode_attention(module, query, key, value, attention_mask, kwargs["scaling"])
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("grouped_decode", attention)
    AttentionMaskInterface.register("grouped_decode", sdpa_mask)
    return "grouped_decode"


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


@torch.no_grad()
def prefill_seconds(model, ctx: int, device) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, ctx), device=device)
    run = lambda: model(ids, use_cache=True, logits_to_keep=1)  # noqa: E731
    run()
    return sorted(timed(run, device) for _ in range(3))[1]


@torch.no_grad()
def fill_static_cache(model, batch: int, ctx: int, max_len: int, device):
    """A static cache that looks as if `ctx` tokens had been processed (random contents)."""
    # Jet-Nemotron's own static cache (what its generate() makes for cache_implementation="static": ring windows)
    cls = JetNemotronStaticCache if isinstance(model, JetNemotronForCausalLM) else StaticCache
    cache = cls(config=model.config, max_cache_len=max_len)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
    model(ids, **{CACHE_NAME: cache}, use_cache=True)  # allocates every layer lazily
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            layer.keys.normal_()
            layer.values.normal_()
            if hasattr(layer, "cumulative_length_int"):  # sliding: a full window
                layer.cumulative_length_int = ctx
            # every layer counts the ctx tokens (a ring window's next slot is ctx % window; transformers' own
            # sliding layer reads the count only before its window is full)
            layer.cumulative_length.fill_(ctx)
        for states in (getattr(layer, "conv_states", None) or {}).values():
            states.normal_()
        for states in (getattr(layer, "recurrent_states", None) or {}).values():
            states.normal_(std=0.05)
    return cache


def greedy(model, ids, cache, n: int, compile_config):
    """generate() exactly n new tokens for every row of ids [B, L] from a filled static cache (no stop, no padding)."""
    return model.generate(ids, attention_mask=torch.ones_like(ids), **{CACHE_NAME: cache}, max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, compile_config=compile_config, pad_token_id=0)


@torch.no_grad()
def decode_tok_s(model, batch: int, ctx: int, device, n1: int, n2: int, compile_config,
                 repeats: int = 3) -> tuple[float, float]:
    """tok/s of generate()'s decode loop from a filled static cache (first step excluded by differencing), and the
    seconds of the compiled one-token step alone: the last step's inputs replayed without generate()'s loop."""
    ids = torch.randint(0, model.config.vocab_size, (batch, ctx + 1), device=device)
    times, last_call, compiled = {n1: [], n2: []}, {}, None
    # the first pair warms up (compiles, records CUDA graphs); then `repeats` pairs, and the median difference:
    # single pairs at batch 1 moved by up to 1.5x between runs on one H200 (host-side jitter of generate's loop)
    order = [n1, n2] * (1 + repeats)
    for i, n in enumerate(order):
        cache = fill_static_cache(model, batch, ctx, ctx + n2 + 16, device)  # room for the replayed steps
        run = lambda: greedy(model, ids, cache, n, compile_config)  # noqa: E731
        if i == len(order) - 1 and hasattr(model, "_compiled_call"):  # generate() reuses it while the config is unchanged
            compiled = model._compiled_call
            model._compiled_call = lambda **kw: (last_call.update(kw), compiled(**kw))[1]
        t = timed(run, device)
        if i >= 2:
            times[n].append(t)
        del cache
    if compiled is not None:
        model._compiled_call = compiled  # the recording wrapper goes, whatever happens next
    diffs = sorted(b - a for a, b in zip(times[n1], times[n2]))
    if diffs[len(diffs) // 2] <= 0:  # timing noise larger than N2 - N1 steps: no rate can be read off
        raise RuntimeError(f"decode timing at batch {batch}, context {ctx}: {n2} tokens took no longer than {n1} "
                           f"(median of {diffs}); use more steps (--speed-steps) or repeats")
    tok_s = batch * (n2 - n1) / diffs[len(diffs) // 2]
    if not last_call:  # generate() compiles only on CUDA (transformers' auto-compile criteria): no step to replay
        return tok_s, float("nan")
    # transformers' static layers advance their own write position: rewind it before each burst of 10 steps
    counters = [(t, t.clone()) for layer in last_call[CACHE_NAME].layers
                for t in [getattr(layer, "cumulative_length", None)] if isinstance(t, torch.Tensor)]

    def step():
        for t, start in counters:
            t.copy_(start)
        for _ in range(10):
            compiled(**last_call)
    step()
    step_s = sorted(timed(step, device) for _ in range(3))[1] / 10
    last_call.clear()
    return tok_s, step_s


def largest_batch(model, ctx: int, device, cap: int, headroom: float = 0.8) -> int:
    """The most sequences whose static cache (plus generate's ids, mask and logits) fits in `headroom` of the free
    memory; the same rule for both models."""
    if device.type != "cuda":
        return cap
    free, _ = torch.cuda.mem_get_info()
    c = model.config
    per_seq = cache_nbytes_estimate(c, ctx + 64) + ctx * 16 + c.vocab_size * 12
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    # inductor benchmarks its cache-write kernel on a clone of the buffer it writes (one layer's K): at 64K and
    # batch 516 that clone was 17.6 GiB, which an H200 run did not have (2026-11-27)
    per_seq += c.num_key_value_heads * (ctx + 64) * head_dim * 2
    if c.model_type != "jet_nemotron" and c._attn_implementation == "sdpa":
        # transformers' sdpa path repeats one layer's K and V per query head when a mask is present (static cache)
        per_seq += 2 * c.num_attention_heads * (ctx + 64) * head_dim * 2
    return max(1, min(cap, int(free * headroom // per_seq)))


def speed(m: EvalModel, contexts: list[int], max_batch: int = 1024, steps: tuple[int, int] = (8, 40),
          grouped_teacher: bool = True, repeats: int = 3) -> dict:
    """{"rows": [{ctx, prefill_ms, prefill_tok_s, decode_batch1_tok_s, decode_max_batch_tok_s,
    decode_max_batch_batch, cache_MB_per_seq}], "device"}: `m` as loaded (its weights and dtype)."""
    for c in contexts:
        check_length(m, c + steps[1] + 16, "a speed context (plus the decoded tokens)")
    model = m.model
    attn = model.config._attn_implementation
    if grouped_teacher and model.config.model_type != "jet_nemotron":
        # the attention layers and mask builders read the config's name at every call (as generation.py sets it)
        model.config._attn_implementation = register_grouped_decode()
    try:
        return _speed(m, contexts, max_batch, steps, repeats)
    finally:
        model.config._attn_implementation = attn  # the other suites measure the model as loaded
        torch._dynamo.reset()


def _speed(m: EvalModel, contexts: list[int], max_batch: int, steps: tuple[int, int], repeats: int) -> dict:
    device, model = m.device, m.model
    # generate() compiles its decode step on CUDA only (transformers' criteria): the CPU runs eager, step_ms is nan
    cc = decode_compile_config() if device.type == "cuda" else None
    rows = []
    for ctx in tqdm(contexts, desc=f"speed {m.name}", unit="context", leave=False):
        row = {"ctx": ctx, "cache_MB_per_seq": cache_nbytes_estimate(model.config, ctx) / 1e6}
        row["prefill_ms"] = prefill_seconds(model, ctx, device) * 1e3
        row["prefill_tok_s"] = ctx / row["prefill_ms"] * 1e3
        for mode, batch in (("batch1", 1), ("max_batch", largest_batch(model, ctx, device, max_batch))):
            tok_s, step_s = decode_tok_s(model, batch, ctx, device, *steps, cc, repeats)
            row[f"decode_{mode}_batch"], row[f"decode_{mode}_tok_s"] = batch, tok_s
            row[f"step_{mode}_ms"] = step_s * 1e3
            release_memory()
        rows.append(row)
        print(f"speed {m.name} @{ctx}: prefill {row['prefill_tok_s']:,.0f} tok/s, decode "
              f"{row['decode_batch1_tok_s']:,.1f} tok/s at batch 1, {row['decode_max_batch_tok_s']:,.0f} at batch "
              f"{row['decode_max_batch_batch']}, cache {row['cache_MB_per_seq']:,.1f} MB/sequence")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"device": name, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "rows": rows}
