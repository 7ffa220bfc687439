"""benchmarks/kernel_registers.py: Hopper builds of the kernels on a machine without a GPU, and what their cubins use.

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


def run(code: str, folder: Path) -> dict:
    script = folder / "child.py"  # a file: Triton reads a kernel's source from it
    script.write_text(textwrap.dedent(code))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_kernel_that_holds_a_whole_tile_spills_and_a_streaming_one_does_not(tmp_path):
    got = run(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'benchmarks')!r})
        import triton, triton.language as tl
        from kernel_registers import compile_for

        @triton.jit
        def add_one(x, y, n, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(y + i, tl.load(x + i, mask=i < n) + 1.0, mask=i < n)

        @triton.jit
        def minus_column_max(x, y, R: tl.constexpr):  # the whole [R, R] tile lives until its maxima are known
            o = tl.arange(0, R)
            b = tl.load(x + o[:, None] * R + o[None, :])
            tl.store(y + o[:, None] * R + o[None, :], b - tl.max(b, 0)[None, :])

        print(json.dumps({{"add": compile_for(add_one, dict(x="*fp32", y="*fp32", n="i32"), dict(BLOCK=128), 4, 1),
                          "tile": compile_for(minus_column_max, dict(x="*fp32", y="*fp32"), dict(R=128), 1, 1)}}))
    """, tmp_path)
    # 128 x 128 fp32 values in one warp's 32 threads: 512 a thread, past the 255 registers a thread can have
    assert got["tile"]["registers"] == 255 and got["tile"]["stack"] >= 4 * (512 - 255)
    assert 0 < got["add"]["registers"] < 64 and got["add"]["stack"] == 0


def test_every_chunked_kernel_builds_for_hopper_at_its_training_launch_and_fits_an_sm(tmp_path):
    """A card-free check of the launches: each kernel compiles for sm_90 as `chunk_fwd` / `chunk_bwd` launch it at the
    2B shapes in bf16, within the 227 KiB of shared memory a Hopper SM gives a block."""
    out = subprocess.run([sys.executable, "benchmarks/kernel_registers.py", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((tmp_path / "kernel_registers.json").read_text())
    assert rec["stamp"][0]["arch"] == "sm_90"
    assert set(rec["kernels"]) == {"prepare", "wu", "fwd_h", "fwd_o", "dv_local", "dh", "chunk"}
    for name, row in rec["kernels"].items():
        assert 0 < row["registers"] <= 255 and row["stack"] >= 0, name
        assert 0 < row["shared"] <= 227 * 1024, f"{name}: {row['shared']} B of shared memory"
    assert (rec["kernels"]["dv_local"]["num_warps"], rec["kernels"]["dv_local"]["num_stages"]) == (4, 3)
    bad = subprocess.run([sys.executable, "benchmarks/kernel_registers.py", "--only", "nope"], capture_output=True,
                         text=True, env=ENV, cwd=REPO, timeout=600)
    assert bad.returncode != 0 and "no kernel named ['nope']" in bad.stderr
