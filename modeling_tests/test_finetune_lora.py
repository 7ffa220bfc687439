"""examples/finetune_lora.py on a tiny model on CPU: LoRA trains, merges, and the merged model reloads."""

import importlib.util
from pathlib import Path

import torch

from conftest import REPO, tiny_model


def _example():
    spec = importlib.util.spec_from_file_location("finetune_lora", REPO / "examples" / "finetune_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_finetune_merge_and_reload(tmp_path: Path):
    ex = _example()
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a learnable stream: a repeated pattern
    stream = torch.arange(3, 40).repeat(40)
    blocks = ex.token_blocks(stream, 48)
    result = ex.finetune_lora(model, blocks, tmp_path / "merged", steps=30, batch_size=4, lr=5e-3, rank=4)
    losses = result["losses"]
    assert losses[-1] < 0.7 * losses[0], losses
    merged = result["merged"]
    names = dict(merged.named_parameters())
    assert not any("lora" in n for n in names), "the adapter was not merged away"
    # every targeted projection of attention, JetBlock and MLP changed; frozen ones did not
    for n in ("model.layers.0.self_attn.g_proj.weight", "model.layers.1.self_attn.q_proj.weight",
              "model.layers.3.mlp.down_proj.weight"):
        assert not torch.equal(names[n], before[n]), f"{n} was not adapted"
    assert torch.equal(names["model.layers.0.self_attn.a_proj.weight"], before["model.layers.0.self_attn.a_proj.weight"])
    assert result["reload_max_abs_diff"] == 0.0
    assert (tmp_path / "merged" / "config.json").exists()
    assert not any(p.name.startswith("merged.tmp-") for p in tmp_path.iterdir())
