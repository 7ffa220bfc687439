"""benchmarks/profile_distill.py: a distillation step's time by kernel family (toy shapes on the CPU)."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import profile_distill as pd  # noqa: E402

from convert.step_trace import GLUE_OPS, family  # noqa: E402


def test_kernel_names_fall_into_their_families():
    assert family("_fwd_h_kernel") == family("_conv_bwd_dx_kernel") == "jetblock triton"
    assert family("fmha_cutlassF_bf16_aligned_64x64") == "attention"  # before cutlass's matmul pattern
    assert family("sm90_xmma_gemm_bf16bf16_bf16f32") == family("aten::addmm") == "matmul"
    assert family("cunn_SoftMaxForward") == "kl / softmax"
    assert family("multi_tensor_apply_kernel") == "optimizer"
    assert family("_swiglu_bwd_kernel") == family("aten::silu_backward") == "silu / swiglu"
    assert family("_rmsnorm_bwd_kernel") == "rmsnorm" and family("_norm_bwd_kernel") == "jetblock triton"
    assert family("something_new") == "other"


def test_toy_profile_writes_its_record(tmp_path):
    pd.main(["--toy", "--out", str(tmp_path), "--warm", "2", "--steps", "2"])
    rec = json.loads((tmp_path / "profile_distill_stage1_toy.json").read_text())
    assert rec["ms_per_step"] > 0 and rec["tok_per_s"] > 0 and rec["time_is"].startswith("cpu")
    fam = rec["ms_per_step_by_family"]
    assert fam["matmul"] > 0 and sum(fam.values()) > 0
    assert "aten::" in (tmp_path / "profile_distill_stage1_toy.txt").read_text()
    glue = rec["glue_by_shape"]
    assert glue and all(g["op"] in GLUE_OPS and g["shapes"].startswith("[[") and g["calls_per_step"] > 0
                        for g in glue)
    assert [g["ms_per_step"] for g in glue] == sorted((g["ms_per_step"] for g in glue), reverse=True)


def test_the_record_keeps_every_steps_time_for_the_cards_samples(tmp_path):
    """Each step's record, warm ones too, with its Unix time: gpu_by_stage.py reads the record as a run and gives the
    card's clocks over the profile's steps (a run's stage-1 step ran 9% over its profile's on 2026-12-07)."""
    import gpu_by_stage as gbs

    t0 = time.time()
    pd.main(["--toy", "--out", str(tmp_path), "--warm", "4", "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage1_toy.json").read_text())
    hist = rec["history"]
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5] and all(h["ms_per_step"] > 0 for h in hist)
    times = [h["time"] for h in hist]
    assert t0 < times[0] and times == sorted(times) and times[-1] <= time.time()
    assert rec["kernels"] and rec["kernels"][0]["ms_per_step"] > 0  # the table a run's traced steps keep
    (span,) = gbs.stage_spans(rec, "profile")
    assert span["stage"] == 1 and span["steps"] == 5 and t0 <= span["start"] < span["end"] == times[-1]


def test_a_kl_chunk_other_than_the_default_names_its_record(tmp_path):
    pd.main(["--toy", "--stage", "2", "--kl-chunk", "32", "--out", str(tmp_path), "--warm", "2", "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage2_kl_chunk32_toy.json").read_text())
    assert rec["args"]["kl_chunk"] == "32" and rec["tok_per_s"] > 0
    # an end-to-end step concatenates (the eager rotary's halves at least): the glue table lists it, without shapes
    assert any(g["op"] == "aten::cat" and g["calls_per_step"] > 0 for g in rec["glue_by_shape"])
    assert rec["peak_gb"] is None  # CPU: no device allocator to ask


def test_a_stage_two_training_the_mixers_names_its_record_and_counts_no_head_gradient(tmp_path):
    """--train mixers (acceptance_v13's stage 2): a record of its own name whose FLOP count is the non-mlp one's less
    the head's weight gradient, as the step runs it."""
    for train in ("non-mlp", "mixers"):
        pd.main(["--toy", "--stage", "2", "--train", train, "--out", str(tmp_path), "--warm", "1", "--steps", "1"])
    mixers, non_mlp = (json.loads((tmp_path / f"profile_distill_stage2_train_{t}_toy.json").read_text())
                       for t in ("mixers", "non-mlp"))
    assert mixers["args"]["train"] == "mixers" and mixers["tok_per_s"] > 0
    assert 0 < non_mlp["flops_per_token"]["student"] - mixers["flops_per_token"]["student"]


def test_gradient_checkpointing_reaches_the_step_and_names_its_record(tmp_path):
    """--gradient-checkpointing profiles a stage-2 step whose student recomputes its activations (8 rows a forward
    on an 80 GB card, where 2 fit without it), in a record of its own name."""
    pd.main(["--toy", "--stage", "2", "--gradient-checkpointing", "--out", str(tmp_path), "--warm", "2",
             "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage2_ckpt_toy.json").read_text())
    assert rec["args"]["gradient_checkpointing"] == "True" and rec["tok_per_s"] > 0
    # the recomputed forward is in the profile: more student matmul time a step than without
    pd.main(["--toy", "--stage", "2", "--out", str(tmp_path), "--warm", "2", "--steps", "1"])
    plain = json.loads((tmp_path / "profile_distill_stage2_toy.json").read_text())
    calls = {k: sum(g["calls_per_step"] for g in r["glue_by_shape"]) for k, r in (("ckpt", rec), ("plain", plain))}
    assert calls["ckpt"] > calls["plain"]


def test_keep_states_turns_the_launch_flag_on_and_names_its_record(tmp_path, monkeypatch):
    """--keep-states profiles a step with the JetBlocks' forward states kept for the backward (on the card; the CPU
    runs the PyTorch reference, which has no such states), in a record of its own name."""
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    monkeypatch.setattr(launch, "KEEP_STATES", False)  # restored after the test: main sets it for its process
    pd.main(["--toy", "--keep-states", "--out", str(tmp_path), "--warm", "2", "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage1_keep_states_toy.json").read_text())
    assert rec["args"]["keep_states"] == "True" and launch.KEEP_STATES is True


def test_conv_fused_bwd_turns_the_conv_flag_on_and_names_its_record(tmp_path, monkeypatch):
    """--conv-fused-bwd profiles a step with the dynamic convolution's one-kernel backward (on the card; the CPU runs
    the PyTorch reference), in a record of its own name that pick_optins.py reads the switch from."""
    from jet_nemotron import dynamic_conv_triton

    monkeypatch.setattr(dynamic_conv_triton, "FUSED_BWD", False)
    pd.main(["--toy", "--conv-fused-bwd", "--out", str(tmp_path), "--warm", "2", "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage1_conv_fused_bwd_toy.json").read_text())
    assert rec["args"]["conv_fused_bwd"] == "True" and dynamic_conv_triton.FUSED_BWD is True


def test_the_switches_default_to_the_librarys_and_the_record_holds_what_ran(tmp_path, monkeypatch):
    """Without a switch flag the library's setting runs (both on since their card tests and timing, 2026-12-05);
    --no-keep-states / --no-conv-fused-bwd turn them off, in a record of its own name whose args say so."""
    from jet_nemotron import dynamic_conv_triton
    from jet_nemotron import gated_delta_rule_triton_launch as launch

    monkeypatch.setattr(launch, "KEEP_STATES", True)
    monkeypatch.setattr(dynamic_conv_triton, "FUSED_BWD", True)
    pd.main(["--toy", "--out", str(tmp_path), "--warm", "2", "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage1_toy.json").read_text())
    assert rec["args"]["keep_states"] == rec["args"]["conv_fused_bwd"] == "True"
    pd.main(["--toy", "--no-keep-states", "--no-conv-fused-bwd", "--out", str(tmp_path), "--warm", "2",
             "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage1_no_keep_states_no_conv_fused_bwd_toy.json").read_text())
    assert rec["args"]["keep_states"] == rec["args"]["conv_fused_bwd"] == "False"
    assert launch.KEEP_STATES is False and dynamic_conv_triton.FUSED_BWD is False


def test_gc_in_steps_counts_the_collections_inside_the_steps_of_both_runs(tmp_path):
    """benchmarks/gc_in_steps.py: a run without the freeze, then one with it, each counting only the collections
    made between the steps' start and end (the young ones happen every step)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gc

    import gc_in_steps

    res = gc_in_steps.main(["--steps", "2", "--out", str(tmp_path)])
    assert [r["frozen"] for r in res["runs"]] == [False, True]
    for r in res["runs"]:
        assert r["collections"][0] > 0 and r["ms_per_step"][0] > 0 and r["s_per_step"] > 0
    assert res["tracked_before"] > 100_000 and gc.get_freeze_count() == 0
    assert json.loads((tmp_path / "gc_in_steps.json").read_text())["runs"][1]["steps"] == 2


def test_teacher_fp8_takes_the_targets_from_the_fp8_copy_and_names_its_record(tmp_path, monkeypatch):
    """--teacher-fp8 profiles a step whose targets come from the teacher with its MLP projections in FP8 (what
    knobs_v9_fp8_stage1_h100 timed), in a record of its own name."""
    import convert.distill as distill_module

    copies, original = [], distill_module.with_fp8_mlps

    def counted(teacher, *args, **kwargs):
        copy = original(teacher, *args, **kwargs)
        copies.append(sum(isinstance(m, distill_module.Fp8Linear) for m in copy[0].modules()))
        return copy

    monkeypatch.setattr(distill_module, "with_fp8_mlps", counted)
    pd.main(["--toy", "--local", "--teacher-fp8", "--out", str(tmp_path), "--warm", "2", "--steps", "1"])
    rec = json.loads((tmp_path / "profile_distill_stage1_local_teacher_fp8_toy.json").read_text())
    assert rec["args"]["teacher_fp8"] == "True" and rec["tok_per_s"] > 0
    assert copies == [12]  # one copy for the stage, the toy teacher's 4 MLPs x 3 projections in FP8


def test_a_tree_on_pythonpath_is_the_one_profiled_and_the_record_names_it(tmp_path):
    """`PYTHONPATH=<tree> python benchmarks/profile_distill.py` profiles that tree's jet_nemotron (to compare a step
    of two trees on one card), not the checkout's, which the script adds after it."""
    import os
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "jet_nemotron", tmp_path / "tree" / "jet_nemotron",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "tree")}
    out = subprocess.run([sys.executable, "benchmarks/profile_distill.py", "--toy", "--out", str(tmp_path / "o"),
                          "--warm", "1", "--steps", "1"], capture_output=True, text=True, env=env, cwd=repo,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads((tmp_path / "o" / "profile_distill_stage1_toy.json").read_text())
    assert rec["jet_nemotron"] == str(tmp_path / "tree" / "jet_nemotron")
