"""benchmarks/distill_multi_gpu.py: the comparison that decides PASS/FAIL, and a CPU run of the whole script (toy
sizes, two 1-process runs: on the CPU the same distillation twice must give the very same losses)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "distill_multi_gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("distill_multi_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _run(losses, processes=1, tok_s=1000.0):
    return {"processes": processes, "tok_per_s_per_gpu": tok_s, "steps": list(range(1, len(losses) + 1)),
            "losses": losses, "ppl_student": 10.0}


def test_compare_passes_small_differences_and_names_the_step_of_a_large_one():
    mod = _module()
    base = [4.0, 3.0, 2.0, 1.0]
    res = mod.compare({"single": _run(base), "ddp": _run([4.0, 3.01, 2.0, 1.0], 2, 900.0),
                       "fsdp": _run([4.0, 3.0, 2.0, 1.05], 2, 600.0)}, tolerance=0.02)
    ddp, fsdp = res["modes"]["ddp"], res["modes"]["fsdp"]
    assert ddp["passed"] and ddp["max_abs_diff_step"] == 2 and abs(ddp["max_rel_diff"] - 0.01 / 3) < 1e-9
    assert not fsdp["passed"] and fsdp["max_rel_diff_step"] == 4 and abs(fsdp["max_rel_diff"] - 0.05) < 1e-9
    assert res["passed"] is False  # one failing mode fails the whole comparison
    assert abs(ddp["scaling"] - 0.9) < 1e-9 and abs(fsdp["scaling"] - 0.6) < 1e-9
    assert mod.compare({"single": _run(base)})["passed"] is None  # nothing to compare is not a pass


def test_compare_refuses_runs_of_different_steps():
    mod = _module()
    with pytest.raises(ValueError, match="not the same run"):
        mod.compare({"single": _run([3.0, 2.0, 1.0]), "ddp": _run([3.0, 2.0])})


def test_toy_run_on_cpu_is_deterministic(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--toy", "--modes", "single", "repeat", "--out",
                          str(tmp_path / "out"), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "results.json").read_text())
    single, repeat = out["runs"]["single"], out["runs"]["repeat"]
    assert len(single["losses"]) == len(single["steps"]) > 0 and single["losses"][-1] < single["losses"][0]
    assert repeat["losses"] == single["losses"]  # bit-identical on the CPU: a real noise floor of zero
    assert out["comparison"]["modes"]["repeat"]["max_abs_diff"] == 0.0 and out["comparison"]["passed"] is True
    assert (tmp_path / "out" / "loss_curves.png").stat().st_size > 10_000
