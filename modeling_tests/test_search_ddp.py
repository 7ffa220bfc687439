"""Supernet training over two CPU processes (gloo, torchrun) ends where one process ends, same global batch.

Every rank draws the same sub-network each step (a function of seed and step) and half of the rows; DDP averages
the JetBlock gradients, and the JetBlocks of layers the sub-network does not use get none (find_unused_parameters).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys, torch
    sys.path[:0] = [{repo!r}]
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from convert.search.supernet import Supernet
    from convert.search.train import SupernetConfig, train_supernet

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=1, initializer_range=0.2, tie_word_embeddings=True)
    net = Supernet.from_source(Qwen2ForCausalLM(cfg).eval())
    rows = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    summary = train_supernet(net, rows, SupernetConfig(steps=3, batch_size=4, micro_batch={micro}, attn=1, lr=1e-2,
                                             warmup_steps=1, save_every=0), log=lambda *a: None)
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({{"jet": net.jet_state_dict(), "world": summary["world_size"]}}, {out!r})
""")


def _run(tmp: Path, nproc: int, micro: int) -> dict:
    out = tmp / f"jet_{nproc}.pt"
    script = tmp / f"worker_{nproc}.py"
    script.write_text(WORKER.format(repo=str(REPO), micro=micro, out=str(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(29600 + nproc + os.getpid() % 1000), str(script)] if nproc > 1 else [sys.executable, str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def test_two_process_supernet_matches_single_process(tmp_path):
    single = _run(tmp_path, 1, micro=2)  # 2 micro-batches of 2 accumulated
    ddp = _run(tmp_path, 2, micro=2)  # 2 ranks x 1 micro-batch of 2
    assert (single["world"], ddp["world"]) == (1, 2)
    for n, a in single["jet"].items():
        torch.testing.assert_close(ddp["jet"][n], a, atol=1e-5, rtol=1e-4, msg=n)
    assert any(".g_proj." in n and a.abs().sum() > 0 for n, a in single["jet"].items())  # the gates opened: it trained
