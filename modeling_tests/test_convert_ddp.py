"""DDP: two CPU processes (gloo, torchrun) with the same global batch end where one process ends.

Each rank runs half of every global batch and DDP averages the gradients, so the weights must match a
single-process run up to the order of floating-point sums (atol 1e-5 after a few Adam steps).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    from accelerate import Accelerator
    from convert.distill import DistillConfig, distill
    from test_convert_distill import _setup

    teacher, student, train, held = _setup()
    acc = Accelerator(cpu=True)
    if acc.is_main_process:
        torch.save(student.state_dict(), {init!r})
    cfg = DistillConfig(stage=1, steps=3, batch_size=4, micro_batch={micro}, lr=1e-2, warmup_steps=1, log_every=0,
                        local={local})
    distill(student, teacher, train, cfg, accelerator=acc)
    if acc.is_main_process:
        torch.save(student.state_dict(), {out!r})
""")


def _run(tmp: Path, nproc: int, micro: int, local: bool = False) -> tuple[dict, dict]:
    """(state dict before, state dict after) of rank 0."""
    out, init = tmp / f"sd_{nproc}.pt", tmp / f"sd_{nproc}_init.pt"
    script = tmp / f"worker_{nproc}.py"
    script.write_text(WORKER.format(repo=str(REPO), tests=str(REPO / "modeling_tests"), micro=micro, out=str(out),
                                    init=str(init), local=local))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(29500 + nproc + os.getpid() % 1000), str(script)] if nproc > 1 else [sys.executable, str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(init), torch.load(out)


@pytest.mark.parametrize("local", [False, True], ids=["end-to-end", "attention-transfer"])
def test_two_process_ddp_matches_single_process(tmp_path, local):
    init, single = _run(tmp_path, 1, micro=2, local=local)  # 2 micro-batches of 2 accumulated
    init_ddp, ddp = _run(tmp_path, 2, micro=2, local=local)  # 2 ranks x 1 micro-batch of 2
    for n, a in single.items():
        assert torch.equal(init_ddp[n], init[n]), f"{n}: the two runs did not start from the same weights"
        torch.testing.assert_close(ddp[n], a, atol=1e-5, rtol=1e-4, msg=n)
    # the runs trained: stage 1 moves every JetBlock tensor (layers 0 and 3 of _setup's jet,attn,swa,jet) and
    # nothing else, so equal results cannot come from two runs that did nothing
    jet_layers = {n.split(".")[2] for n in init if n.endswith("self_attn.A_log")}
    trained = {n for n in init if n.split(".")[2:4] in ([i, "self_attn"] for i in jet_layers)}
    changed = {n for n in init if not torch.equal(single[n], init[n])}
    assert jet_layers == {"0", "3"} and changed == trained, sorted(changed ^ trained)


BUDGET_WORKER = textwrap.dedent("""
    import json, sys, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    from accelerate import Accelerator
    from convert.distill import DistillConfig, distill
    from convert.step_budget import StepBudget
    from test_convert_distill import _setup

    teacher, student, train, held = _setup()
    acc = Accelerator(cpu=True)
    if acc.process_index == 1:
        # this process reads its clock past the deadline at the marks: alone it would stop at the second mark
        orig = StepBudget.mark
        StepBudget.mark = lambda self, step, now, acc=None: orig(self, step, now + 1e6, acc)
    cfg = DistillConfig(stage=1, steps=14, batch_size=4, micro_batch=1, lr=1e-2, warmup_steps=10, log_every=0,
                        time_budget_s=3600.0)
    s = distill(student, teacher, train, cfg, accelerator=acc)
    head = student.model.layers[0].self_attn.A_log.detach()
    with open({out!r} + f".{{acc.process_index}}", "w") as f:
        json.dump({{"steps": s["steps"], "budget": s["step_budget"], "A_log": head.tolist()}}, f)
""")


def test_under_ddp_every_process_runs_the_main_process_step_count(tmp_path):
    """The count a budgeted stage chooses is the main process's on every rank: rank 1's own clock says its time is
    up at the second mark (10 steps), rank 0's that the cap (14) fits. Ranks running different counts wait on each
    other's gradient all-reduce until the timeout (seen with the broadcast removed), or end with different weights."""
    import json

    out = tmp_path / "budget"
    script = tmp_path / "budget_worker.py"
    script.write_text(BUDGET_WORKER.format(repo=str(REPO), tests=str(REPO / "modeling_tests"), out=str(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 1000), str(script)]
    try:  # 14 steps take about 10 s: a hang is ranks that chose different counts
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    except subprocess.TimeoutExpired as err:
        raise AssertionError("the two processes hung: did they run different step counts?") from err
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.{i}").read_text()) for i in (0, 1)]
    assert [x["steps"] for x in ranks] == [14, 14]
    assert ranks[0]["budget"] == ranks[1]["budget"] == {"seconds": 3600.0, "cap": 14, "steps": 14}
    assert ranks[0]["A_log"] == ranks[1]["A_log"]
