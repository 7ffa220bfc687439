"""Benchmark records: every result is stamped with commit, card and date, and a kernels run replaces only the parts
it re-measured in the current file (benchmarks/stamp.py, benchmarks/kernel_speed.py)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import stamp as stamp_module  # noqa: E402
import torch  # noqa: E402


def test_stamp_names_this_checkouts_commit_or_the_one_given(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCH, capture_output=True, text=True)
    st = stamp_module.stamp(contexts=[8192])
    assert set(st) == {"commit", "card", "date", "versions", "contexts"} and st["contexts"] == [8192]
    import transformers

    assert st["versions"]["torch"] == torch.__version__ and st["versions"]["transformers"] == transformers.__version__
    assert st["card"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    if head.returncode == 0:
        assert st["commit"].removesuffix("+dirty") == head.stdout.strip()
    # the caller's commit wins even inside a checkout (a device copy's .git was seen stale), and without .git
    monkeypatch.setenv("JET_NEMOTRON_COMMIT", "abc1234")
    assert stamp_module.commit() == "abc1234"
    monkeypatch.setattr(stamp_module, "REPO", tmp_path)
    assert stamp_module.commit() == "abc1234"
    monkeypatch.delenv("JET_NEMOTRON_COMMIT")
    assert stamp_module.commit().startswith("unknown")


def test_a_kernels_run_replaces_only_the_parts_it_measured():
    import kernel_speed

    current = {"stamp": [{"run": 0, "parts": ["step", "step_variants"], "commit": "old"},
                         {"run": 1, "parts": ["chunk"], "commit": "old"}],
               "results": [{"op": "step", "ms": 1.0, "run": 0}, {"op": "step_variant", "ms": 2.0, "run": 0},
                           {"op": "chunk", "ms": 3.0, "run": 1}]}
    new = {"stamp": [{"run": 0, "parts": ["step", "chunk"], "commit": "new"}],
           "results": [{"op": "step", "ms": 0.5, "run": 0}, {"op": "chunk", "ms": 2.5, "run": 0}]}
    merged = kernel_speed.merge_runs(current, new)
    assert [(s["run"], s["parts"], s["commit"]) for s in merged["stamp"]] == [(0, ["step_variants"], "old"),
                                                                             (2, ["step", "chunk"], "new")]
    assert sorted((r["op"], r["ms"], r["run"]) for r in merged["results"]) == [
        ("chunk", 2.5, 2), ("step", 0.5, 2), ("step_variant", 2.0, 0)]


def test_every_current_result_file_is_stamped():
    import json

    for path in sorted((BENCH / "results").rglob("*.json")):
        stamps = json.loads(path.read_text())["stamp"]
        assert stamps and all({"commit", "card", "date"} <= set(s) for s in stamps), path
    for path in sorted((BENCH / "results").rglob("*.txt")):
        assert path.read_text().startswith("stamp: commit "), path


def test_no_script_is_named_like_a_package_it_might_import():
    """A script runs with its own folder first on sys.path, so a script named like an installed package is imported
    in that package's place by anything that imports it: transformers 5.25 imports `kernels`, and a
    benchmarks/kernels.py once stood there. `kernels` and `evaluate` are named outright, for an environment that
    lacks them."""
    import importlib.metadata

    packages = set(importlib.metadata.packages_distributions()) | {"kernels", "evaluate"}
    scripts = {p.stem: p for folder in (BENCH, BENCH.parent / "examples") for p in folder.glob("*.py")}
    assert scripts, "no scripts found"
    clashes = sorted(str(p) for name, p in scripts.items() if name in packages)
    assert not clashes, f"scripts named like importable packages: {clashes}"


def test_a_recorded_error_keeps_its_cause_from_the_last_line():
    """A Triton CompilationError says where on its first line and why on its last (an H100, 2026-12-05), or, raised
    from the error of a nested call (Triton 3.6 on an H100, 2026-12-05), why on its cause's last line, its own last
    being the caret: a record keeps both; a one-line error stays as it is."""
    import kernel_speed

    cause = "ValueError('arange's range must be a power of 2')"
    err = RuntimeError(f"at 39:12:\n    b_h = tl.load(p)\n            ^\n{cause}")
    assert kernel_speed.error_line(err) == f"RuntimeError: at 39:12: ... {cause}"
    try:
        try:
            raise ValueError("arange's range must be a power of 2")
        except ValueError as inner:
            raise RuntimeError("at 41:12:\n    o = tl.arange(0, BV)\n            ^") from inner
    except RuntimeError as chained:
        assert kernel_speed.error_line(chained) == "RuntimeError: at 41:12: ... arange's range must be a power of 2"
    assert kernel_speed.error_line(MemoryError("out of memory")) == "MemoryError: out of memory"
