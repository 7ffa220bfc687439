"""Rows of the generated streams (chat and retrieval rows) drawn ahead in worker processes.

A generated row is Python work: a chat row decodes a 4,096-token window, parses its functions, applies the chat
template and encodes, 24-31 ms a row with the real tokenizer (2026-12-04). On the batch thread that Python holds the
GIL while the training thread launches its kernels (`benchmarks/generated_rows_gil.py` measures what that costs a
thread of small torch ops; its record is `benchmarks/results/generated_rows_gil.json`). Here a pool of forked
processes draws the rows the next steps will take, and `draw(k)` hands back the same array the stream's own
`draw(k)` makes (row k is a pure function of (seed, k)), so a run is the same run with or without workers.

Forked as PyTorch's DataLoader workers are: the stream (its tokenizer and memory-mapped haystack) is inherited, not
pickled, and the workers run no torch and touch no GPU. `start` forks them from the training thread before the batch
thread exists (`distill` calls it), not from the batch thread while the training thread works.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import Future, ProcessPoolExecutor

_STREAM = None  # a worker's stream, set once when the worker starts


def _set_stream(stream) -> None:
    global _STREAM
    _STREAM = stream


def _draw(k: int):
    return _STREAM.draw(k)


def default_workers() -> int:
    """Worker processes for generated rows: up to 4, leaving two cores to the training process and its batch thread
    (none on a machine of two cores or fewer, where the batch thread builds them as before)."""
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def resolve_workers(workers: int | None) -> int:
    """`workers` as asked (`--row-workers`), or `default_workers()` for None."""
    return default_workers() if workers is None else workers


class AheadStream:
    """A generated stream whose rows are drawn in `workers` processes once `request`ed. Other attributes are the
    stream's (its name, seq_len)."""

    def __init__(self, stream, workers: int):
        if workers < 1:
            raise ValueError(f"AheadStream needs at least one worker, got {workers}")
        self.stream, self.workers = stream, workers
        self.pool: ProcessPoolExecutor | None = None
        self.pending: dict[int, Future] = {}
        self.drawn_here = 0  # rows asked for before they were requested, drawn in this process

    def __getattr__(self, name):  # only reached for names this wrapper does not hold
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.stream, name)

    def start(self) -> None:
        """Fork the workers now (a forking pool starts them all at its first task), if they are not running."""
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"),
                                            initializer=_set_stream, initargs=(self.stream,))
            self.pool.submit(int).result()

    def request(self, ks) -> None:
        """Start drawing rows `ks` (those not already under way) in the workers."""
        self.start()
        for k in ks:
            if k not in self.pending:
                self.pending[k] = self.pool.submit(_draw, k)

    def draw(self, k: int):
        """Row k, from the workers when it was requested, else drawn here."""
        fut = self.pending.pop(k, None)
        if fut is None:
            self.drawn_here += 1
            return self.stream.draw(k)
        return fut.result()

    def close(self) -> None:
        """Stop the workers (rows requested and not drawn are dropped)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()
