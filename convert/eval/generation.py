"""Greedy decoding of many prompts at once: sorted by length, left-padded batches, the static cache, and on CUDA
the compiled decode step (generate()'s CUDA-graph path). Retrieval and HumanEval both answer through `greedy`.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from .models import EvalModel, release_memory


def compile_config():
    """generate()'s compiled one-token step (CUDA graphs), as benchmarks/generation.py measures it."""
    from transformers import CompileConfig

    return CompileConfig(fullgraph=True, dynamic=None, mode="reduce-overhead")


def forget_cache_length(model) -> None:
    """Let the next generate() size its static cache to its own prompt and new tokens. transformers sizes every static
    cache to the longest any generate() of this model has used (`_previous_max_cache_length`, to spare compiled
    graphs a recompile), so after a 32K retrieval cell each HumanEval step attended over 32K slots a row: the
    teacher's decode took 448 ms a step on the H200 for 64 rows, 10x the student's, whose HumanEval ran first."""
    if hasattr(model, "_previous_max_cache_length"):
        del model._previous_max_cache_length


class StepClock:
    """A logits processor that only notes the host time of each decoding step: generate() calls its processors once a
    step, outside the compiled forward. No sync: once the launch queue is full, a GPU-bound loop's host steps run at
    the device's rate. The first time follows the prefill (eager), the second the first decode step (its compile and
    CUDA-graph recording), and the median gap after those is what decoding costs. [B, V] scores pass through."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def batch_line(desc: str, rows: int, width: int, steps: int, t0: float, end: float, times: list[float]) -> str:
    """The log line of one generate() batch: its wall clock, the prefill, the first decode step (compile) and the
    median step after them, from `StepClock` times (a slow batch was, until 2026-12-05, one number of ms a step,
    which could not tell a compile from a slow decode)."""
    line = f"{desc}: batch of {rows} rows, prompts padded to {width} tokens, {steps} steps in {end - t0:.1f} s"
    if len(times) >= 3:
        gaps = sorted(b - a for a, b in zip(times[1:], times[2:]))
        line += (f" (prefill {times[0] - t0:.1f} s, first decode step {times[1] - times[0]:.1f} s, then "
                 f"{gaps[len(gaps) // 2] * 1e3:.1f} ms a step, median of {len(gaps)})")
    return line


def left_pad(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] and attention_mask [B, T] (0 = padding, on the left) of token lists of different lengths; T is the
    longest row's length, or `width` (at least that long) when given."""
    longest = max(len(r) for r in rows)
    if width is not None and width < longest:
        raise ValueError(f"pad width {width} is shorter than the longest prompt ({longest} tokens)")
    width = width or longest
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def greedy(m: EvalModel, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 64,
           stop_strings: list[str] | None = None, compiled: bool | None = None, desc: str = "generating",
           pad_to: int | None = None) -> list[list[int]]:
    """The new token ids greedy decoding gives each prompt (in the order given), cut before the first EOS and
    without the pad tokens that fill a row ended by a stop string.

    Prompts are sorted by length so each batch of `batch_size` pads little; every batch runs generate() with
    `cache_implementation="static"`; `compiled` (default: on CUDA) uses the compiled decode step. A batch that runs
    out of device memory is halved (and said), down to one row. `stop_strings`
    end a row early (a row may overshoot; callers cut the text at the stop string themselves). `pad_to` pads every
    batch to that many prompt tokens, so that with equal batches one compiled shape serves them all.
    """
    if not prompts:
        return []
    if any(not p for p in prompts):
        raise ValueError("an empty prompt cannot be answered (no token to condition on)")
    compiled = m.device.type == "cuda" if compiled is None else compiled
    tok, eos = m.tok, m.tok.eos_token_id
    configured = getattr(m.model.generation_config, "eos_token_id", None)  # chat models end turns with their own
    stops = {eos, *(configured if isinstance(configured, list) else [configured])} - {None}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    extra = {"compile_config": compile_config()} if compiled else {"disable_compile": True}
    if stop_strings:
        extra.update(stop_strings=stop_strings, tokenizer=tok)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False)
    start = 0
    while start < len(order):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tok.pad_token_id, pad_to)
        ids, mask = ids.to(m.device), mask.to(m.device)
        forget_cache_length(m.model)
        clock = StepClock()
        t0 = time.perf_counter()
        try:
            gen = m.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, cache_implementation="static", pad_token_id=tok.pad_token_id,
                                   eos_token_id=sorted(stops), top_p=None, top_k=None, temperature=None,
                                   logits_processor=LogitsProcessorList([clock]), **extra)
        except torch.OutOfMemoryError:
            if len(idx) == 1:
                raise
            # eager decoding is launch-bound, so one large batch is fastest; where it does not fit, halve it (said)
            del ids, mask
            release_memory()
            batch_size = (len(idx) + 1) // 2
            tqdm.write(f"{desc}: a batch of {len(idx)} rows ran out of device memory; batches of {batch_size} now")
            continue
        start += len(idx)
        for row, i in zip(gen[:, ids.shape[1]:].tolist(), idx):
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            # a row ended by a stop string is filled with the pad token until its batch ends, and that pad need not
            # be an EOS (Qwen2.5's GGUF: pad <|endoftext|>, EOS <|im_end|>): the fill is not the model's answer
            while cut and row[cut - 1] == tok.pad_token_id:
                cut -= 1
            out[i] = row[:cut]
        # a batch runs until its slowest row stops: steps and seconds per step say where a slow run's time went
        # (batches under a second, a retrieval cell's, are not worth a line)
        end = time.perf_counter()
        if end - t0 >= 1.0:
            tqdm.write(batch_line(desc, len(idx), ids.shape[1], gen.shape[1] - ids.shape[1], t0, end, clock.times))
        del gen, ids, mask
        bar.update(len(idx))
    bar.close()
    release_memory()
    return out

