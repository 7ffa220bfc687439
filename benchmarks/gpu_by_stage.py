"""The card's clocks, power and utilisation during each stage of a run, from `sample_gpu.sh`'s samples lined up
with the run's step log, to tell a card that slows down (clock events: power cap, thermal) from a host that cannot
keep it busy (utilisation under 100% at full clocks).

    python benchmarks/gpu_by_stage.py --samples gpu_samples.csv --runs variants.json --out DIR

`--runs` is any results JSON whose runs hold a "history" of step records with "time" (Unix seconds at the end of
each logged interval, as `convert.throughput.StepMeter` writes them since 2026-12-06): `distill_variants.py`'s
variants.json, `distill_real.py`'s results. A stage spans from its first logged interval's start to its last
record; its samples are summarised from the end of that first interval (the first step's compile and the allocator's
warm-up leave the card idle for seconds: 19 s of a 20-step profile's 30, 2026-12-07). Writes gpu_by_stage.json and
gpu_by_stage.png; prints one line a stage.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stamp import stamp  # noqa: E402

# NVML clock-event reason bits (nvidia-smi's clocks_event_reasons.active)
IDLE, POWER_CAP, HW_SLOWDOWN, SW_THERMAL, HW_THERMAL, POWER_BRAKE = 0x1, 0x4, 0x8, 0x20, 0x40, 0x80
COLUMNS = ("unix_s", "sm_mhz", "mem_mhz", "power_w", "temp_c", "util_pct", "reasons")


def read_samples(path: Path) -> list[dict]:
    """`sample_gpu.sh`'s rows as numbers ("reasons" an int bitmask); rows nvidia-smi left unreadable ("[N/A]")
    are skipped."""
    out = []
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if tuple(rows.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {rows.fieldnames}, expected {list(COLUMNS)} (sample_gpu.sh's)")
        for row in rows:
            try:
                r = {k: float(row[k]) for k in COLUMNS[:-1]}
                r["reasons"] = int(row["reasons"], 16)
            except (TypeError, ValueError):
                continue
            out.append(r)
    if not out:
        raise ValueError(f"{path}: no readable samples")
    return out


def stage_spans(results: dict, where: str) -> list[dict]:
    """[{"run", "stage", "start", "steady", "end", "ms_per_step"}] of every run's stages in `results`, start, steady
    (the end of the first logged interval, or start where there is no other) and end in Unix seconds, ms_per_step the
    median of the stage's logged intervals."""
    runs = results.get("variants") or [results]
    spans = []
    for i, run in enumerate(runs):
        hist = run.get("history") or []
        if hist and "time" not in hist[0]:
            raise ValueError(f"{where}: run {run.get('name', i)!r} logs no step times (its history predates them)")
        for stage in sorted({h["stage"] for h in hist}):
            recs = [h for h in hist if h["stage"] == stage]
            first = [h for h in recs if h["time"] == recs[0]["time"]]  # the records of the first logged interval
            start = recs[0]["time"] - len(first) * recs[0]["ms_per_step"] / 1e3
            ms = statistics.median(h["ms_per_step"] for h in recs)
            # the host's own pauses: Python's collector stops the thread that launches the kernels
            gc_ms = statistics.median(h["gc_ms_per_step"] for h in recs) if "gc_ms_per_step" in recs[0] else None
            # the CUDA allocator's retries and cudaMallocs after the first logged interval (its warm-up fills the
            # cache): a steady stage has none; every record of an interval carries that interval's count
            later = {h["time"]: h for h in recs if h["time"] != recs[0]["time"]}.values()
            alloc = ({k: sum(h[k] for h in later) for k in ("alloc_retries", "device_mallocs")}
                     if "alloc_retries" in recs[0] else {"alloc_retries": None, "device_mallocs": None})
            steady = recs[0]["time"] if len(later) else start
            spans.append({"run": run.get("name", str(i)), "stage": stage, "start": start, "steady": steady,
                          "end": recs[-1]["time"],
                          "steps": len(recs), "ms_per_step": ms, "gc_ms_per_step": gc_ms} | alloc)
    if not spans:
        raise ValueError(f"{where}: no step records")
    return spans


def summarise(samples: list[dict], span: dict) -> dict:
    """The samples inside `span` after its first interval (steady .. end): medians of clock, power, utilisation;
    the share of samples with each clock event; the hottest temperature."""
    inside = [s for s in samples if span["steady"] <= s["unix_s"] <= span["end"]]
    if not inside:
        return span | {"samples": 0}

    def share(bits: int) -> float:
        return sum(1 for s in inside if s["reasons"] & bits) / len(inside)

    def med(k: str) -> float:
        return statistics.median(s[k] for s in inside)

    return span | {"samples": len(inside), "sm_mhz": med("sm_mhz"), "sm_mhz_min": min(s["sm_mhz"] for s in inside),
                   "power_w": med("power_w"), "util_pct": med("util_pct"),
                   "util_below_90": sum(1 for s in inside if s["util_pct"] < 90) / len(inside),
                   "temp_c_max": max(s["temp_c"] for s in inside), "power_capped": share(POWER_CAP | POWER_BRAKE),
                   "thermal": share(SW_THERMAL | HW_THERMAL | HW_SLOWDOWN)}


def main(argv: list[str] | None = None) -> list[dict]:
    """Write gpu_by_stage.json and .png under --out; print one line a stage; return the stages' summaries."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, required=True, help="sample_gpu.sh's CSV")
    ap.add_argument("--runs", type=Path, required=True, help="the run's results JSON (step history with times)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    samples = read_samples(args.samples)
    spans = stage_spans(json.loads(args.runs.read_text()), str(args.runs))
    stages = [summarise(samples, s) for s in spans]
    for s in stages:
        gc_ = f" (garbage collection {s['gc_ms_per_step']:.1f})" if s["gc_ms_per_step"] is not None else ""
        if s["alloc_retries"] is not None:
            gc_ += (f", after its first interval {s['alloc_retries']} allocator retries and {s['device_mallocs']} "
                    "cudaMalloc calls")
        head = f"{s['run']}, stage {s['stage']}: {s['steps']} steps, {s['ms_per_step']:.0f} ms a step{gc_}"
        if not s["samples"]:
            print(f"{head}; no samples in its span")
            continue
        print(f"{head}; {s['samples']} samples: SM {s['sm_mhz']:.0f} MHz (lowest {s['sm_mhz_min']:.0f}), "
              f"{s['power_w']:.0f} W, utilisation {s['util_pct']:.0f}% ({s['util_below_90']:.0%} of samples under "
              f"90%), power-capped {s['power_capped']:.0%}, thermal {s['thermal']:.0%}, up to {s['temp_c_max']:.0f} C")
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"stamp": [stamp(script="benchmarks/gpu_by_stage.py", reads=[str(args.samples), str(args.runs)])],
           "stages": stages}
    (args.out / "gpu_by_stage.json").write_text(json.dumps(res, indent=1))
    _plot(samples, stages, args.out / "gpu_by_stage.png")
    return stages


def _plot(samples: list[dict], stages: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0]["unix_s"]
    t = [(s["unix_s"] - t0) / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True)
    for ax, key, label in zip(axes, ("sm_mhz", "power_w", "util_pct"), ("SM clock (MHz)", "power (W)",
                                                                        "utilisation (%)")):
        ax.plot(t, [s[key] for s in samples], lw=0.8)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        for s in stages:
            ax.axvspan((s["start"] - t0) / 60, (s["end"] - t0) / 60, color=f"C{s['stage']}", alpha=0.12,
                       label=f"stage {s['stage']} ({s['ms_per_step']:.0f} ms a step)" if ax is axes[0] else None)
    axes[0].legend(fontsize=7, loc="lower left")
    axes[-1].set_xlabel("minutes since the first sample")
    fig.suptitle("the card during the run (sample_gpu.sh), stages shaded", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
