"""benchmarks/trace_vs_profile.py: a run's traced steps beside a profile of the same step, kernel by kernel."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import trace_vs_profile as tvp  # noqa: E402


def _k(name, ms):
    return {"name": name, "ms_per_step": ms, "calls_per_step": 1.0}


RUN = {"wall_ms_per_step": 579.0, "busy_ms_per_step": 36.0,
       "kernels": [_k("sm90_xmma_gemm_bf16", 20.0), _k("_fwd_h_kernel", 10.0), _k("_bwd_chunk_kernel", 6.0)]}
PROFILE = {"ms_per_step": 537.0, "kernels": [_k("sm90_xmma_gemm_bf16", 20.5), _k("_fwd_h_kernel", 7.0),
                                             _k("aten::cat", 1.0)]}


def test_the_run_and_the_profile_are_set_side_by_side_largest_difference_first(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    (tmp_path / "prof.json").write_text(json.dumps(PROFILE))
    diff = tvp.main([str(tmp_path / "run.json"), str(tmp_path / "prof.json"), "--top", "3",
                     "--out", str(tmp_path / "d.json")])
    assert diff["wall"] == [579.0, 537.0, 42.0] and diff["busy"] == [36.0, 28.5, 7.5]
    # the JetBlock kernels (_fwd_h and the backward, one only in the run) differ by 9 ms, the products by -0.5
    assert diff["families"][0] == ["jetblock triton", 16.0, 7.0, 9.0]
    assert [f[0] for f in diff["families"]][1:] == ["elementwise / reduce", "matmul"]
    assert [k[0] for k in diff["kernels"]] == ["_bwd_chunk_kernel", "_fwd_h_kernel", "aten::cat"]
    written = json.loads((tmp_path / "d.json").read_text())
    assert written.pop("stamp")[0]["reads"] == [str(tmp_path / "run.json"), str(tmp_path / "prof.json")]
    assert written == diff
    assert "kernels busy" in capsys.readouterr().out


def test_a_record_without_a_kernel_table_is_named():
    with pytest.raises(ValueError, match="profile has no kernel table"):
        tvp.compare(RUN, {"ms_per_step": 537.0})
