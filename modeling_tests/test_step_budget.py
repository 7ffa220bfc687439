"""A stage's wall-clock budget: the step count timed on its own warm-up (`convert/step_budget.py`)."""

from __future__ import annotations

import pytest
import torch

from convert.distill import DistillConfig, distill, lr_at
from convert.step_budget import RESERVE_S, StepBudget, budget_until

from test_convert_distill import _setup


def test_the_count_is_the_steps_that_fit_the_time_left_at_the_timed_rate():
    b = StepBudget(start=0, cap=1000, warmup_steps=30, deadline=100.0)
    assert [s for s in range(1, 40) if b.marks(s)] == [5, 30]
    assert b.mark(5, 11.5) is None
    # 25 steps in 12.5 s: 0.5 s a step; 76 s left buy 152 more
    assert b.mark(30, 24.0) == 182 and b.seconds_per_step == 0.5
    assert not b.marks(30)  # chosen once


def test_the_cap_bounds_the_count_and_a_passed_deadline_ends_the_stage_at_the_mark():
    b = StepBudget(start=0, cap=50, warmup_steps=30, deadline=100.0)
    b.mark(5, 10.0)
    assert b.mark(30, 24.0) == 50
    late = StepBudget(start=0, cap=50, warmup_steps=30, deadline=20.0)
    late.mark(5, 10.0)
    assert late.mark(30, 24.0) == 30


def test_a_resumed_stage_times_from_its_own_start_and_a_short_warmup_still_times_five_steps():
    b = StepBudget(start=40, cap=1000, warmup_steps=2, deadline=100.0)
    assert [s for s in range(1, 60) if b.marks(s)] == [45, 50]
    assert not StepBudget(start=0, cap=5, warmup_steps=2, deadline=1.0).marks(10)  # past the cap: never timed


def _fixed_rate(monkeypatch, chosen: int):
    """Clock readings at the marks that make the budget choose `chosen` steps (0.01 s a step), whatever the
    machine's speed."""
    orig = StepBudget.mark

    def mark(self, step, now, acc=None):
        return orig(self, step, self.deadline - 0.01 * (chosen - step) - 1e-6, acc)

    recheck = StepBudget.recheck  # the same clock at the read-backs after the count is chosen: it stays

    monkeypatch.setattr(StepBudget, "mark", mark)
    monkeypatch.setattr(StepBudget, "recheck", lambda self, step, now, acc=None: recheck(
        self, step, self.deadline - 0.01 * (chosen - step) - 1e-6, acc))


def test_a_budgeted_stage_trains_exactly_as_the_plan_of_the_count_it_chose(monkeypatch):
    cfg = dict(stage=1, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=10, log_every=0, local=False)
    teacher, ref, train, _ = _setup()
    distill(ref, teacher, train, DistillConfig(steps=20, **cfg))
    _fixed_rate(monkeypatch, 20)
    teacher, student, train, _ = _setup()
    s = distill(student, teacher, train, DistillConfig(steps=100, time_budget_s=60.0, **cfg))
    assert s["steps"] == 20 and s["step_budget"] == {"seconds": 60.0, "cap": 100, "steps": 20}
    assert [h["step"] for h in s["history"]] == list(range(1, 21))
    # the count was chosen at the end of the warm-up, so the cosine ends at the chosen last step
    assert s["history"][-1]["lr"] == lr_at(19, DistillConfig(steps=20, **cfg))
    for (n, a), b in zip(ref.state_dict().items(), student.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)


def test_a_killed_budgeted_stage_resumes_with_the_count_it_chose(tmp_path, monkeypatch):
    cfg = dict(stage=1, batch_size=4, micro_batch=2, lr=1e-2, warmup_steps=10, log_every=0, save_every=4)
    teacher, ref, train, _ = _setup()
    distill(ref, teacher, train, DistillConfig(steps=20, **cfg))
    _fixed_rate(monkeypatch, 20)
    teacher, student, train, _ = _setup()
    out = distill(student, teacher, train, DistillConfig(steps=100, time_budget_s=60.0, **cfg), ckpt_dir=tmp_path,
                  stop=lambda step: step >= 14)
    assert out["stopped_at"] == 14 and (tmp_path / "step_12").is_dir()
    monkeypatch.undo()  # the resumed process times nothing: the checkpoint holds the count
    teacher, fresh, train, _ = _setup()
    res = distill(fresh, teacher, train, DistillConfig(steps=100, time_budget_s=60.0, **cfg), ckpt_dir=tmp_path,
                  resume=True)
    assert res["steps"] == 20 and [h["step"] for h in res["history"]] == list(range(1, 21))
    for (n, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)
    # the resumed stage's own checkpoints keep the count too: resuming its finished stage again trains nothing more
    # (they once held none, and a third process went on towards the cap)
    teacher, again, train, _ = _setup()
    res = distill(again, teacher, train, DistillConfig(steps=100, time_budget_s=60.0, **cfg), ckpt_dir=tmp_path,
                  resume=True)
    assert res["steps"] == 20 and len(res["history"]) == 20
    for (n, a), b in zip(ref.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)


def test_a_count_lowered_to_a_checkpoint_step_writes_that_checkpoint_once(tmp_path, monkeypatch):
    import convert.distill as distill_mod

    _fixed_rate(monkeypatch, 20)

    def recheck(self, step, now, acc=None):  # at step 12 the steps have slowed: the stage ends there
        if step == 12:
            self.chosen = 12
            return 12
        return None

    monkeypatch.setattr(StepBudget, "recheck", recheck)
    written, real = [], distill_mod.save_checkpoint
    monkeypatch.setattr(distill_mod, "save_checkpoint", lambda acc, ckpt_dir, step, *a: written.append(step)
                        or real(acc, ckpt_dir, step, *a))
    teacher, student, train, _ = _setup()
    s = distill(student, teacher, train, DistillConfig(stage=1, steps=100, batch_size=4, micro_batch=2, lr=1e-2,
                                                       warmup_steps=10, log_every=0, save_every=4, time_budget_s=60.0),
                ckpt_dir=tmp_path)
    assert s["steps"] == 12
    assert written == [4, 8, 12]  # the stage's end wrote step 12; the step loop's save did not write it first


def test_on_the_real_clock_a_small_budget_ends_the_stage_before_its_cap():
    teacher, student, train, _ = _setup()
    s = distill(student, teacher, train, DistillConfig(stage=1, steps=100_000, batch_size=4, micro_batch=2,
                                                       warmup_steps=10, log_every=0, time_budget_s=1.0))
    assert 10 <= s["steps"] < 100_000 and len(s["history"]) == s["steps"]
    # the schedule is the chosen count's: its cosine ends at that count's last step
    n = s["steps"]
    assert s["history"][-1]["lr"] == lr_at(n - 1, DistillConfig(steps=n, warmup_steps=10))


def test_later_stages_start_where_a_budgeted_stage_stopped_not_where_its_cap_ended():
    from types import SimpleNamespace

    from convert.pipeline import follow_ran_steps

    stages = [DistillConfig(stage=1, steps=700, batch_size=16), DistillConfig(stage=2, steps=10_000, batch_size=16),
              DistillConfig(stage=3, steps=50, batch_size=4, seq_len=8192)]
    samplers = [SimpleNamespace(row_offset=0, seq_len=2048), SimpleNamespace(row_offset=700 * 16, seq_len=2048),
                SimpleNamespace(row_offset=(700 + 10_000) * 16 // 4, seq_len=8192)]
    follow_ran_steps(samplers, stages, 0, 650)  # 50 steps of 16 rows of 2,048 tokens left undrawn
    assert [s.row_offset for s in samplers] == [0, 650 * 16, (650 + 10_000) * 16 // 4]
    follow_ran_steps(samplers, stages, 1, 300)
    assert samplers[2].row_offset == (650 + 300) * 16 // 4


def test_a_stage_budget_leaves_the_reserve_for_the_measurement_after_it_and_is_never_below_a_second():
    import time

    end = time.perf_counter() + 100
    assert 100 - RESERVE_S - 1 < budget_until(end) <= 100 - RESERVE_S
    assert budget_until(time.perf_counter()) == 1.0


def test_a_recheck_refits_the_count_to_the_mean_step_lower_at_once_higher_past_a_margin():
    b = StepBudget(start=0, cap=1000, warmup_steps=30, deadline=100.0)
    b.mark(5, 11.5)
    assert b.mark(30, 24.0) == 182  # 0.5 s a step
    assert b.recheck(40, 29.0) is None  # still 0.5 s a step: 142 more fit the 71 s left
    # steps 40-80 took 1 s each: 0.77 s on average since step 5, and the 31 s left buy 40 more, not 102
    assert b.recheck(80, 69.0) == 120 and b.chosen == 120
    assert b.recheck(84, 72.0) is None  # 0.77 s: still 120
    # steps 84-100 took 0.1 s each: 0.65 s on average since step 5, and the 26.4 s left buy 40 more: 140, raised
    assert b.recheck(100, 73.6) == 140
    assert b.recheck(110, 120.0) == 110  # past the deadline: the stage ends at this step
    assert b.recheck(110, 130.0) is None


def test_a_recheck_never_passes_the_cap():
    b = StepBudget(start=0, cap=50, warmup_steps=10, deadline=200.0)
    b.mark(5, 10.0)
    assert b.mark(10, 40.0) == 36  # 6 s a step: 26 more fit the 160 s left
    assert b.recheck(30, 43.0) == 50  # steps 10-30 took 0.15 s: 1.32 s on average, 118 more fit, the cap is 50


def test_stage_ends_are_the_running_shares_of_the_budget_or_the_whole_budget_without_shares():
    from convert.step_budget import stage_ends

    assert stage_ends(870.0, [0.7, 0.3], 2) == pytest.approx([609.0, 870.0])
    assert stage_ends(900.0, [0.5, 0.5, 0.0], 3) == pytest.approx([450.0, 900.0, 900.0])
    assert stage_ends(870.0, None, 2) == [870.0, 870.0]
    with pytest.raises(ValueError, match="3 budget shares for 2 stages"):
        stage_ends(870.0, [0.5, 0.3, 0.2], 2)
