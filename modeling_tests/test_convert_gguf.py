"""A GGUF source (through transformers' GGUF loading) converts like the safetensors one."""

from __future__ import annotations

import json

import torch

from convert.cli import main
from convert.tiny_teacher import build_tokenizer

from test_convert_conversion import tiny_qwen


def write_qwen2_gguf(model, tok, path) -> None:
    """Write a Qwen2 model + byte-level BPE tokenizer as an f32 GGUF file with llama.cpp's tensor names."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_embedding_length(cfg.hidden_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    if getattr(tok, "chat_template", None):  # as an instruct model's GGUF carries it (the real session's does)
        w.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for n, t in model.state_dict().items():
        w.add_tensor(names.get_name(n, try_suffixes=(".weight", ".bias")), t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_convert_from_gguf_keeps_logits_and_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = build_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    src = tiny_qwen("qwen2", vocab=len(tok))
    write_qwen2_gguf(src, tok, tmp_path / "tiny.gguf")
    out = tmp_path / "jet"
    assert main(["convert", str(tmp_path / "tiny.gguf"), str(out), "--layer-map", "all-attn", "--dtype",
                 "float32"]) == 0
    jet = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(0, len(tok), (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(jet(ids).logits, src(ids).logits, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("def f(x):")["input_ids"] == tok("def f(x):")["input_ids"]


def test_save_teacher_writes_a_folder_that_loads_to_the_same_logits(tmp_path):
    """benchmarks/save_teacher.py: the GPU session dequantises the GGUF once and later processes load the folder."""
    import sys
    from pathlib import Path

    from convert.export import load_source

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from save_teacher import main as save_teacher

    tok = build_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    src = tiny_qwen("qwen2", vocab=len(tok))
    write_qwen2_gguf(src, tok, tmp_path / "tiny.gguf")
    save_teacher([str(tmp_path / "tiny.gguf"), str(tmp_path / "teacher")])
    assert not (tmp_path / "teacher.tmp").exists()
    teacher, tok2 = load_source(str(tmp_path / "teacher"))
    ids = torch.randint(0, len(tok), (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids).logits, src(ids).logits, atol=1e-5, rtol=0)
    assert tok2("def f(x):")["input_ids"] == tok("def f(x):")["input_ids"]
