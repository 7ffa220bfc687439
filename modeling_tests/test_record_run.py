"""benchmarks/record_run.py: a lease's results.tgz into a record folder, written whole or not at all."""

import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import record_run  # noqa: E402


def _answers(passed):
    buf = io.BytesIO()
    with gzip.open(buf, "wt") as f:
        for i, p in enumerate(passed):
            f.write(json.dumps({"task_id": f"p{i}", "passed": p, "completion": "x"}) + "\n")
    return buf.getvalue()


def _archive(path, files):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


LOG = ("teacher: held-out ppl 2.600\n"
       "distill stage 1:   1%|          | 5/738 [00:03<07:00,  1.75step/s]\r"
       "distill stage 1:   1%|          | 6/738 [00:03<07:00,  1.75step/s]stage 1: 565 ms a step since step 5; "
       "738 steps fit the 425 s budget (cap 1000)\n"
       "step 10/738 loss 0.6014 kl 0.0000 nats/token\n\n")
STAMP = {"commit": "abc1234", "card": "NVIDIA H100 80GB HBM3", "date": "2026-12-07T15:24:19+00:00"}
HISTORY = [{"stage": 1, "step": s, "ms_per_step": 500.0, "time": 1000.0 + 5 * (s // 10), "gc_ms_per_step": 0.0}
           for s in range(1, 21)]


def test_a_finished_lease_becomes_a_record_with_its_log_trimmed_and_its_student_compared(tmp_path, capsys):
    root = tmp_path / "real_model"
    (root / "old").mkdir(parents=True)
    (root / "old" / "humaneval_old-student.jsonl.gz").write_bytes(_answers([True, True, False, False]))
    samples = "unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons\n" + "".join(
        f"{t},1980,2619,650,60,98,0x0\n" for t in range(995, 1012))
    tgz = _archive(tmp_path / "results.tgz", {
        "out/variants/variants.json": json.dumps({"variants": [{"name": "v", "history": HISTORY}]}),
        "out/variants/variants.md": "| variant |\n", "out/card_tests.log": "12 passed\n",
        "out/card_tests_after.log": "48 passed\n",
        "out/variants/partial.json": json.dumps({"name": "v", "history": HISTORY}),  # v finished: not kept
        "out/variants/humaneval_teacher.jsonl.gz": _answers([True, True, True, False]),
        "out/variants/humaneval_new-student.jsonl.gz": _answers([True, False, True, True]),
        "out/gpu_samples.csv": samples, "variants.log": LOG, "pipeline.log": "not kept\n"})
    dest = record_run.main([str(tgz), "new", "--against", "old", "--root", str(root)])
    assert sorted(p.name for p in dest.iterdir()) == [
        "card_tests.log", "card_tests_after_run.log", "gpu_by_stage.json", "gpu_by_stage.png", "gpu_samples.csv",
        "humaneval_new-student.jsonl.gz", "humaneval_teacher.jsonl.gz", "variants.json", "variants.log", "variants.md"]
    assert (dest / "variants.log").read_text() == (
        "teacher: held-out ppl 2.600\nstage 1: 565 ms a step since step 5; 738 steps fit the 425 s budget (cap 1000)\n"
        "step 10/738 loss 0.6014 kl 0.0000 nats/token\n")
    (stage,) = json.loads((dest / "gpu_by_stage.json").read_text())["stages"]
    assert stage["samples"] > 0 and stage["sm_mhz"] == 1980
    assert "b gains 2, loses 1" in capsys.readouterr().out  # new against old: p2, p3 gained, p1 lost
    assert sorted(p.name for p in root.iterdir()) == ["new", "old"]  # no temporary folder left


def test_the_card_jobs_samples_line_up_each_profiles_steps_and_its_log_is_kept(tmp_path):
    """The card job's clock samples and log are kept, and each profile whose JSON holds its step records gets the
    card's clocks over those steps (a profile and a run of the same step set side by side); one without is left."""
    root = tmp_path / "real_model"
    card = "unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons\n" + "".join(
        f"{t},1965,2619,648,60,96,0x4\n" for t in range(995, 1012))
    run = "unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons\n" + "".join(
        f"{t},1950,2619,653,60,100,0x4\n" for t in range(995, 1012))
    tgz = _archive(tmp_path / "results.tgz", {
        "out/variants/variants.json": json.dumps({"stamp": [STAMP], "variants": [{"name": "v", "history": HISTORY}]}),
        "out/gpu_samples.csv": run, "out/gpu_samples_card.csv": card, "speed.log": LOG,
        "out/variants/trace/v/stage1_steps51-52.txt": "Name  Self CUDA\n",
        "out/profile/profile_distill_stage1_local.json": json.dumps({"ms_per_step": 536.0, "history": HISTORY}),
        "out/profile/profile_distill_stage2_old.json": json.dumps({"ms_per_step": 984.0}),
        "out/variants/trace/v/stage1_steps51-52.json": json.dumps({"wall_ms_per_step": 579.0})})
    dest = record_run.main([str(tgz), "new", "--root", str(root)])
    assert (dest / "gpu_samples_card.csv").read_text() == card
    assert (dest / "card_job.log").read_text() == record_run.step_log(LOG)  # without its progress bars
    (prof,) = json.loads((dest / "clocks_stage1_local" / "gpu_by_stage.json").read_text())["stages"]
    assert prof["samples"] > 0 and prof["sm_mhz"] == 1965 and prof["power_capped"] == 1
    (stage,) = json.loads((dest / "gpu_by_stage.json").read_text())["stages"]
    assert stage["sm_mhz"] == 1950  # the run's stages from the run's samples
    assert not (dest / "clocks_stage2_old").exists()
    # the traces carry the run's stamp, as every result file does
    assert json.loads((dest / "trace" / "v" / "stage1_steps51-52.json").read_text()) == {
        "stamp": [STAMP], "wall_ms_per_step": 579.0}
    assert (dest / "trace" / "v" / "stage1_steps51-52.txt").read_text() == (
        "stamp: commit abc1234, card NVIDIA H100 80GB HBM3, date 2026-12-07T15:24:19+00:00\n\nName  Self CUDA\n")


def test_a_variant_that_failed_keeps_its_partial_row_and_its_steps_line_up_the_samples(tmp_path):
    """A variant that raised after its distillation (run p: an OOM in an evaluation suite) has no row in
    variants.json; its partial.json is kept and its step history lines up the card's samples."""
    root = tmp_path / "real_model"
    samples = "unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons\n" + "".join(
        f"{t},1950,2619,650,60,98,0x0\n" for t in range(995, 1012))
    tgz = _archive(tmp_path / "results.tgz", {
        "out/variants/variants.json": json.dumps({"variants": [], "failed": [{"name": "v", "error": "OOM"}]}),
        "out/variants/partial.json": json.dumps({"name": "v", "history": HISTORY, "held_out_kl": 0.08}),
        "out/gpu_samples.csv": samples, "variants.log": LOG})
    dest = record_run.main([str(tgz), "failed", "--root", str(root)])
    assert json.loads((dest / "partial.json").read_text())["held_out_kl"] == 0.08
    (stage,) = json.loads((dest / "gpu_by_stage.json").read_text())["stages"]
    assert stage["run"] == "v" and stage["steps"] == 20 and stage["sm_mhz"] == 1950


def test_an_unfinished_archive_or_an_existing_record_is_refused_and_nothing_is_written(tmp_path):
    root = tmp_path / "real_model"
    (root / "done").mkdir(parents=True)
    tgz = _archive(tmp_path / "results.tgz", {"variants.log": LOG})
    with pytest.raises(SystemExit, match="holds no out/variants/variants.json: the pipeline had not finished"):
        record_run.main([str(tgz), "new", "--root", str(root)])
    with pytest.raises(SystemExit, match="done exists"):
        record_run.main([str(tgz), "done", "--root", str(root)])
    with pytest.raises(SystemExit, match="done: no student answer files"):
        record_run.main([str(tgz), "new", "--against", "done", "--root", str(root)])
    (tmp_path / "bad.tgz").write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match="bad.tgz: not a readable results archive"):
        record_run.main([str(tmp_path / "bad.tgz"), "new", "--root", str(root)])
    assert sorted(p.name for p in root.iterdir()) == ["done"]
