"""benchmarks/kernel_ab.py: another tree's chunked op loaded beside this one's, and how far their results lie apart.
The timing itself needs a card; this checks, in Triton's interpreter (a child process, which must set it before
Triton is imported), that `--base` loads that tree's kernels and not this one's again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_base_tree_is_its_own_package_and_a_changed_kernel_shows_apart(tmp_path):
    base = tmp_path / "base"
    shutil.copytree(REPO / "jet_nemotron", base / "jet_nemotron", ignore=shutil.ignore_patterns("__pycache__"))
    # the base's output kernel scales its result: a tree that differs must show, the same tree must not
    fwd = base / "jet_nemotron" / "gated_delta_rule_triton_chunk_fwd.py"
    text = fwd.read_text()
    store = "tl.store(o + rel[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)"
    assert store in text
    fwd.write_text(text.replace(store, store.replace("b_o.to(", "(b_o * 2).to(")))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import torch
        sys.path.insert(0, {str(REPO / 'benchmarks')!r})
        import kernel_ab as ab
        import jet_nemotron.gated_delta_rule_triton as ours
        base = ab.load_tree(Path({str(base)!r}))
        torch.manual_seed(0)
        xs = ab.gdr_inputs(128, 2, 32, 32, True, B=2, device="cpu")
        do = torch.randn(2, 128, 2, 32).bfloat16()
        a = ab.run_once(ab.op_of(ours), xs, do, "fwd+bwd")
        b = ab.run_once(ab.op_of(base), xs, do, "fwd+bwd")
        print(json.dumps(dict(file=base.__file__, ours=ours.__file__, apart=ab.apart(a, b),
                              same=ab.apart(a, ab.run_once(ab.op_of(ours), xs, do, "fwd+bwd")), n=len(a))))
    """))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(base)) and not got["ours"].startswith(str(base))
    assert got["n"] == 6  # the output and the gradients of q, k, v, g and beta
    assert got["same"] == 0.0 and 0.4 < got["apart"] < 0.6  # o doubled: (2o - o) / 2o, halved where it leads


def test_a_base_without_the_package_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/kernel_ab.py", "--base", str(tmp_path), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode != 0 and f"--base {tmp_path}: no jet_nemotron/__init__.py there" in out.stderr


def test_a_variant_sets_the_launch_only_while_it_runs():
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'benchmarks')!r})
        import kernel_ab as ab
        from jet_nemotron import gated_delta_rule_triton_launch as launch
        before = dict(launch.CHUNK_WARPS)
        name, settings = ab.parse_variant('w8={{"CHUNK_WARPS": {{"wu": 8}}, "CHUNK_BV": 32}}')
        seen = ab.with_settings(lambda: (dict(launch.CHUNK_WARPS), launch.CHUNK_BV), settings)()
        print(json.dumps(dict(name=name, before=before, seen=seen, after=dict(launch.CHUNK_WARPS), bv=launch.CHUNK_BV)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["name"] == "w8" and got["seen"] == [{**got["before"], "wu": 8}, 32]
    assert got["after"] == got["before"] and got["bv"] == 64
    bad = subprocess.run([sys.executable, "benchmarks/kernel_ab.py", "--base", ".", "--out", "/tmp/x", "--variant",
                          'x={"NO_SUCH": 1}'], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert bad.returncode != 0 and "gated_delta_rule_triton_launch has no ['NO_SUCH']" in bad.stderr
