"""FSDP2: two CPU processes (gloo) run the distillation of one process, with the same global batch.

The processes are started by `accelerate launch` with the shipped `examples/accelerate_fsdp.yaml` (FSDP2, one
shard unit per decoder layer, sharded checkpoints). accelerate 1.15 only switches to FSDP when the processes
sit on an accelerator (`AcceleratorState` keeps MULTI_CPU out of its FSDP branch), while torch's `fully_shard`
itself shards over gloo on CPU; the worker therefore flips accelerate's distributed type after building the
Accelerator, and from there on every FSDP path of accelerate runs unchanged (prepare, sharded save/load).

Stage 1 is the case FSDP finds hardest: frozen MLPs and trainable JetBlocks inside one shard unit.

Tolerance: the loss of every step within 5e-5 nats of the single process (observed <= 1e-6). The two runs
add the same float32 numbers in a different order: one process accumulates four micro-batch gradients, two
processes accumulate two each and reduce-scatter the halves, and the clipping norm is summed per shard and
then across processes. Each order gives a last-bit difference per step that Adam carries forward; the weights
themselves may differ more (observed 1.4e-4 after 6 steps) where Adam divides a near-zero gradient by its own
scale, so they are held to 1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from convert.distill import DistillConfig, _check_fsdp_plugin, distill

from test_convert_distill import _setup

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "accelerate_fsdp.yaml"
# global batch 8 = 1 process x 4 micro-batches of 2 = 2 processes x 2 micro-batches of 2
CFG = dict(stage=1, steps=6, batch_size=8, micro_batch=2, lr=1e-2, warmup_steps=2, save_every=2, log_every=0)

WORKER = textwrap.dedent("""
    import json, sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from convert.distill import DistillConfig, distill
    from convert.export import write_folder
    from test_convert_distill import _setup

    def fsdp_accelerator():
        acc = Accelerator(cpu=True)
        # see the test's docstring: accelerate leaves CPU processes on DDP; AcceleratorState re-reads the
        # type from PartialState on every construction, so both are set
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the env `accelerate launch` set
        assert acc.is_fsdp2 and acc.num_processes == 2
        return acc

    def run(ckpt, resume=False, stop=None):
        teacher, student, train, _ = _setup()
        acc = fsdp_accelerator()
        out = distill(student, teacher, train, DistillConfig(**{cfg!r}), ckpt_dir=ckpt, resume=resume,
                      accelerator=acc, stop=stop)
        return acc, student, out

    acc, student, full = run({tmp!r} + "/ck_full")
    if acc.is_main_process:
        write_folder({tmp!r} + "/distilled", student)  # what the pipeline writes: save_pretrained
        json.dump(full["history"], open({tmp!r} + "/history_full.json", "w"))
    run({tmp!r} + "/ck_killed", stop=lambda step: step >= 3)  # "killed" after step 3; its newest checkpoint is step 2
    acc, resumed, res = run({tmp!r} + "/ck_killed", resume=True)
    if acc.is_main_process:
        json.dump(res["history"], open({tmp!r} + "/history_resumed.json", "w"))
        torch.save(resumed.state_dict(), {tmp!r} + "/resumed.pt")
""")


def _launch_fsdp(tmp: Path, cfg: dict = CFG) -> float:
    script = tmp / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), tests=str(REPO / "modeling_tests"), cfg=cfg, tmp=str(tmp)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes",
           "2", "--main_process_port", str(29600 + os.getpid() % 1000), str(script)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    if cfg["stage"] == 1:  # `local` at its default (attention transfer), which FSDP cannot shard: said, end to end
        assert "stage 1 runs end to end under FSDP" in r.stdout, r.stdout[-2000:]
    return time.perf_counter() - t0


def _frozen_names(model) -> list[str]:
    """Stage 1 trains only the JetBlocks' self_attn; everything else must come back bit-identical."""
    jet = {i for i, t in enumerate(model.config.layer_types) if t == "linear_attention"}
    return [n for n in model.state_dict()
            if not any(n.startswith(f"model.layers.{i}.self_attn.") for i in jet)]


def test_two_process_fsdp_matches_single_process_and_resumes(tmp_path):
    from transformers import AutoModelForCausalLM

    import jet_nemotron  # noqa: F401  (registers the auto classes)

    seconds = _launch_fsdp(tmp_path)
    teacher, single, train, _ = _setup()
    initial = {n: p.clone() for n, p in single.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes: on 2 busy cores OpenMP threads spin for each other
    try:
        ref = distill(single, teacher, train, DistillConfig(**CFG, local=False))["history"]  # FSDP's stage 1
    finally:
        torch.set_num_threads(threads)

    # accelerate saved the sharded FSDP state, not a plain state dict
    assert (tmp_path / "ck_full" / "step_4" / "pytorch_model_fsdp_0").is_dir()

    fsdp = json.loads((tmp_path / "history_full.json").read_text())
    assert [h["step"] for h in fsdp] == list(range(1, CFG["steps"] + 1))
    worst = max(abs(a[k] - b[k]) for a, b in zip(ref, fsdp) for k in ("loss", "kl", "mse"))
    print(f"2-process FSDP vs 1 process: max |loss, kl, mse difference| {worst:.2e} over {len(fsdp)} steps; "
          f"launch + 3 FSDP runs {seconds:.1f} s")
    assert worst <= 5e-5

    # the saved folder holds full tensors: a fresh model loads it and equals the single-process result
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "distilled", dtype=torch.float32)
    got, want = loaded.state_dict(), single.state_dict()
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].shape == want[n].shape, n
        torch.testing.assert_close(got[n], want[n], atol=1e-3, rtol=0, msg=n)
    for n in _frozen_names(loaded):
        assert torch.equal(got[n], initial[n]), n
    assert any(not torch.equal(got[n], initial[n]) for n in want)

    # the killed run resumed from its sharded step-2 checkpoint ends exactly where the uninterrupted run did
    resumed = json.loads((tmp_path / "history_resumed.json").read_text())
    def curve(history):
        return [(h["step"], h["loss"], h["kl"], h["mse"], h["lr"]) for h in history]  # tok/s is a timing

    assert curve(resumed) == curve(fsdp)
    for n, p in torch.load(tmp_path / "resumed.pt").items():
        torch.testing.assert_close(p, got[n], atol=0, rtol=0, msg=n)


def test_fsdp_stage2_with_two_lr_groups_and_projections_as_one_matches_single_process(tmp_path):
    """Stage 2 (every weight trains) with the JetBlocks at their own rate (two AdamW groups) and the same-input
    projections as one product (a bf16 run's default): FSDP2 gathers each layer's shards before the concatenation,
    and accelerate maps both groups onto the shards. Same tolerance as above."""
    cfg = dict(CFG, stage=2, lr=1e-3, jet_lr=1e-2, projections_as_one=True)
    _launch_fsdp(tmp_path, cfg)
    teacher, single, train, _ = _setup()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = distill(single, teacher, train, DistillConfig(**cfg))["history"]
    finally:
        torch.set_num_threads(threads)
    fsdp = json.loads((tmp_path / "history_full.json").read_text())
    assert [h["step"] for h in fsdp] == list(range(1, cfg["steps"] + 1))
    worst = max(abs(a[k] - b[k]) for a, b in zip(ref, fsdp) for k in ("loss", "kl"))
    assert worst <= 5e-5, worst
    resumed = json.loads((tmp_path / "history_resumed.json").read_text())
    assert [(h["step"], h["loss"], h["lr"]) for h in resumed] == [(h["step"], h["loss"], h["lr"]) for h in fsdp]


@pytest.mark.parametrize("kwargs, message", [({"fsdp_version": 1}, "FSDP1 is not supported"),
                                             ({"fsdp_version": 2, "cpu_ram_efficient_loading": True},
                                              "cpu_ram_efficient_loading must be false")])
def test_unsupported_fsdp_settings_are_refused(kwargs, message):
    from accelerate.utils import FullyShardedDataParallelPlugin

    with pytest.raises(ValueError, match=message):
        _check_fsdp_plugin(FullyShardedDataParallelPlugin(**kwargs))


def test_attention_transfer_asked_for_under_fsdp_is_refused_naming_the_flag(monkeypatch):
    """Asked for explicitly (not the default, which FSDP turns off itself), transfer under FSDP is an error."""
    import convert.distill as d
    from test_convert_distill import _setup

    teacher, student, train, _ = _setup()
    monkeypatch.setattr(d, "uses_fsdp", lambda acc: True)
    with pytest.raises(ValueError, match="FSDP cannot shard: leave the flag out or pass --no-stage1-local"):
        distill(student, teacher, train, DistillConfig(**CFG, local=True))


def test_fused_adam_under_fsdp_is_refused(monkeypatch):
    """AdamW's fused kernel on sharded parameters is untested: refused before a step runs, not tried."""
    import convert.distill as d
    from test_convert_distill import _setup

    teacher, student, train, _ = _setup()
    monkeypatch.setattr(d, "uses_fsdp", lambda acc: True)
    with pytest.raises(ValueError, match="fused_adam with FSDP"):
        distill(student, teacher, train, DistillConfig(**CFG, fused_adam=True))
