"""benchmarks/real_model_session.sh, the GPU session's driver, with a stand-in python3 that records its command
lines: the detached chains call the right scripts with the flags the session gave, and `poll` packs the job's
small files into one archive (a device call returns at most 8 files). A quoting slip here costs a GPU session."""

import contextlib
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = """#!/bin/bash
if [ "$1" = "-c" ] || [ "$1" = benchmarks/pick_optins.py ]; then exec "{python}" "$@"; fi
echo "PY $*" >> "{log}"
printf '%s\x1f' "$@" >> "{log}.argv"; echo >> "{log}.argv"
echo "$1 keep=${{JET_NEMOTRON_KEEP_STATES:-}} conv=${{JET_NEMOTRON_CONV_FUSED_BWD:-}} cwd=$PWD" >> "{log}.env"
sleep "${{FAKE_SECONDS:-0}}"
"""


def _run(tmp_path, args, smi="fake-gpu", **env):
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    import sys

    (bin_ / "python3").write_text(FAKE.format(python=sys.executable, log=tmp_path / "calls.log"))
    (bin_ / "nvidia-smi").write_text(f"#!/bin/bash\necho {smi}\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    full = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "JOB": str(tmp_path / "job"), **env}
    return subprocess.run(["bash", "benchmarks/real_model_session.sh", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def _a_part01():
    """A placeholder .blob/part01 for a `part 01` call (the script reads the part from the checkout), removed after
    unless the checkout had one (a developer's real part stays)."""
    blob = ROOT / ".blob"
    made = not blob.exists()
    blob.mkdir(exist_ok=True)
    part = blob / "part01"
    had = part.exists()
    if not had:
        part.write_bytes(b"x")
    try:
        yield
    finally:
        if not had:
            part.unlink()
        if made:
            blob.rmdir()


def _calls(tmp_path, n, timeout=20.0, tokenise=False):
    """The first n python3 calls; the corpus tokenising that runs beside save_teacher (in either order) left out
    unless `tokenise`."""
    log = tmp_path / "calls.log"
    t = time.time()
    while time.time() - t < timeout:
        lines = log.read_text().splitlines() if log.exists() else []
        lines = [x for x in lines if tokenise or "--tokenise-only" not in x]
        if len(lines) >= n:
            return lines
        time.sleep(0.2)
    raise AssertionError(f"expected {n} python3 calls, got {lines}")


def test_pipeline_runs_distill_then_eval_with_the_sessions_flags(tmp_path):
    r = _run(tmp_path, ["pipeline"], RATE="19116", DISTILL_MIN="9", EXTRA="--batch-size 16 --local1")
    assert r.returncode == 0, r.stderr
    calls = _calls(tmp_path, 3)
    distill, evaluate, tests = calls[:3]
    assert distill.startswith("PY benchmarks/distill_real.py") and "--stages 0,1,2,3 --save-teacher" in distill
    for flag in ("--time-budget-min 9", "--rate 19116", "--batch-size 16 --local1", "--wait-for"):
        assert flag in distill, flag
    assert evaluate.startswith("PY benchmarks/eval_real.py --model /tmp/distill_real/distilled")
    assert "--baseline /tmp/distill_real/teacher_fp32" in evaluate and "--lengths 2048,8192,16384,32000" in evaluate
    assert "modeling_tests/test_gpu_model.py" in tests


def test_variants_pipeline_searches_first_for_placement(tmp_path):
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="placement", SEARCH_ARGS="--steps 100 --beam 1",
             VARIANT_MIN="2", HUMANEVAL="40")
    assert r.returncode == 0, r.stderr
    save, search, variants = _calls(tmp_path, 3)[:3]
    assert save.startswith("PY benchmarks/save_teacher.py")
    assert search.startswith("PY benchmarks/search_real.py --part placement") and search.endswith("--steps 100 --beam 1")
    assert "--variants placement" in variants and "--minutes 2" in variants and "--humaneval 40" in variants
    assert "--searched " in variants and variants.split("--searched ")[1].endswith("placement/layer_map.json")


def test_variants_pipeline_searches_only_for_placement_presets(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    r = _run(tmp_path / "a", ["pipeline-variants"], VARIANTS="placement", LENGTHS="2048,8192", TRIALS="3",
             MAX_TOKENS="20000000", DEPTHS="0,0.25,0.5,0.75,1")
    assert r.returncode == 0, r.stderr
    search, variants = _calls(tmp_path / "a", 3)[1:3]
    assert search.startswith("PY benchmarks/search_real.py --part placement")
    assert "--variants placement" in variants and "--lengths 2048,8192 --trials 3" in variants
    assert "--max-tokens 20000000" in variants and "--depths 0,0.25,0.5,0.75,1" in variants
    r = _run(tmp_path / "b", ["pipeline-variants"], VARIANTS="recipe")
    assert r.returncode == 0, r.stderr
    save, variants = _calls(tmp_path / "b", 2)
    assert "--variants recipe" in variants and "--searched" not in variants and "--depths" not in variants


def test_variants_pipeline_uses_a_given_searched_map_without_searching(tmp_path):
    searched = "benchmarks/results/real_model/placement_search/layer_map.json"
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="placement", SEARCHED=searched)
    assert r.returncode == 0, r.stderr
    save, variants = _calls(tmp_path, 2)
    assert variants.startswith("PY benchmarks/distill_variants.py --variants placement")
    assert variants.endswith(f"--searched {ROOT / searched}")
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="placement", SEARCHED="no/such/map.json")
    assert r.returncode == 2 and "no such layer map" in r.stderr


def test_poll_packs_small_files_and_logs_into_one_archive(tmp_path):
    job = tmp_path / "job"
    (job / "out" / "eval").mkdir(parents=True)
    (job / "out" / "eval" / "eval.json").write_text("{}")
    (job / "out" / "placement.ckpt").mkdir()
    (job / "out" / "placement.ckpt" / "weights.bin").write_bytes(b"\0" * (21 << 20))  # over the 20 MB cut
    (job / "distill.log").write_text("step 10/100\n")
    (job / "done").touch()
    out = tmp_path / "OUT"
    r = _run(tmp_path, ["poll", "5"], OUT=str(out))
    assert r.returncode == 0 and "pipeline done" in r.stdout, r.stderr
    assert [p.name for p in out.iterdir()] == ["results.tgz"]
    with tarfile.open(out / "results.tgz") as t:
        assert sorted(t.getnames()) == ["distill.log", "out/eval/eval.json"]


def test_variants_pipeline_evaluates_the_saved_students_only_when_asked(tmp_path):
    """EVAL=1: distill_variants saves each student and every saved one then goes through jet-nemotron eval
    (eval_real.py) beside the saved teacher; without EVAL nothing is saved or evaluated."""
    for case, env in (("on", {"EVAL": "1", "EVAL_LENGTHS": "2048,8192"}), ("off", {})):
        d = tmp_path / case
        work = d / "work"
        (work / "students" / "attention-transfer-12-min").mkdir(parents=True)
        (work / "teacher_fp32").mkdir()
        (work / "teacher_fp32" / "config.json").write_text("{}")  # no save_teacher call
        r = _run(d, ["pipeline-variants"], VARIANTS="benchmarks/variants/attention_transfer_12min.json",
                 WORK=str(work), **env)
        assert r.returncode == 0, r.stderr
        t = time.time()
        while not (d / "job" / "done").exists() and time.time() - t < 20:
            time.sleep(0.2)
        calls = (d / "calls.log").read_text().splitlines()
        variants = [c for c in calls if "distill_variants.py" in c]
        evals = [c for c in calls if "eval_real.py" in c]
        assert len(variants) == 1 and "--variants benchmarks/variants/attention_transfer_12min.json" in variants[0]
        if case == "on":
            assert f"--save-students {work}/students" in variants[0]
            assert len(evals) == 1, calls
            assert f"--model {work}/students/attention-transfer-12-min/" in evals[0]
            assert f"--baseline {work}/teacher_fp32" in evals[0] and "--lengths 2048,8192 --trials 3" in evals[0]
            assert "eval_attention-transfer-12-min" in evals[0]
        else:
            assert "--save-students" not in variants[0] and not evals


def test_poll_stops_when_a_card_job_alone_is_done(tmp_path):
    """A speed-only session (SPEED=all on part 01, no pipeline) must not hold the card for poll's whole wait once
    its job has finished; with a pipeline started, the pipeline's end decides."""
    job = tmp_path / "job"
    (job / "out" / "gen_all").mkdir(parents=True)
    (job / "out" / "gen_all" / "generation.json").write_text("{}")
    (job / "speed.log").write_text("row\n")
    (job / "speed.done").touch()
    t = time.time()
    r = _run(tmp_path, ["poll", "40"], OUT=str(tmp_path / "OUT"))
    assert r.returncode == 0 and "card job done" in r.stdout and time.time() - t < 30, r.stdout + r.stderr
    with tarfile.open(tmp_path / "OUT" / "results.tgz") as tar:
        assert "out/gen_all/generation.json" in tar.getnames()
    (job / "pipeline.log").write_text("")  # a pipeline is running: the card job's end is not the session's
    r = _run(tmp_path, ["poll", "3"], OUT=str(tmp_path / "OUT"))
    assert "pipeline running" in r.stdout, r.stdout


def test_profile_runs_take_one_run_a_word_with_commas_joining_its_flags(tmp_path):
    """PROFILE_RUNS on part 01: each word is one profile_distill.py process, commas join that run's flags."""
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], PROFILE="1", PROFILE_RUNS="--stage=2 --stage=2,--compile",
                 KERNEL_PARTS="swiglu norm", SPEED_TIMEOUT="30", M=str(tmp_path / "m"))
        assert r.returncode == 0, r.stderr
        extra = 1 if list((ROOT / ".whl").glob("*.whl")) else 0  # a checkout with wheels installs them first
        every = _calls(tmp_path, 3 + extra)
        calls = [c for c in every if "profile_distill.py" in c]
    assert calls[0].startswith("PY benchmarks/profile_distill.py --stage=2 --out ")
    assert calls[1].startswith("PY benchmarks/profile_distill.py --stage=2 --compile --out ")
    kernels = [c for c in every if "kernel_speed.py" in c]
    assert kernels == [kernels[0]] and kernels[0].startswith("PY benchmarks/kernel_speed.py --only swiglu norm --out ")
    assert every.index(kernels[0]) < every.index(calls[0])  # first: it is short


def test_variants_pipeline_asks_the_teacher_for_answers_first_when_asked(tmp_path):
    """ANSWERS=N: teacher_answers.py runs after the teacher is saved and before the variants, which get its file."""
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/teacher_answers_4p5min.json",
             ANSWERS="4096", ANSWERS_BUDGET="150")
    assert r.returncode == 0, r.stderr
    save, answers, variants = _calls(tmp_path, 3)[:3]
    assert save.startswith("PY benchmarks/save_teacher.py")
    assert answers.startswith("PY benchmarks/teacher_answers.py --teacher /tmp/distill_real/teacher_fp32")
    assert "--n 4096 --time-budget-s 150" in answers
    path = answers.split("--out ")[1]
    assert path.endswith("out/answers/teacher_answers.jsonl.gz") and f"--answers {path}" in variants
    assert "--stdlib-ppl" in variants
    (tmp_path / "none").mkdir()
    r = _run(tmp_path / "none", ["pipeline-variants"], VARIANTS="recipe")
    assert "teacher_answers.py" not in "\n".join(_calls(tmp_path / "none", 2))


def test_poll_on_a_fresh_machine_says_so_at_once(tmp_path):
    """A poll that finds no job folder runs on a machine started for it (the job's was taken back): it stops at
    once with its own exit code instead of holding a bare card for the poll's whole wait."""
    t = time.time()
    r = _run(tmp_path, ["poll", "30"], OUT=str(tmp_path / "out"))
    assert r.returncode == 3 and "a fresh machine" in r.stdout and time.time() - t < 10
    assert not (tmp_path / "out" / "results.tgz").exists()


def test_variants_pipeline_tokenises_beside_the_teacher_save_with_the_variants_own_flags(tmp_path):
    """The corpus is tokenised while save_teacher runs, with the GGUF's tokenizer and every flag of the variants
    run (the cache is keyed by the settings: another --max-tokens would only be a miss); not again once the teacher
    is saved."""
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/knobs_v3_3min.json",
             MAX_TOKENS="40000000", SEARCHED="benchmarks/results/real_model/placement_search/layer_map.json")
    assert r.returncode == 0, r.stderr
    calls = _calls(tmp_path, 3, tokenise=True)
    tokenise = next(c for c in calls if "--tokenise-only" in c)
    save = next(c for c in calls if "save_teacher.py" in c)
    variants = next(c for c in calls if "distill_variants.py" in c and "--tokenise-only" not in c)
    gguf = save.split()[2]
    assert gguf.endswith(".gguf") and tokenise.endswith(f"--teacher {gguf} --tokenise-only")
    assert tokenise.startswith(variants + " --teacher")  # the variants run's own flags, then the GGUF
    (tmp_path / "again").mkdir()
    teacher = tmp_path / "again" / "work" / "teacher_fp32"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    r = _run(tmp_path / "again", ["pipeline-variants"], WORK=str(tmp_path / "again" / "work"))
    assert r.returncode == 0, r.stderr
    assert not any("--tokenise-only" in c for c in _calls(tmp_path / "again", 1, tokenise=True))


def test_profiles_then_card_tests_then_the_sweep_in_the_card_job(tmp_path):
    """KERNEL_PARTS, PROFILE, CARD_TESTS and SWEEP on part 01: the short kernel timings, the step profiles, then the
    tests, then the chunk-backward sweep, all in the detached card job (the part call itself returns at once)."""
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], CARD_TESTS="modeling_tests/a.py::test_b modeling_tests/c.py", SWEEP="1",
                 SWEEP_ARGS="--stages 2", PROFILE="1", PROFILE_RUNS="--stage=1,--local", KERNEL_PARTS="swiglu",
                 SPEED_TIMEOUT="30", M=str(tmp_path / "m"))
        assert r.returncode == 0, r.stderr
        extra = 1 if list((ROOT / ".whl").glob("*.whl")) else 0
        every = [c for c in _calls(tmp_path, 4 + extra) if "pip install" not in c]
    assert every[0].startswith("PY benchmarks/kernel_speed.py --only swiglu --out ")
    assert every[1].startswith("PY benchmarks/profile_distill.py --stage=1 --local --out ")
    assert every[2] == "PY -m pytest -q -rA modeling_tests/a.py::test_b modeling_tests/c.py"  # -rA: each pass named
    assert every[3].startswith("PY benchmarks/chunk_bwd_sweep.py --out ") and every[3].endswith("/out/sweep --stages 2")
    assert (tmp_path / "job" / "out" / "card_tests.log").exists()


def test_variants_pipeline_passes_each_stages_micro_batch(tmp_path):
    """MICRO_BATCH / MICRO_BATCH2 reach distill_variants (an 80 GB H100 takes stage 2 at 2 rows a forward)."""
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/knobs_v4_3min.json", MICRO_BATCH="8",
             MICRO_BATCH2="2", CHECKPOINT2="1")
    assert r.returncode == 0, r.stderr
    variants = next(c for c in _calls(tmp_path, 2) if "distill_variants.py" in c)
    assert "--micro-batch 8 --micro-batch2 2 --checkpoint2" in variants
    assert "--trace-steps" not in variants


def test_variants_pipeline_traces_steps_when_asked(tmp_path):
    """TRACE_STEPS (and TRACE_AFTER) reach distill_variants: a run's own steps traced beside the card job's
    profiles."""
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/knobs_v4_3min.json", TRACE_STEPS="2",
             TRACE_AFTER="30")
    assert r.returncode == 0, r.stderr
    variants = next(c for c in _calls(tmp_path, 2) if "distill_variants.py" in c)
    assert "--trace-steps 2 --trace-after 30" in variants


def test_variants_pipeline_runs_with_the_switches_the_card_job_picked(tmp_path):
    """OPTINS=1: after the card job, pick_optins.py (run for real) reads its profiles and card tests; the variants
    run with the picked switches in their environment, stage 2's picked shape and the refitted steps."""
    import json

    prof = tmp_path / "job" / "out" / "profile"
    prof.mkdir(parents=True)
    for i, (stage, ms, on, mb, ckpt) in enumerate([(1, 650, False, 8, False), (2, 1900, False, 2, False),
                                                   (1, 580, True, 8, False), (2, 1700, True, 8, True)]):
        args = {"stage": str(stage), "local": str(stage == 1), "fused_adam": "True", "keep_states": str(on),
                "conv_fused_bwd": str(on), "micro_batch": str(mb), "gradient_checkpointing": str(ckpt)}
        (prof / f"profile_distill_{i}.json").write_text(json.dumps({"args": args, "ms_per_step": ms}))
    (tmp_path / "job" / "out" / "card_tests.log").write_text(
        "PASSED modeling_tests/test_kernels.py::test_kept_states_give_the_same_gradients_without_the_state_pass[None]\n"
        "PASSED modeling_tests/test_kernels.py::test_the_one_kernel_conv_backward_gives_the_two_kernels_gradients[x]\n")
    (tmp_path / "job" / "speed.done").touch()
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/acceptance_v3_15min_h100.json",
             MICRO_BATCH2="2", OPTINS="1", PLAN_MS="652,1886")
    assert r.returncode == 0, r.stderr
    variants = next(c for c in _calls(tmp_path, 2) if "distill_variants.py" in c)
    fitted = tmp_path / "job" / "out" / "optins" / "variants_fitted.json"
    assert variants.endswith(f"--micro-batch2 2 --micro-batch2 8 --checkpoint2 --variants {fitted}")
    assert json.loads(fitted.read_text())[0]["steps"] == [int(0.97 * 670 * 652 / 580), int(0.97 * 230 * 1886 / 1700), 0]
    env = (tmp_path / "calls.log.env").read_text().splitlines()
    assert f"benchmarks/distill_variants.py keep=1 conv=1 cwd={tmp_path / 'job' / 'tree'}" in env
    # a placement comparison on a searched map takes the same picks
    searched = "benchmarks/results/real_model/placement_search/layer_map.json"
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/acceptance_v3_15min_h100.json",
             SEARCHED=searched, OPTINS="1", PLAN_MS="652,1886")
    assert r.returncode == 0, r.stderr
    variants = [c for c in _calls(tmp_path, 4) if "distill_variants.py" in c and "--tokenise-only" not in c][-1]
    assert "--searched" in variants and variants.endswith(f"--micro-batch2 8 --checkpoint2 --variants {fitted}")


def test_detached_jobs_run_from_their_own_copy_of_the_checkout(tmp_path):
    """The card job and the pipeline import from a snapshot under JOB, not from the checkout that every later
    device call copies anew (a module went missing mid-import that way)."""
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], PROFILE="1", PROFILE_RUNS="--stage=1", SPEED_TIMEOUT="20")
    assert r.returncode == 0, r.stderr
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="recipe")
    assert r.returncode == 0, r.stderr
    _calls(tmp_path, 3)
    cwd = {line.split()[0]: line.split("cwd=")[1] for line in (tmp_path / "calls.log.env").read_text().splitlines()}
    assert cwd["benchmarks/profile_distill.py"] == str(tmp_path / "job" / "tree.card")
    assert cwd["benchmarks/distill_variants.py"] == str(tmp_path / "job" / "tree")
    assert (tmp_path / "job" / "tree" / "jet_nemotron" / "modeling_jet_nemotron.py").exists()
    assert not (tmp_path / "job" / "tree" / ".git").exists()


@pytest.mark.parametrize("mem, card", [("81559", "H100"), ("143771", "H200"), ("fake-gpu", None)])
def test_settings_of_the_card_that_came(tmp_path, mem, card):
    """X_H100 / X_H200 set X on that card (by its memory), so a whole lease goes as one batch of calls; without a
    card's number the plain settings hold."""
    r = _run(tmp_path, ["pipeline-variants"], smi=mem, VARIANTS="recipe", VARIANTS_H100="benchmarks/variants/a.json",
             VARIANTS_H200="benchmarks/variants/b.json", MICRO_BATCH2_H100="2", HUMANEVAL="7", HUMANEVAL_H200="164",
             LENGTHS_H100="2048", TRIALS_H200="10")
    assert r.returncode == 0, r.stderr
    variants = next(c for c in _calls(tmp_path, 2) if "distill_variants.py" in c)
    want = {"H100": "a.json", "H200": "b.json", None: "recipe"}[card]
    assert f"--variants {'benchmarks/variants/' if card else ''}{want}" in variants
    assert ("--micro-batch2 2" in variants) == (card == "H100")
    # a lease can run another experiment on each card: the evaluation's settings follow the card too
    assert f"--humaneval {164 if card == 'H200' else 7}" in variants
    assert ("--lengths 2048" in variants) == (card == "H100")
    assert ("--trials 10" in variants) == (card == "H200")


def test_a_card_test_list_over_several_lines_runs_as_one_logged_pytest(tmp_path):
    """CARD_TESTS as written over lines in a README (a newline inside): one pytest of both tests, into
    card_tests.log; a newline left in the job's one-line command list once ran the first test alone, unlogged."""
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], CARD_TESTS="mod.py::test_a\n              mod.py::test_b",
                 KERNEL_PARTS="conv\n rope", SPEED_TIMEOUT="20", M=str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    for _ in range(100):  # the card job runs detached: until it is done
        if (tmp_path / "job" / "speed.done").exists():
            break
        time.sleep(0.1)
    # a checkout with carried wheels (.whl) installs them first
    calls = [c for c in (tmp_path / "calls.log").read_text().splitlines() if not c.startswith("PY -m pip")]
    assert calls[0] == f"PY benchmarks/kernel_speed.py --only conv rope --out {tmp_path / 'job' / 'out' / 'kernels'}"
    assert calls[1:] == ["PY -m pytest -q -rA mod.py::test_a mod.py::test_b"]
    assert (tmp_path / "job" / "out" / "card_tests.log").exists()


def test_part_tests_all_run_into_a_log_the_picker_reads(tmp_path):
    """TESTS on a part: every test runs (no stop at the first failure: each kernel is gated on its own tests) and
    the results land in JOB/out/tests.log, which pick_optins.py reads."""
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], TESTS="m.py::test_a m.py::test_b\n     m.py::test_c", M=str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    calls = [c for c in (tmp_path / "calls.log").read_text().splitlines() if not c.startswith("PY -m pip")]
    assert calls == ["PY -m pytest -q -rA m.py::test_a m.py::test_b m.py::test_c"]
    assert (tmp_path / "job" / "out" / "tests.log").exists()


def test_the_last_part_joins_all_parts_in_order(tmp_path):
    """NPARTS parts (36 MiB each: a call carries the tracked tree beside one within 64 MiB): the call that brings the
    last one joins them in order into the GGUF, checks its md5 and frees the parts."""
    m, work = tmp_path / "m", tmp_path / "work"
    m.mkdir()
    (m / "part02").write_bytes(b"second")
    (m / "part03").write_bytes(b"third")
    with _a_part01():
        first = (ROOT / ".blob" / "part01").read_bytes()
        r = _run(tmp_path, ["part", "01"], M=str(m), WORK=str(work), NPARTS="3")
    assert r.returncode == 0, r.stderr
    assert (work / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf").read_bytes() == first + b"secondthird"
    assert "GGUF md5 MISMATCH" in r.stdout and not m.exists()
    # fewer parts than NPARTS: nothing joined yet
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], M=str(tmp_path / "m2"), WORK=str(tmp_path / "w2"), NPARTS="3")
    assert "1 parts" in r.stdout and not (tmp_path / "w2").exists()


def test_variants_pipeline_with_switches_by_card_test_alone(tmp_path):
    """OPTINS=tests: no profiles; the switches whose card tests passed, the variants' own steps."""
    import json

    (tmp_path / "job" / "out").mkdir(parents=True)
    (tmp_path / "job" / "out" / "card_tests.log").write_text(
        "PASSED modeling_tests/test_kernels.py::test_kept_states_give_the_same_gradients_without_the_state_pass\n"
        "PASSED modeling_tests/test_kernels.py::test_the_one_kernel_conv_backward_gives_the_two_kernels_gradients\n")
    (tmp_path / "job" / "speed.done").touch()
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/acceptance_v4_15min_h100.json",
             MICRO_BATCH2="2", OPTINS="tests")
    assert r.returncode == 0, r.stderr
    variants = next(c for c in _calls(tmp_path, 2) if "distill_variants.py" in c)
    fitted = tmp_path / "job" / "out" / "optins" / "variants_fitted.json"
    assert variants.endswith(f"--micro-batch2 2 --variants {fitted}")
    assert json.loads(fitted.read_text())[0]["steps"] == [700, 250, 0]
    env = (tmp_path / "calls.log.env").read_text().splitlines()
    assert f"benchmarks/distill_variants.py keep=1 conv=1 cwd={tmp_path / 'job' / 'tree'}" in env
    assert not any(c.startswith("PY -m pytest") for c in _calls(tmp_path, 2))


def test_switch_tests_that_ran_nowhere_in_the_lease_run_before_the_pick(tmp_path):
    """OPTINS with card tests that named other tests (run q's CARD_TESTS): the switches' own tests run on the card
    first, into out/switch_tests.log, which the picker then reads; without it they were silently off."""
    (tmp_path / "job" / "out").mkdir(parents=True)
    (tmp_path / "job" / "out" / "card_tests.log").write_text(
        "PASSED modeling_tests/test_kernels.py::test_gated_rmsnorm_matches_reference[300-256-dtype0]\n"
        "PASSED modeling_tests/test_kernels.py::test_the_one_kernel_conv_backward_gives_the_two_kernels_gradients\n")
    (tmp_path / "job" / "speed.done").touch()
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/acceptance_v4_15min_h100.json",
             OPTINS="tests")
    assert r.returncode == 0, r.stderr
    calls = _calls(tmp_path, 3)
    assert calls[-2] == ("PY -m pytest -q -rA modeling_tests/test_kernels.py::"
                          "test_kept_states_give_the_same_gradients_without_the_state_pass")
    assert "distill_variants.py" in calls[-1]
    picked = (tmp_path / "job" / "optins.log").read_text()
    assert "did not run: keep_states" in picked  # the stand-in pytest wrote no log


def test_a_variant_name_with_spaces_and_commas_reaches_only_as_one_argument(tmp_path):
    """The detached chain splits its command string again: ONLY's names ("stage 1 only, batch 8, lr 1e-3") once
    reached distill_variants.py as a dozen words."""
    names = "stage 1 only, batch 8, lr 1e-3,stage 1 only, batch 8, lr 2e-3"
    r = _run(tmp_path, ["pipeline-variants"], VARIANTS="benchmarks/variants/knobs_v8_stage1.json", ONLY=names)
    assert r.returncode == 0, r.stderr
    _calls(tmp_path, 2)
    argv = next(line.split("\x1f")[:-1] for line in (tmp_path / "calls.log.argv").read_text().splitlines()
                if "distill_variants.py" in line and "--tokenise-only" not in line)
    assert argv[argv.index("--only") + 1] == names
    assert argv[argv.index("--variants") + 1] == "benchmarks/variants/knobs_v8_stage1.json"


def _samples_of_a_stopped_sampler(csv_: Path) -> list[dict]:
    """sample_gpu.sh's rows in `csv_` (at least one), once the job that ran it has ended; fails if the sampler
    still writes (it takes a sample a second while it runs)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_by_stage import read_samples

    time.sleep(0.5)  # a sample being taken when the job ended lands within this
    rows = read_samples(csv_)
    size = csv_.stat().st_size
    time.sleep(2.5)
    assert rows and csv_.stat().st_size == size
    return rows


def test_variants_pipeline_samples_the_card_until_it_is_done(tmp_path):
    """sample_gpu.sh runs beside the whole detached job into out/gpu_samples.csv (which `poll` packs), in the
    columns gpu_by_stage.py reads, and stops when the job does."""
    # each stand-in script call takes 1.5 s, as a real job's take minutes: the sampler's first sample is taken
    r = _run(tmp_path, ["pipeline-variants"], smi="1980, 2619, 650.52, 61, 97, 0x0000000000000004",
             FAKE_SECONDS="1.5")
    assert r.returncode == 0, r.stderr
    job, t = tmp_path / "job", time.time()
    while not (job / "done").exists() and time.time() - t < 20:
        time.sleep(0.2)
    assert (job / "done").exists()
    rows = _samples_of_a_stopped_sampler(job / "out" / "gpu_samples.csv")
    assert rows[0] == {"unix_s": pytest.approx(rows[0]["unix_s"]), "sm_mhz": 1980.0, "mem_mhz": 2619.0,
                       "power_w": 650.52, "temp_c": 61.0, "util_pct": 97.0, "reasons": 4}
    assert abs(rows[0]["unix_s"] - time.time()) < 60


def test_the_card_job_samples_the_card_beside_its_profiles_until_it_is_done(tmp_path):
    """PROFILE on part 01: sample_gpu.sh runs beside the card job into out/gpu_samples_card.csv (which `poll`
    packs), so a profile's clocks and power can be set beside a run's, and stops with the job."""
    with _a_part01():
        r = _run(tmp_path, ["part", "01"], smi="1980, 2619, 650.52, 61, 97, 0x0000000000000004", PROFILE="1",
                 PROFILE_RUNS="--stage=1,--local", SPEED_TIMEOUT="30", FAKE_SECONDS="1.5", M=str(tmp_path / "m"))
        assert r.returncode == 0, r.stderr
        job, t = tmp_path / "job", time.time()
        while not (job / "speed.done").exists() and time.time() - t < 20:
            time.sleep(0.2)
    assert (job / "speed.done").exists()
    rows = _samples_of_a_stopped_sampler(job / "out" / "gpu_samples_card.csv")
    assert (rows[0]["sm_mhz"], rows[0]["power_w"], rows[0]["reasons"]) == (1980.0, 650.52, 4)


def test_variants_pipeline_runs_the_after_tests_last_within_their_time(tmp_path):
    """AFTER_TESTS (over lines, as a README writes them): one logged pytest of all of them after the variants, before
    the job is done, under `timeout AFTER_TIMEOUT`; without AFTER_TESTS no pytest runs."""
    for case, env in (("on", {"AFTER_TESTS": "mod.py::test_a\n    mod.py::test_b", "AFTER_TIMEOUT": "2",
                              "FAKE_SECONDS": "0.2"}), ("off", {})):
        d = tmp_path / case
        d.mkdir()
        r = _run(d, ["pipeline-variants"], **env)
        assert r.returncode == 0, r.stderr
        job, t = d / "job", time.time()
        while not (job / "done").exists() and time.time() - t < 20:
            time.sleep(0.2)
        assert (job / "done").exists()
        calls = [c for c in (d / "calls.log").read_text().splitlines() if "--tokenise-only" not in c]
        tests = [i for i, c in enumerate(calls) if "-m pytest" in c]
        if case == "off":
            assert not tests
            continue
        assert len(tests) == 1 and calls[tests[0]] == "PY -m pytest -q -rA mod.py::test_a mod.py::test_b", calls
        assert tests[0] > max(i for i, c in enumerate(calls) if "distill_variants.py" in c)
        assert (job / "out" / "card_tests_after.log").exists()
    # the pytest is cut at AFTER_TIMEOUT: every stand-in call takes 4 s, the pytest ends after 1
    d = tmp_path / "cut"
    d.mkdir()
    r = _run(d, ["pipeline-variants"], AFTER_TESTS="mod.py::test_a", AFTER_TIMEOUT="1", FAKE_SECONDS="4")
    assert r.returncode == 0, r.stderr
    log, job, t = d / "calls.log", d / "job", time.time()
    while not (log.exists() and "-m pytest" in log.read_text()) and time.time() - t < 30:
        time.sleep(0.05)
    started = time.time()
    while not (job / "done").exists() and time.time() - started < 10:
        time.sleep(0.05)
    assert (job / "done").exists() and time.time() - started < 2.5


def test_fits_says_whether_a_part_and_the_tree_stay_within_what_a_call_carries(tmp_path):
    """`fits` (run before a lease) adds the tracked and untracked-not-ignored files, the largest part and the wheels,
    and exits 1 past 64 MiB, so a tree grown by run records is caught here, not by a lease's refused first call."""
    repo, mib = tmp_path / "repo", 1024 * 1024
    (repo / "benchmarks").mkdir(parents=True)
    script = "benchmarks/real_model_session.sh"
    (repo / script).write_text((ROOT / script).read_text())
    (repo / ".gitignore").write_text("/.blob/\n/.whl/\n")
    (repo / "tracked.bin").write_bytes(b"t" * 4096)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "t"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    (repo / ".blob").mkdir()
    (repo / ".whl").mkdir()
    (repo / ".whl" / "a-1-py3-none-any.whl").write_bytes(b"w" * 1000)

    def sized(path, n: int) -> None:
        with open(path, "wb") as f:
            f.truncate(n)  # sparse: the size counts, not the disk

    def fits() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script, "fits"], cwd=repo, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    missing = fits()
    assert missing.returncode == 2 and "no .blob/part*" in missing.stdout, missing.stdout + missing.stderr
    sized(repo / ".blob" / "part01", 1000)
    sized(repo / ".blob" / "part02", 36 * mib)  # the largest part is the one that counts
    ok = fits()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    tree = sum((repo / f).stat().st_size for f in (".gitignore", "tracked.bin", script))
    assert f"tree {tree} + .blob/part02 {36 * mib} + wheels 1000 = {tree + 36 * mib + 1000} bytes" in ok.stdout
    sized(repo / ".blob" / "part02", 64 * mib - 4096)  # the tracked file and the wheel push it over
    over = fits()
    assert over.returncode == 1 and "over 64 MiB" in over.stdout, over.stdout + over.stderr
    sized(repo / ".blob" / "part02", 36 * mib)
    sized(repo / "untracked.bin", 30 * mib)  # an untracked file that git does not ignore travels too
    assert fits().returncode == 1
