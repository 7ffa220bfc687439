"""Token-weighted perplexity on local text: files, folders (.py/.txt/.md/.rst/.jsonl/.parquet) or saved datasets.

Documents are tokenised, joined with EOS and cut into windows of `window` tokens (the last, shorter window is
kept when it has two tokens or more); perplexity = exp(total next-token NLL / number of predicted tokens), so every
token weighs the same whatever window it falls in. The vocabulary-wide logits are formed in chunks of tokens
across the batch, so a 150K vocabulary at 32K tokens a batch does not need a [B, T, V] float tensor.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..data import iter_documents
from .models import EvalModel, check_length


def read_texts(paths: list[str], text_field: str = "text") -> list[str]:
    """The non-empty documents under `paths`; a clear error when there are none."""
    texts = [t for _, t in iter_documents(paths, text_field) if t and str(t).strip()]
    if not texts:
        raise ValueError(f"no text in {', '.join(map(str, paths))} (empty files, or no .py/.txt/.md/.rst/.jsonl "
                         "files in the folders)")
    return texts


def token_stream(tok, texts: list[str]) -> list[int]:
    """All documents' ids, each followed by EOS."""
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


def windows(ids: list[int], window: int, max_tokens: int | None = None) -> list[list[int]]:
    if max_tokens:
        ids = ids[:max_tokens]
    rows = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [r for r in rows if len(r) >= 2]


@torch.no_grad()
def causal_nll(model, x: torch.Tensor, chunk: int = 4096) -> float:
    """Summed next-token NLL (nats) of rows x [B, T] (no padding, on the model's device) under a causal LM, found
    through transformers' accessors (`get_decoder`, final norm applied, and `get_output_embeddings`), which a PEFT
    wrapper passes through. The decoder runs once; the head's logits exist for at most `chunk` tokens at a time, all
    rows together: [B, chunk // B, V] in fp32 (2.5 GB at a 152K vocabulary)."""
    hidden = model.get_decoder()(input_ids=x, use_cache=False).last_hidden_state  # [B, T, H]
    head = model.get_output_embeddings()
    total = 0.0
    # positions per chunk shrink with the batch: a chunk of `chunk` positions per row was 8 x 4,096 x 152K fp32
    # logits (20 GB) at the default batch, which ran a card out of memory after a distillation had fragmented it
    step = max(1, chunk // x.shape[0])
    for s in range(0, x.shape[1] - 1, step):
        e = min(s + step, x.shape[1] - 1)
        logits = head(hidden[:, s:e]).float()  # [B, e - s, V]
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, s + 1:e + 1].flatten(),
                                                   reduction="sum").item()
    return total


def window_nll(m: EvalModel, rows: torch.Tensor, chunk: int = 4096) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of predicted tokens of rows [B, T] (no padding)."""
    return causal_nll(m.model, rows.to(m.device), chunk), rows.shape[0] * (rows.shape[1] - 1)


def perplexity(m: EvalModel, texts: list[str], window: int = 4096, max_tokens: int | None = None,
               tokens_per_batch: int = 32768) -> dict:
    """{"perplexity", "nll", "tokens" (predicted), "windows", "window"} of `m` on `texts`."""
    check_length(m, window, "the perplexity window")
    ids = token_stream(m.tok, texts)
    rows = windows(ids, window, max_tokens)
    if not rows:
        raise ValueError(f"the text has {len(ids)} tokens: not one window of two or more")
    full = [r for r in rows if len(r) == window]
    batches = [torch.tensor(full[i:i + max(1, tokens_per_batch // window)])
               for i in range(0, len(full), max(1, tokens_per_batch // window))]
    batches += [torch.tensor([r]) for r in rows if len(r) < window]
    nll, n = 0.0, 0
    for b in tqdm(batches, desc=f"perplexity {m.name}", unit="batch", leave=False):
        s, k = window_nll(m, b)
        nll, n = nll + s, n + k
    result = {"perplexity": math.exp(nll / n), "nll": nll / n, "tokens": n, "windows": len(rows), "window": window}
    print(f"perplexity {m.name}: {result['perplexity']:.4f} over {n:,} tokens ({len(rows)} windows of {window})")
    return result
