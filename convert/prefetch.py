"""Training batches built one step ahead on a background thread, so reading the memory map and gathering rows
overlaps the device's work on the current step. On CUDA the batch is pinned, so `.to(device,
non_blocking=True)` copies it without stalling the host."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


class Prefetcher:
    """get(step) returns make(step) ([B, L] int64 CPU tensor) and starts make(step + 1) while it is used."""

    def __init__(self, make, start: int, stop: int, pin: bool = False, depth: int = 2):
        self.make, self.stop, self.pin, self.depth = make, stop, pin, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batch-prefetch")
        self.futures: dict = {}
        for s in range(start, min(start + depth, stop)):
            self.futures[s] = self.pool.submit(self._build, s)

    def _build(self, step: int) -> torch.Tensor:
        x = self.make(step)
        return x.pin_memory() if self.pin else x

    def get(self, step: int) -> torch.Tensor:
        fut = self.futures.pop(step, None)
        x = fut.result() if fut is not None else self._build(step)
        ahead = step + self.depth
        if ahead < self.stop and ahead not in self.futures:
            self.futures[ahead] = self.pool.submit(self._build, ahead)
        return x

    def close(self) -> None:
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True)
