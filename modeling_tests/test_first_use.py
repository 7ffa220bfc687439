"""What a new user hits first (issue 11's friction points), each checked as the user would meet it."""

import importlib.util
import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import BLOCK_JET_NEMOTRON, REPO, tiny_config, tiny_model

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n\n" * 40


def _example(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from convert.tiny_teacher import build_tokenizer

    tok = build_tokenizer([TEXT], vocab_size=300)
    model = tiny_model(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("first_use") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1: readme.index("```bash") + 3]
    test_command = block[1].split("#")[0].strip()
    assert test_command.startswith("python -m pytest"), block
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_finetune_lora_makes_missing_parents_and_leaves_no_temp(tmp_path):
    ex = _example("finetune_lora")
    out = tmp_path / "runs" / "lora"  # runs/ does not exist yet
    result = ex.finetune_lora(tiny_model(), ex.token_blocks(torch.arange(3, 40).repeat(8), 16), out, steps=1,
                              batch_size=2, lr=1e-3, rank=2)
    assert (out / "config.json").is_file() and result["reload_max_abs_diff"] == 0.0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lora"], "a temporary folder was left"


CHILD = BLOCK_JET_NEMOTRON + textwrap.dedent("""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    print("LOADED", type(tok).__name__, tok("def add(")["input_ids"])
""")


def test_tokenizer_of_a_saved_folder_loads_without_a_prompt(saved):
    """The snippets load the tokenizer as the model, with trust_remote_code=True: no question, no wrong-type note
    (without it transformers reads config.json first, finds our code and asks; importing jet_nemotron avoids it)."""
    run = subprocess.run([sys.executable, "-c", CHILD, str(saved)], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, cwd=saved.parent)
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    assert "Do you wish to run the custom code" not in said and "to instantiate a model of type" not in said, said
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(saved)("def add(")["input_ids"]  # jet_nemotron imported here: registered
    assert f"LOADED TokenizersBackend {ids}" in run.stdout
    for snippet in ((REPO / "README.md").read_text(), (REPO / "model_cards" / "jet_nemotron.md.jinja").read_text()):
        for call in re.findall(r"AutoTokenizer\.from_pretrained\([^\n]*", snippet):
            assert "trust_remote_code=True" in call, call


def test_evaluate_example_writes_where_told_and_stays_inside_the_model(saved, tmp_path, monkeypatch):
    ev = _example("evaluate_model")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # --out is required: nothing lands in the current directory by default
        ev.main(["--model", str(saved), "--text", str(text), "--seq-len", "32"])
    out = tmp_path / "reports" / "eval.json"
    ev.main(["--model", str(saved), "--text", str(text), "--seq-len", "32", "--trials", "1", "--out", str(out)])
    result = json.loads(out.read_text())[0]
    assert [k for k in result if k.startswith("passkey@")] == []  # 1K..4K are all beyond this model's 512
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "text.txt"]
    with pytest.raises(ValueError, match="at most 512 positions"):
        ev.evaluate(str(saved), TEXT, 32, [512], 1)


def test_reference_path_is_logged_once_per_process(saved):
    from jet_nemotron import ops

    ops._logged.clear()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jet_nemotron.ops")
    logger.addHandler(handler)
    try:
        model = tiny_model()
        for _ in range(2):
            model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records if "path" in r.getMessage()]
    assert lines == ["jet_nemotron: JetBlock ops run on the reference path (tensor on CPU)"], lines


def _card(source, tmp_path, **kwargs):
    from convert.model_card import render_card

    summary = {"config": {"stage": 1, "train": "jet", "kl_weight": 1.0, "mse_weight": 1.0}, "steps": 5,
               "tokens": 1000, "wall_s": 60}
    distill = {"stages": [summary], "data_sources": [f"/usr/lib/python3.11/{m}.py" for m in "abcde"],
               "data_tokens": 1000, "seq_len": 64, "ppl_teacher": 3.0, "ppl_student": 3.1, "kl_before": 1.0,
               "kl_after": 0.1}
    cfg = tiny_config(layer_types=("jet", "attn", "swa", "swa"))
    return render_card(cfg, tiny_config(layer_types=("attn",) * 4), source, "jet-tiny", distill=distill, **kwargs)


def test_model_card_names_hub_ids_never_local_paths(tmp_path):
    hub = _card("Qwen/Qwen2.5-1.5B", tmp_path)
    front = hub.split("---")[1]
    assert "base_model: Qwen/Qwen2.5-1.5B" in front and "license: other" in front
    assert "1 keeps full attention and 2 use a sliding window" in hub
    assert "![distillation loss](loss_curve.png)" in hub
    local_src = tmp_path / "teacher-qwen2"
    local_src.mkdir()
    (local_src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# teacher\n")
    local = _card(str(local_src), tmp_path)
    assert "base_model:" not in local.split("---")[1] and "license: apache-2.0" in local
    assert str(tmp_path) not in local and "/usr/lib" not in local, "an absolute machine path leaked"
    assert "5+ files under `python3.11/`" in local and "`teacher-qwen2`" in local


def test_model_card_names_an_attention_transfer_stage_by_its_loss(tmp_path):
    from convert.model_card import render_card

    def card(local: bool) -> str:
        stage = {"config": {"stage": 1, "train": "jet", "kl_weight": 1.0, "mse_weight": 1.0, "local": local},
                 "steps": 5, "tokens": 1000, "wall_s": 60}
        distill = {"stages": [stage], "data_sources": [], "data_tokens": 1000, "seq_len": 64, "ppl_teacher": 3.0,
                   "ppl_student": 3.1, "kl_before": 1.0, "kl_after": 0.1}
        return render_card(tiny_config(layer_types=("jet", "attn", "swa", "swa")),
                           tiny_config(layer_types=("attn",) * 4), "Qwen/Qwen2.5-1.5B", "jet-tiny", distill=distill)

    transfer, end_to_end = card(True), card(False)
    assert "attention transfer" in transfer and "logit KL" not in transfer
    assert "logit KL + attention MSE" in end_to_end and "attention transfer" not in end_to_end


def test_push_puts_the_repo_id_into_the_usage_snippet(tmp_path, monkeypatch):
    import huggingface_hub

    from convert import push as push_mod

    from conftest import tiny_model

    folder = tmp_path / "jet-tiny"
    tiny_model().save_pretrained(folder)  # push validates the config and weights before uploading
    (folder / "README.md").write_text(_card("Qwen/Qwen2.5-1.5B", tmp_path))
    commits = []

    class FakeApi:
        def create_repo(self, *a, **k):
            pass

        def create_commit(self, repo_id, operations, **k):
            commits.append((repo_id, operations))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    push_mod.push(folder, "me/jet-tiny-2")
    (repo, ops), = commits
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj
    card = (card if isinstance(card, bytes) else card.read()).decode()
    assert card.count('from_pretrained("me/jet-tiny-2"') == 2 and '"jet-tiny"' not in card
    assert (folder / "README.md").read_text().count('from_pretrained("jet-tiny"') == 2  # local folder unchanged


def test_converter_installs_under_our_own_name():
    """The installed converter is `jet_nemotron_convert` (the folder stays convert/; a top-level `convert` would
    clash in users' environments), and the console script points at it."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("jet_nemotron_convert")
    assert spec is not None, "pip install -e . has not installed jet_nemotron_convert"
    assert Path(spec.origin).parent.name == "convert"
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("jet-nemotron") == "jet_nemotron_convert.cli:main"
    top = (importlib.metadata.distribution("jet-nemotron").read_text("top_level.txt") or "").split()
    assert "convert" not in top, top
