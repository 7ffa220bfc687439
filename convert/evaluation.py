"""Quality checks shared by the benchmarks and examples: perplexity and passkey retrieval.

The passkey format lives here once: `passkey_prompt` builds the question that `passkey_accuracy` asks, and
`passkey_rows` builds training rows from the same function plus the answer, so training and evaluation
cannot drift apart (same needle text, same question, same tokenisation of the key).
"""

from __future__ import annotations

import random

import torch

from .distill import perplexity

__all__ = ["perplexity", "passkey_accuracy", "passkey_prompt", "passkey_rows", "PASSKEY_NEEDLE", "PASSKEY_QUESTION"]

PASSKEY_NEEDLE = "\nPASSKEY = {key}\n"  # planted at a random depth of the filler
PASSKEY_QUESTION = "\nassert PASSKEY == "  # ends the prompt; the answer is the key's digits


def token_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def passkey_prompt(tok, filler_ids: list[int], length: int, rng: random.Random,
                   answered: bool = False) -> tuple[list[int], str]:
    """One passkey question of `length` token ids (fewer only if the filler is shorter) and its 5-digit key.

    A window of `filler_ids` starting at a random offset, the needle `PASSKEY = <key>` inserted at a random
    token depth, and `assert PASSKEY == ` at the end. With `answered` the key's own tokens follow the question
    inside the `length` (a training document); the filler shrinks to make room. The rng is drawn in a fixed
    order (key, window, depth) so a seed gives the same prompts as before this was split out of
    `passkey_accuracy`.
    """
    key = str(rng.randint(10000, 99999))
    needle = token_ids(tok, PASSKEY_NEEDLE.format(key=key))
    # the key is tokenised on its own, as the model must produce it after the question's last token
    tail = token_ids(tok, PASSKEY_QUESTION) + (token_ids(tok, key) if answered else [])
    n_fill = length - len(needle) - len(tail)
    if n_fill < 0:
        raise ValueError(f"a passkey document needs at least {len(needle) + len(tail)} tokens, asked for {length}")
    start = rng.randint(0, max(0, len(filler_ids) - n_fill - 1))
    fill = filler_ids[start:start + n_fill]
    depth = rng.randint(0, len(fill))
    return fill[:depth] + needle + fill[depth:] + tail, key


def passkey_rows(tok, filler_ids: list[int], n_rows: int, seq_len: int, seed: int = 0,
                 min_len: int = 48) -> torch.Tensor:
    """Training rows [n_rows, seq_len] (int64) of back-to-back passkey documents, each ended by EOS.

    A document is `passkey_prompt(..., answered=True)` (filler, needle, question, key) + EOS. Its length is
    log-uniform in [min_len, seq_len]: short documents give many examples per token (retrieval is learnt
    from the count of examples), long ones cover needle-to-question distances up to the row length. The
    last document of a row takes the room left, so every row ends with `assert PASSKEY == <key>` + EOS and
    no document is cut between rows (a question whose needle sits in another row would teach guessing).
    Deterministic for a given seed.
    """
    if len(filler_ids) <= seq_len:
        raise ValueError(f"the filler has {len(filler_ids)} tokens; passkey rows of {seq_len} need more")
    min_len = min(min_len, seq_len)
    rng = random.Random(seed)
    rows = [_passkey_row(tok, filler_ids, seq_len, min_len, rng) for _ in range(n_rows)]
    return torch.tensor(rows, dtype=torch.long)


def _passkey_row(tok, filler_ids: list[int], seq_len: int, min_len: int, rng: random.Random) -> list[int]:
    """One row of `seq_len` ids for `passkey_rows`."""
    row: list[int] = []
    while len(row) < seq_len:
        room = seq_len - len(row)
        n = min(room, round(min_len * (seq_len / min_len) ** rng.random()))
        if room - n < min_len:  # too little would be left for another document: this one fills the row
            n = room
        row += passkey_prompt(tok, filler_ids, n - 1, rng, answered=True)[0] + [tok.eos_token_id]
    return row


def passkey_accuracy(model, tok, filler_ids: list[int], context: int, trials: int, device, seed: int = 0) -> float:
    """Fraction of trials where greedy decoding reproduces a 5-digit key planted at a random depth.

    The prompt (`passkey_prompt`) is stdlib code (the models' domain) of about `context` tokens with
    `PASSKEY = <key>` inserted and `assert PASSKEY == ` at the end; the answer must start with the key.
    """
    rng = random.Random(seed)
    model.eval()
    hits = 0
    for _ in range(trials):
        prompt, key = passkey_prompt(tok, filler_ids, context, rng)
        ids = torch.tensor([prompt], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        hits += tok.decode(out[0, ids.shape[1]:]).strip().startswith(key)
    return hits / trials
