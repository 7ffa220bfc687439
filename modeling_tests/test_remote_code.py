"""Acceptance 4: a saved folder loads through remote code in a process where `jet_nemotron` cannot be imported."""

import json
import subprocess
import sys
import textwrap

import torch

from conftest import BLOCK_JET_NEMOTRON, REPO, tiny_model

CHILD = BLOCK_JET_NEMOTRON + textwrap.dedent("""
    import json
    import torch
    from transformers import AutoModelForCausalLM
    try:
        import jet_nemotron  # noqa: F401
        raise SystemExit("jet_nemotron was importable")
    except ImportError:
        pass
    folder = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.load(folder + "/ids.pt")
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    loaded = sorted(m.rsplit(".", 1)[-1] for m in sys.modules if m.startswith("transformers_modules."))
    try:
        import triton  # noqa: F401
        has_triton = True
    except ImportError:
        has_triton = False
    torch.save({"logits": logits, "gen": gen, "cls": type(model).__module__, "loaded": loaded,
                "has_triton": has_triton}, folder + "/child.pt")
""")


def _load_in_child(folder, tmp_path) -> dict:
    """Run CHILD on `folder` in a fresh process without jet_nemotron; returns what it saved."""
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(folder / "child.pt")


def test_remote_code_roundtrip(tmp_path):
    model = tiny_model()
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    files = sorted(p.name for p in folder.iterdir())
    for name in ("modeling_jet_nemotron.py", "configuration_jet_nemotron.py", "jet_block.py", "ops.py",
                 "cache_jet_nemotron.py", "gated_delta_rule_ref.py", "dynamic_conv_ref.py", "gated_rmsnorm_ref.py",
                 "gated_rmsnorm_triton.py", "swiglu_ref.py", "swiglu_triton.py", "rmsnorm_ref.py",
                 "rmsnorm_triton.py"):
        assert name in files, f"{name} was not copied next to the weights: {files}"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_jet_nemotron.JetNemotronForCausalLM"
    unread = {"mode", "dconv_implementation"} & set(config["efficient_attention_config"]["jet"])
    assert not unread, f"the config carries JetBlock keys nothing reads: {unread}"
    ids = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    torch.save(ids, folder / "ids.pt")
    child = _load_in_child(folder, tmp_path)
    assert child["cls"].startswith("transformers_modules"), child["cls"]
    # the folder carries what the model runs: every copied file was imported by the loaded model (the Triton
    # files only where Triton is installed; ops.py imports them inside a try)
    copied = {p.stem for p in folder.glob("*.py")}
    expected = copied if child["has_triton"] else {n for n in copied if "triton" not in n}
    assert expected <= set(child["loaded"]), f"copied but never imported: {sorted(expected - set(child['loaded']))}"
    with torch.no_grad():
        assert torch.equal(child["logits"], model(ids).logits)
        assert torch.equal(child["gen"], model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None,
                                                       pad_token_id=0))


def test_save_load_roundtrip_keeps_config(tmp_path):
    from jet_nemotron import JetNemotronForCausalLM

    model = tiny_model()
    model.save_pretrained(tmp_path)
    again = JetNemotronForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert again.config.layer_types == model.config.layer_types
    assert again.config.efficient_attention_config == model.config.efficient_attention_config
    ids = torch.randint(3, 128, (1, 30))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_official_checkpoint_folder_with_our_files_loads_through_remote_code(tmp_path, official_tiny):
    """The official configs' auto_map names our file names, so dropping our flat modeling files into an official
    checkpoint folder makes it load on transformers 5.x with trust_remote_code, no fork needed."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "official"
    shutil.copytree(official_tiny, folder)
    for f in (REPO / "jet_nemotron").glob("*.py"):
        if f.name != "__init__.py":
            shutil.copy(f, folder / f.name)
    ref = load_file(folder / "inputs_and_outputs.safetensors")
    torch.save(ref["input_ids"], folder / "ids.pt")
    child = _load_in_child(folder, tmp_path)
    torch.testing.assert_close(child["logits"], ref["logits_full"], atol=1e-4, rtol=1e-4)
