"""benchmarks/pick_optins.py: a run's speed switches come from profiles and card tests of the same card job, a switch
whose card test failed or did not run is never picked, and the steps are fitted to the planned seconds."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pick_optins as po  # noqa: E402

# the environment of a run with neither switch: both set off, as the library turns them on by default
OFF = "JET_NEMOTRON_KEEP_STATES=0\nJET_NEMOTRON_CONV_FUSED_BWD=0\n"
KEEP = "modeling_tests/test_kernels.py::test_kept_states_give_the_same_gradients_without_the_state_pass"
CONV = "modeling_tests/test_kernels.py::test_the_one_kernel_conv_backward_gives_the_two_kernels_gradients"


def _profile(folder: Path, stage: int, ms: float, keep=False, conv=False, mb=8, ckpt=False, fused_adam=True,
             local=True) -> None:
    """A record as profile_distill.py writes it (its args as strings)."""
    args = {"stage": str(stage), "local": str(local and stage == 1), "fused_adam": str(fused_adam),
            "keep_states": str(keep), "conv_fused_bwd": str(conv), "micro_batch": str(mb),
            "gradient_checkpointing": str(ckpt)}
    name = f"profile_distill_s{stage}_{ms}_{keep}_{conv}_{mb}_{ckpt}_{fused_adam}_{local}.json"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"args": args, "ms_per_step": ms, "mfu": 0.3, "peak_gb": 50.0}))


def _files(tmp_path, log: str, steps=(670, 230, 0), fused_adam=True):
    (tmp_path / "card_tests.log").write_text(log)
    v = tmp_path / "v.json"
    v.write_text(json.dumps([{"name": "acceptance", "split": [0.5, 0.5, 0.0], "steps": list(steps),
                              "fused_adam": fused_adam}]))
    return ["--profiles", str(tmp_path / "p"), "--card-tests", str(tmp_path / "card_tests.log"),
            str(tmp_path / "no_tests.log"), "--variants", str(v), "--plan-ms", "652,1886", "--out", str(tmp_path / "o")]


def _out(tmp_path):
    o = tmp_path / "o"
    return ((o / "optins.env").read_text(), (o / "optins.args").read_text().split(),
            json.loads((o / "variants_fitted.json").read_text()))


def test_the_faster_tested_switches_win_and_the_steps_fill_the_planned_seconds(tmp_path):
    p = tmp_path / "p"
    _profile(p, 1, 650.0), _profile(p, 2, 1900.0, mb=2)
    _profile(p, 1, 610.0, keep=True)  # no stage-2 profile with keep alone: not a candidate
    _profile(p, 1, 580.0, keep=True, conv=True)
    _profile(p, 2, 1850.0, keep=True, conv=True, mb=2)
    _profile(p, 2, 1700.0, keep=True, conv=True, mb=8, ckpt=True)
    _profile(p, 1, 300.0, fused_adam=False)  # not the variant's optimizer: ignored
    _profile(p, 1, 300.0, local=False)  # an end-to-end stage 1, not the run's: ignored
    log = f"PASSED {KEEP}[None]\nPASSED {KEEP}[lens1]\nPASSED {CONV}[float32-2-70-0-None]\n"
    rec = po.main(_files(tmp_path, log))
    env, flags, fitted = _out(tmp_path)
    assert sorted(env.splitlines()) == ["JET_NEMOTRON_CONV_FUSED_BWD=1", "JET_NEMOTRON_KEEP_STATES=1"]
    assert flags == ["--micro-batch2", "8", "--checkpoint2"]
    want = [math.floor(0.97 * 670 * 652 / 580), math.floor(0.97 * 230 * 1886 / 1700), 0]
    assert fitted[0]["steps"] == want and want[0] > 670 and want[1] > 230
    assert rec["planned_steps"] == [[670, 230, 0]] and rec["chosen"]["switches"] == ["conv_fused_bwd", "keep_states"]


def test_a_switch_whose_card_test_failed_or_never_ran_is_not_picked(tmp_path):
    p = tmp_path / "p"
    _profile(p, 1, 650.0), _profile(p, 2, 1900.0, mb=2)
    _profile(p, 1, 500.0, keep=True, conv=True), _profile(p, 2, 1500.0, keep=True, conv=True, mb=2)
    for log in (f"PASSED {KEEP}[None]\nFAILED {CONV}[bf16] - AssertionError\nPASSED {CONV}[float32]\n",
                f"PASSED {KEEP}[None]\n", ""):
        po.main(_files(tmp_path, log))
        env, flags, fitted = _out(tmp_path)
        assert env == OFF and flags == ["--micro-batch2", "2"]
        assert fitted[0]["steps"] == [math.floor(0.97 * 670 * 652 / 650), math.floor(0.97 * 230 * 1886 / 1900), 0]


def test_no_profiles_leave_the_plan_as_it_was(tmp_path):
    po.main(_files(tmp_path, f"PASSED {KEEP}[None]\n"))
    env, flags, fitted = _out(tmp_path)
    assert env == OFF and flags == [] and fitted[0]["steps"] == [670, 230, 0]


def test_variants_without_explicit_steps_are_refused(tmp_path):
    argv = _files(tmp_path, "", steps=(670, 230, 10))
    with pytest.raises(SystemExit, match="explicit steps"):
        po.main(argv)


def test_a_default_kernel_whose_card_test_failed_is_turned_off_for_the_run(tmp_path):
    rope = "modeling_tests/test_kernels.py::test_the_rotary_kernel_is_eager_low_precision_bit_for_bit"
    teacher = "modeling_tests/test_kernels.py::test_on_the_kernels_a_teacher_gives_its_own_final_states"
    for log, off in ((f"PASSED {rope}[2-3-1-45]\nFAILED {rope}[1-2-2-64] - AssertionError\n", True),
                     (f"PASSED {rope}[2-3-1-45]\nFAILED {teacher} - AssertionError\n", True),
                     (f"PASSED {rope}[2-3-1-45]\nPASSED {teacher}\n", False), ("", False)):
        rec = po.main(_files(tmp_path, log))
        env, _, _ = _out(tmp_path)
        assert ("JET_NEMOTRON_TEACHER_ROPE=0" in env.splitlines()) == off
        assert rec["defaults_off"] == (["teacher_rope"] if off else [])


def test_every_variant_of_the_run_shares_one_choice(tmp_path):
    """The switches hold for the whole process, so each variant's steps are refitted from the same profiles."""
    p = tmp_path / "p"
    _profile(p, 1, 650.0), _profile(p, 2, 1900.0, mb=2)
    argv = _files(tmp_path, "")
    v = json.loads(Path(argv[argv.index("--variants") + 1]).read_text())
    Path(argv[argv.index("--variants") + 1]).write_text(json.dumps(v + [dict(v[0], name="b", steps=[100, 50, 0])]))
    po.main(argv)
    _, _, fitted = _out(tmp_path)
    assert [f["steps"] for f in fitted] == [[math.floor(0.97 * n1 * 652 / 650), math.floor(0.97 * n2 * 1886 / 1900), 0]
                                            for n1, n2 in ((670, 230), (100, 50))]


def test_without_profiles_every_switch_whose_test_passed_and_the_planned_steps(tmp_path):
    """--no-profiles (a lease's minutes go to the run): profiles present are not read, a switch is on only where its
    card test passed, the variants keep their steps and stage 2 its given shape."""
    _profile(tmp_path / "p", 1, 580.0, keep=True, conv=True), _profile(tmp_path / "p", 2, 900.0, keep=True, conv=True)
    args = [a for a in _files(tmp_path, f"PASSED {KEEP}\nFAILED {CONV} - mismatch\n", steps=(600, 275, 0))
            if a not in ("--plan-ms", "652,1886")]
    rec = po.main(args + ["--no-profiles"])
    env, flags, fitted = _out(tmp_path)
    assert env == "JET_NEMOTRON_KEEP_STATES=1\nJET_NEMOTRON_CONV_FUSED_BWD=0\n" and flags == []
    assert fitted[0]["steps"] == [600, 275, 0]
    assert rec["profiles"] == [] and rec["chosen"]["switches"] == ["keep_states"] and rec["no_profiles"]
    # with profiles the same files would refit the steps: the flag is what keeps them
    po.main(_files(tmp_path, f"PASSED {KEEP}\nPASSED {CONV}\n", steps=(600, 275, 0)))
    assert _out(tmp_path)[2][0]["steps"] != [600, 275, 0]


def test_untested_prints_the_switch_tests_no_log_holds(tmp_path, capsys):
    """A switch whose card test ran nowhere is off like a failed one (three runs lost their fast stage 1 so): the
    session script asks --untested which tests to run on the card before it picks; a failed one is not rerun."""
    for log, want in (("", [CONV, KEEP]), (f"PASSED {KEEP}[None]\n", [CONV]),
                      (f"FAILED {KEEP}[None] - x\nPASSED {CONV}[a]\n", []),
                      ("PASSED other.py::test_x\n", [CONV, KEEP])):
        (tmp_path / "a.log").write_text(log)
        assert po.main(["--untested", "--card-tests", str(tmp_path / "a.log"), str(tmp_path / "none.log")]) == {
            "untested": want}
        assert capsys.readouterr().out.split() == want
    # the choice names what stayed untested
    rec = po.main(_files(tmp_path, f"PASSED {KEEP}[None]\n"))
    assert rec["untested"] == ["conv_fused_bwd"] and "did not run: conv_fused_bwd" in capsys.readouterr().out
