"""Pick a run's speed opt-ins from the step profiles the card job just measured on this very card, and fit the
variants' step counts to the stage seconds they were planned for.

The opt-ins are process-wide switches (env `JET_NEMOTRON_KEEP_STATES`, `JET_NEMOTRON_CONV_FUSED_BWD`; on by default
since their card tests passed and a step was timed with them, so a switch not picked is set to 0) and stage 2's rows a
forward and gradient checkpointing (distill_variants' `--micro-batch2`, `--checkpoint2`). A set of switches is a
candidate when (a) every switch's card test passed in this lease (the card job's `card_tests.log` and part 01's
`tests.log`, pytest -rA) and (b) a stage-1 and a stage-2 profile ran with exactly that set (a profile that ran out of
memory wrote no record). The candidate that buys the most optimizer steps in the plan's seconds wins; its stage-2
shape is its fastest profiled one. No candidate: both switches off, and the variants' own steps. A default-on kernel
whose card test failed in this lease is turned off for the run (`DEFAULT_ON`: the teacher's rotary kernel).

With --no-profiles (a lease whose minutes go to the run, not to profiles) every switch whose card test passed is on,
and the variants keep their own steps, planned for the switched-on step: the run's step log measures it.

A switch whose card test did not run at all is off like a failed one: that is how three runs of 2026-12-07 (p, the
5-minute MFU run and q) lost stage 1's one-kernel conv backward and kept states to a CARD_TESTS list naming other
tests, 579 ms a step against the profile's 541 (the in-run trace of q found it). So `--untested` prints the node ids
of the switches' tests that no log holds, and the session script runs those on the card before it picks (seconds);
the choice line names any switch still untested.

    python benchmarks/pick_optins.py --profiles JOB/out/profile \\
        --card-tests JOB/out/card_tests.log JOB/out/tests.log \\
        --variants benchmarks/variants/acceptance_v3_15min_h100.json --plan-ms 652,1886 --out JOB/out/optins

Writes OUT/optins.env (KEY=VALUE lines for the run's environment), OUT/optins.args (distill_variants flags),
OUT/variants_fitted.json and OUT/optins.json (the profiles read, the candidates, the choice and why), and prints the
choice.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stamp import stamp  # noqa: E402

# the file holding every switch's card test
TESTS = "modeling_tests/test_kernels.py"
# switch: (its env var, the card test each of its runs must pass)
SWITCHES = {
    "keep_states": ("JET_NEMOTRON_KEEP_STATES",
                    "test_kept_states_give_the_same_gradients_without_the_state_pass"),
    "conv_fused_bwd": ("JET_NEMOTRON_CONV_FUSED_BWD",
                       "test_the_one_kernel_conv_backward_gives_the_two_kernels_gradients"),
}
# kernels on by default that the run turns off (env var = "0") where one of their card tests ran and failed
DEFAULT_ON = {
    "teacher_rope": ("JET_NEMOTRON_TEACHER_ROPE", ("test_the_rotary_kernel_is_eager_low_precision_bit_for_bit",
                                                   "test_on_the_kernels_a_teacher_gives_its_own_final_states")),
}
# the steps are planned with this margin under the plan's seconds: a run's step also reads rows and logs, which a
# profile of random rows does not
MARGIN = 0.97


def outcomes(log: str, test: str) -> list[str]:
    """PASSED / FAILED / ERROR of each run of `test` (each parametrisation) in a pytest -rA summary, which lists them
    as `PASSED path::name[params]` or `FAILED path::name[params] - why`."""
    return re.findall(rf"^(PASSED|FAILED|ERROR) \S*::{test}\b", log, flags=re.M)


def passed_switches(log: str) -> set[str]:
    """The switches whose card test ran and passed in every parametrisation."""
    return {sw for sw, (_, test) in SWITCHES.items()
            if outcomes(log, test) and all(r == "PASSED" for r in outcomes(log, test))}


def untested_switches(log: str) -> list[str]:
    """The switches whose card test has no outcome in the log (it did not run)."""
    return sorted(sw for sw, (_, test) in SWITCHES.items() if not outcomes(log, test))


def failed_defaults(log: str) -> set[str]:
    """The default-on kernels whose card tests failed in some parametrisation of this job."""
    return {name for name, (_, tests) in DEFAULT_ON.items()
            if any(r != "PASSED" for t in tests for r in outcomes(log, t))}


def read_profiles(folder: Path) -> list[dict]:
    """[{stage, switches, micro_batch, checkpoint, ms, mfu, file}] of every profile record in folder."""
    out = []
    for f in sorted(folder.glob("profile_distill_*.json")):
        rec = json.loads(f.read_text())
        a = rec["args"]
        out.append({"stage": int(a["stage"]), "file": f.name, "ms": float(rec["ms_per_step"]), "mfu": rec.get("mfu"),
                    "switches": sorted(sw for sw in SWITCHES if a.get(sw) == "True"),
                    "micro_batch": int(a["micro_batch"]), "checkpoint": a.get("gradient_checkpointing") == "True",
                    "local": a.get("local") == "True", "fused_adam": a.get("fused_adam") == "True",
                    "peak_gb": rec.get("peak_gb")})
    return out


def choose(profiles: list[dict], passed: set[str], seconds: tuple[float, float], fused_adam: bool) -> dict | None:
    """The candidate set of switches that buys the most steps in (stage-1, stage-2) seconds, or None. Only the
    profiles of the run's own steps count: stage 1 as attention transfer, AdamW as the variant runs it."""
    profiles = [p for p in profiles if p["fused_adam"] == fused_adam and (p["stage"] != 1 or p["local"])]
    best = None
    for sw in sorted({tuple(p["switches"]) for p in profiles}):
        if not set(sw) <= passed:
            continue
        s1 = [p for p in profiles if p["stage"] == 1 and tuple(p["switches"]) == sw]
        s2 = [p for p in profiles if p["stage"] == 2 and tuple(p["switches"]) == sw]
        if not s1 or not s2:
            continue
        p1, p2 = min(s1, key=lambda p: p["ms"]), min(s2, key=lambda p: p["ms"])
        steps = [math.floor(MARGIN * seconds[0] * 1e3 / p1["ms"]), math.floor(MARGIN * seconds[1] * 1e3 / p2["ms"])]
        cand = {"switches": list(sw), "stage1": p1, "stage2": p2, "steps": steps}
        if best is None or sum(steps) > sum(best["steps"]):
            best = cand
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=Path, help="the card job's profile_distill records")
    ap.add_argument("--card-tests", type=Path, nargs="+", required=True,
                    help="pytest -rA logs of this lease's card tests (a missing one reads as empty)")
    ap.add_argument("--variants", type=Path, help="a variants file whose variants give explicit steps")
    ap.add_argument("--plan-ms", default="",
                    help="stage-1,stage-2 ms a step the variants' steps were planned at (their seconds = steps x ms)")
    ap.add_argument("--no-profiles", action="store_true",
                    help="no profiles ran: every switch whose card test passed, the variants' own steps")
    ap.add_argument("--untested", action="store_true",
                    help="only print the node ids of the switches' card tests that no log holds, one a line")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    log = "".join(f.read_text() for f in args.card_tests if f.exists())
    if args.untested:
        ids = [f"{TESTS}::{SWITCHES[sw][1]}" for sw in untested_switches(log)]
        print("\n".join(ids))
        return {"untested": ids}
    if None in (args.profiles, args.variants, args.out):
        ap.error("--profiles, --variants and --out are required unless --untested")
    plan_ms = [float(x) for x in args.plan_ms.split(",") if x]
    variants = json.loads(args.variants.read_text())
    explicit = all(isinstance(v.get("steps"), list) and v["steps"][2] == 0 for v in variants)
    if (len(plan_ms) != 2 and not args.no_profiles) or not explicit:
        raise SystemExit(f"{args.variants}: every variant needs explicit steps [n1, n2, 0], and --plan-ms two "
                         f"numbers (got {args.plan_ms!r})")
    passed = passed_switches(log)
    untested = untested_switches(log)
    profiles = read_profiles(args.profiles) if args.profiles.is_dir() and not args.no_profiles else []

    def seconds(v: dict) -> tuple[float, float]:
        return v["steps"][0] * plan_ms[0] / 1e3, v["steps"][1] * plan_ms[1] / 1e3

    # one process runs every variant, so one choice holds for all: the first variant's (its AdamW picks the profiles)
    if args.no_profiles:
        c = {"switches": sorted(passed), "stage1": None, "stage2": None, "steps": variants[0]["steps"][:2]}
        fitted = variants
    else:
        c = choose(profiles, passed, seconds(variants[0]), bool(variants[0].get("fused_adam")))
        fitted = [dict(v, steps=[math.floor(MARGIN * t * 1e3 / c[f"stage{i + 1}"]["ms"])
                                 for i, t in enumerate(seconds(v))] + [0]) if c else v for v in variants]
    # the library turns both switches on by default: one not chosen is turned off in the run's environment
    env = {var: "1" if c and sw in c["switches"] else "0" for sw, (var, _) in SWITCHES.items()}
    failed = failed_defaults(log)
    env |= {DEFAULT_ON[name][0]: "0" for name in sorted(failed)}
    flags = []
    if c and c["stage2"]:
        flags = ["--micro-batch2", str(c["stage2"]["micro_batch"])] + (["--checkpoint2"] if c["stage2"]["checkpoint"]
                                                                       else [])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optins.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (args.out / "optins.args").write_text(" ".join(flags) + "\n")
    (args.out / "variants_fitted.json").write_text(json.dumps(fitted, indent=1) + "\n")
    rec = {"stamp": [stamp()], "card_tests_passed": sorted(passed), "untested": untested,
           "defaults_off": sorted(failed), "profiles": profiles, "plan_ms": plan_ms,
           "margin": MARGIN, "no_profiles": args.no_profiles, "chosen": c, "env": env, "flags": flags,
           "steps": [v["steps"] for v in fitted], "planned_steps": [v["steps"] for v in variants]}
    (args.out / "optins.json").write_text(json.dumps(rec, indent=1) + "\n")
    if failed:
        print(f"kernels off for this run, their card test failed: {', '.join(sorted(failed))}")
    if untested:
        print(f"switches off for this run, their card test did not run: {', '.join(untested)}")
    if args.no_profiles:
        print(f"opt-ins by card tests alone: {', '.join(c['switches']) or 'none'}; the planned steps")
    elif c:
        print(f"opt-ins: {', '.join(c['switches']) or 'none'}; stage 2 at {c['stage2']['micro_batch']} rows"
              f"{' with checkpointing' if c['stage2']['checkpoint'] else ''}; stage 1 {c['stage1']['ms']:.0f} ms, "
              f"stage 2 {c['stage2']['ms']:.0f} ms a step; steps {rec['planned_steps'][0][:2]} -> {c['steps']}")
    else:
        print(f"opt-ins: none (no candidate: card tests passed for {sorted(passed)}, {len(profiles)} profiles); "
              f"the planned steps")
    return rec


if __name__ == "__main__":
    main()
