"""benchmarks/gpu_by_stage.py: the card's samples lined up with a run's step log, stage by stage."""

import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_by_stage as gbs  # noqa: E402


def _samples(path, rows):
    lines = ["unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons"]
    lines += [f"{t},{mhz},2619,{w},{c},{u},{r}" for t, mhz, w, c, u, r in rows]
    path.write_text("\n".join(lines) + "\n")


def _history(stage, t_end, steps, ms, every=10):
    """Records as StepMeter writes them: `every` steps share the time their interval was read back."""
    out = []
    for i in range(steps):
        flush = (i // every + 1) * every
        out.append({"stage": stage, "step": i + 1, "ms_per_step": ms,
                    "time": t_end - (steps - flush) * ms / 1e3})
    return out


def test_each_stage_gets_the_samples_inside_its_steps(tmp_path):
    # stage 1: 100 steps of 1 s from t=1000 to 1100 at full clock, its first interval (10 steps, a compile) idle;
    # stage 2: 50 steps of 2 s to 1200, power-capped and with a host gap; a sample before the run and one after
    # belong to neither
    rows = [(990, 1980, 100, 40, 0, "0x1")]
    rows += [(t, 1980, 690, 60, 99 if t > 1010 else 0, "0x0000000000000000" if t > 1010 else "0x1")
             for t in range(1001, 1100, 5)]
    rows += [(t, 1700, 700, 70, 80 if t % 2 else 99, "0x0000000000000004") for t in range(1101, 1200, 5)]
    rows += [(1300, 1980, 80, 40, 0, "0x1")]
    _samples(tmp_path / "s.csv", rows)
    run = {"variants": [{"name": "v", "history": _history(1, 1100, 100, 1000) + _history(2, 1200, 50, 2000)}]}
    for h in run["variants"][0]["history"]:
        h["gc_ms_per_step"] = 0.5 * h["stage"]
        # stage 1: 9 cudaMallocs in its first interval (warm-up), none after; stage 2: 1 retry and 2 mallocs an
        # interval throughout (each of an interval's records carries the interval's count)
        h["alloc_retries"], h["device_mallocs"] = (0, 9 if h["step"] <= 10 else 0) if h["stage"] == 1 else (1, 2)
    (tmp_path / "v.json").write_text(json.dumps(run))
    one, two = gbs.main(["--samples", str(tmp_path / "s.csv"), "--runs", str(tmp_path / "v.json"),
                         "--out", str(tmp_path / "out")])
    assert (one["start"], one["end"], two["start"], two["end"]) == pytest.approx((1000, 1100, 1100, 1200))
    assert (one["steady"], two["steady"]) == pytest.approx((1010, 1120))
    assert one["samples"] == 18 and two["samples"] == 16  # from the end of the first interval: the idle one left out
    assert (one["sm_mhz"], one["power_capped"], one["util_below_90"]) == (1980, 0, 0)
    assert (two["sm_mhz"], two["power_capped"], two["thermal"]) == (1700, 1, 0)
    assert two["util_below_90"] == 0.5 and two["ms_per_step"] == 2000
    assert (one["gc_ms_per_step"], two["gc_ms_per_step"]) == (0.5, 1.0)
    assert (one["alloc_retries"], one["device_mallocs"]) == (0, 0)  # the warm-up interval is left out
    assert (two["alloc_retries"], two["device_mallocs"]) == (4, 8)  # 5 intervals of 10 steps, the first left out
    assert json.loads((tmp_path / "out" / "gpu_by_stage.json").read_text())["stages"][1]["samples"] == 16
    assert (tmp_path / "out" / "gpu_by_stage.png").stat().st_size > 0


def test_a_history_without_times_and_unreadable_samples_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"run 'old' logs no step times"):
        gbs.stage_spans({"variants": [{"name": "old", "history": [{"stage": 1, "step": 1, "ms_per_step": 5}]}]},
                        "v.json")
    (tmp_path / "bad.csv").write_text("time,clock\n1,2\n")
    with pytest.raises(ValueError, match=r"bad.csv: columns \['time', 'clock'\]"):
        gbs.read_samples(tmp_path / "bad.csv")
    _samples(tmp_path / "na.csv", [(1, "[N/A]", 1, 1, 1, "0x0"), (2, 1980, 1, 1, 1, "0x0")])
    assert [r["unix_s"] for r in gbs.read_samples(tmp_path / "na.csv")] == [2]


def test_step_records_carry_the_time_their_interval_ended_and_its_garbage_collections():
    import gc

    from convert.throughput import StepMeter

    meter = StepMeter(tokens_per_step=8, flops_per_token=1.0, peak=None)
    meter.add(1, 1e-3, torch.zeros(3))
    meter.add(2, 1e-3, torch.zeros(3))
    gc.collect()  # a full collection inside the interval
    before = time.time()
    recs = meter.flush()
    assert [r["step"] for r in recs] == [1, 2]
    assert before <= recs[0]["time"] == recs[1]["time"] <= time.time()
    assert recs[0]["gc_full"] >= 1 and recs[0]["gc_ms_per_step"] > 0
    gc.disable()  # an interval without a collection counts none (the clock restarted at the last flush)
    try:
        meter.restart_clock()
        meter.add(3, 1e-3, torch.zeros(3))
        (rec,) = meter.flush()
    finally:
        gc.enable()
    assert (rec["gc_full"], rec["gc_ms_per_step"]) == (0, 0)


def test_step_records_count_the_allocators_retries_and_mallocs_of_their_interval(monkeypatch):
    """The CUDA caching allocator's counters are cumulative: each record carries its interval's difference, the
    clock restarting at every flush (a fake counter here: the CPU has no such allocator)."""
    import convert.throughput as tp

    counts = iter([(2, 10), (5, 17), (5, 17), (6, 30), (6, 30)])  # read at each start and each flush
    monkeypatch.setattr(tp, "alloc_clock", lambda: next(counts))
    meter = tp.StepMeter(tokens_per_step=8, flops_per_token=1.0, peak=None)
    meter.add(1, 1e-3, torch.zeros(3))
    meter.add(2, 1e-3, torch.zeros(3))
    recs = meter.flush()
    assert [(r["alloc_retries"], r["device_mallocs"]) for r in recs] == [(3, 7), (3, 7)]
    meter.add(3, 1e-3, torch.zeros(3))
    (rec,) = meter.flush()
    assert (rec["alloc_retries"], rec["device_mallocs"]) == (1, 13)
