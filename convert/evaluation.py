"""Quality checks shared by the benchmarks and examples: perplexity and passkey retrieval."""

from __future__ import annotations

import random

import torch

from .distill import perplexity

__all__ = ["perplexity", "passkey_accuracy"]


def passkey_accuracy(model, tok, filler_ids: list[int], context: int, trials: int, device, seed: int = 0) -> float:
    """Fraction of trials where greedy decoding reproduces a 5-digit key planted at a random depth.

    The prompt is stdlib code (the models' domain) of about `context` tokens with `PASSKEY = <key>` inserted
    and `assert PASSKEY == ` at the end; the answer must start with the key.
    """
    rng = random.Random(seed)
    model.eval()
    hits = 0
    tail = tok("\nassert PASSKEY == ", add_special_tokens=False)["input_ids"]
    for t in range(trials):
        key = str(rng.randint(10000, 99999))
        needle = tok(f"\nPASSKEY = {key}\n", add_special_tokens=False)["input_ids"]
        n_fill = context - len(needle) - len(tail)
        start = rng.randint(0, max(0, len(filler_ids) - n_fill - 1))
        fill = filler_ids[start:start + n_fill]
        depth = rng.randint(0, len(fill))
        ids = torch.tensor([fill[:depth] + needle + fill[depth:] + tail], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        hits += tok.decode(out[0, ids.shape[1]:]).strip().startswith(key)
    return hits / trials
