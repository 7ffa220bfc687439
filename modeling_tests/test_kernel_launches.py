"""benchmarks/kernel_launches.py: every kernel the library launches, recorded by a dry run under the interpreter,
built for Hopper on a machine without a GPU.

Run in child processes without TRITON_INTERPRET: the kernel tests set it in this process, and a kernel decorated
under it is the interpreter's function, which Triton cannot compile for a card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_every_kernel_the_library_launches_builds_for_hopper_as_a_card_launches_it(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/kernel_launches.py", "--T", "128", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((tmp_path / "kernel_launches.json").read_text())
    assert rec["not_launched"] == []
    assert len(rec["launched"]) == 23 and "convert.kl_rows_triton:_kl_rows_kernel" in rec["launched"]
    assert {b["kernel"] for b in rec["builds"]} == set(rec["launched"])
    for b in rec["builds"]:
        assert 0 < b["registers"] <= 255 and b["stack"] >= 0, b["kernel"]
        assert 0 <= b["shared"] <= 227 * 1024, f"{b['kernel']}: {b['shared']} B of shared memory"
    # the dry launch ran on the CPU, where the per-chunk backward keeps fp32 operands; the build is the card's
    chunk = [b for b in rec["builds"] if b["kernel"].endswith(":_bwd_chunk_kernel")]
    assert chunk and all(b["constexprs"]["DOT_BF16"] for b in chunk)
    # the KL row kernel in its four forms (a sharpened target or not, a focus weight or not); the focus weight takes
    # the teacher's max from the log-sum-exp pass, so a focus form holds exactly as many global loads as the same
    # form without it (an extra pass over the row would add its own), and the sharpened target's argmax pass adds
    loads = {(b["constexprs"]["SHARPEN"], b["constexprs"]["FOCUS"]): b["global_loads"] for b in rec["builds"]
             if b["kernel"].endswith(":_kl_rows_kernel")}
    assert set(loads) == {(False, False), (False, True), (True, False), (True, True)}
    assert loads[False, False] > 0 and loads[True, False] > loads[False, False]
    assert loads[False, True] == loads[False, False] and loads[True, True] == loads[True, False], loads


def test_a_kernel_the_interpreter_runs_but_the_compiler_refuses_fails_its_build(tmp_path):
    """A value defined under a runtime `if` and read after it: the interpreter runs the kernel as Python, where the
    branch taken defines it (checked here), while Triton's compiler needs it defined on both branches."""
    (tmp_path / "odd_kernels.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl

        @triton.jit
        def _odd_kernel(x, n, BLOCK: tl.constexpr):
            i = tl.arange(0, BLOCK)
            v = tl.load(x + i, mask=i < n)
            if n > 3:
                w = v + 1.0
            tl.store(x + i, w, mask=i < n)
    """))
    ran = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from odd_kernels import _odd_kernel
        x = torch.zeros(16)
        _odd_kernel[(1,)](x, 7, BLOCK=16)
        assert x[:7].eq(1).all() and x[7:].eq(0).all(), x
    """)], capture_output=True, text=True, env=dict(ENV, TRITON_INTERPRET="1"), cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(REPO / 'benchmarks')!r}, {str(REPO)!r}]
        from kernel_launches import build, spec
        launch = dict(kernel="odd_kernels:_odd_kernel", args=dict(x={{"tensor": "torch.float32"}}, n=7, BLOCK=16),
                      options=dict(num_warps=1))
        s = spec(launch)
        assert s["signature"] == dict(x="*fp32", n="i32", BLOCK="constexpr"), s
        build(s)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                         timeout=300)
    assert out.returncode != 0 and "CompilationError" in out.stderr, out.stderr[-3000:]
    assert "odd_kernels:_odd_kernel does not build for sm_90 with {'BLOCK': 16}" in out.stderr, out.stderr[-3000:]
