"""How many optimizer steps fit a stage's wall-clock budget, timed on the stage's own first steps.

A step plan made from another run's step times guesses: a card's step time moves with its kind, the speed switches
and the data, and on 2026-12-06 a 15-minute plan made from the previous run left 104 s of an H100 unused. A
`StepBudget` times the steps between two marks inside the warm-up (the learning rate there does not depend on the
total, so choosing the total late changes no step already taken) and sets the count that ends by the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

RAISE_AT = 0.02  # a recheck raises the count only by more than this share of it (and 2 steps): no lr jitter
RESERVE_S = 10.0  # a stage's held-out KL after its steps (3-5 s on an H100), outside its time budget


def budget_until(end: float) -> float:
    """The `time_budget_s` of a stage starting now whose steps end RESERVE_S before `end` (perf_counter seconds),
    so that its measurement after them ends by `end` too; at least 1 s."""
    return max(1.0, end - RESERVE_S - time.perf_counter())


def stage_ends(budget_s: float, shares: Sequence[float] | None, n: int) -> list[float]:
    """Seconds after the first stage's start by which each of `n` stages ends: the running sums of `shares` (each
    stage's share of `budget_s`), or the whole budget for every stage without them (each stage then runs to its cap
    and the last fills what the others leave)."""
    if shares is None:
        return [budget_s] * n
    if len(shares) != n:
        raise ValueError(f"{len(shares)} budget shares for {n} stages")
    return [budget_s * sum(shares[:i + 1]) for i in range(n)]


class StepBudget:
    """Steps of one stage against `deadline` (`time.perf_counter()` seconds), with `cap` the most it may run.

    The marks sit after step `start + 5` (the first steps build and tune kernels: on the H100 the first 10 of a
    stage averaged 1,086 ms against 567 after, 2026-12-06) and at the end of the warm-up (at least 5 steps later);
    `marks(step)` says where the loop must read its losses back (a sync, so the clock sees finished work) and call
    `mark`. After that, `recheck` at each read-back refits the count to the stage's mean step since the first mark:
    lower as soon as that mean no longer fits the time left (the third run's stage 2 rose 13% after its warm-up; a
    checkpoint written inside the budget counts the same way), higher once RAISE_AT more steps fit (with
    `DistillConfig`'s default warm-up of 10 the timing window is 5 steps, 1.5 s at batch 8 on an H100, where one slow
    step would cost a fifth of the count). The cosine follows the count: a change of a few percent moves the learning
    rate by about as much.
    """

    def __init__(self, start: int, cap: int, warmup_steps: int, deadline: float):
        self.first = start + 5
        self.last = max(start + warmup_steps, self.first + 5)
        self.cap, self.deadline = cap, deadline
        self.t_first: float | None = None
        self.chosen: int | None = None
        self.seconds_per_step: float | None = None

    def read_back(self, step: int, now: float, acc=None) -> int | None:
        """At the loop's read-back after `step` (a sync; every process at the same step): the mark there, else the
        recheck. The count when it is set or changed, else None."""
        return self.mark(step, now, acc) if self.marks(step) else self.recheck(step, now, acc)

    def marks(self, step: int) -> bool:
        """Whether the loop times the end of `step` (1-based count of steps done)."""
        return self.chosen is None and step in (self.first, self.last) and step <= self.cap

    def mark(self, step: int, now: float, acc=None) -> int | None:
        """Record the clock at the end of `step`; at the second mark, the chosen step count (at least `step`, at
        most the cap), the same on every process (the main process's, under several), else None."""
        if step == self.first:
            self.t_first = now
            return None
        if self.t_first is None:
            raise RuntimeError(f"step budget: the mark after step {step} came before the first one ({self.first})")
        self.chosen = _agreed(self._fits(step, now), acc)
        return self.chosen

    def recheck(self, step: int, now: float, acc=None) -> int | None:
        """At a read-back after the count was chosen (every process at the same step): the count that ends by the
        deadline at the stage's mean step time since the first mark (at least `step`, which then ends the stage; at
        most the cap) when it is lower, or higher by more than RAISE_AT; else None to keep the count."""
        if self.chosen is None or step >= self.chosen:
            return None
        n = _agreed(self._fits(step, now), acc)
        if self.chosen <= n <= max(self.chosen * (1 + RAISE_AT), self.chosen + 2):
            return None
        self.chosen = n
        return n

    def _fits(self, step: int, now: float) -> int:
        """The steps that end by the deadline at the mean step since the first mark: at least `step`, at most the
        cap."""
        self.seconds_per_step = (now - self.t_first) / (step - self.first)
        return min(self.cap, step + int(max(0.0, self.deadline - now) / self.seconds_per_step))


def _agreed(n: int, acc) -> int:
    """The main process's `n` on every process: one count for all, or their collectives part ways."""
    if acc is not None and acc.num_processes > 1:
        t = torch.tensor([n], device=acc.device)
        torch.distributed.broadcast(t, src=0)
        n = int(t.item())
    return n
