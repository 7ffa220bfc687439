"""A GGUF source (through transformers' GGUF loading) converts like the safetensors one."""

from __future__ import annotations

import json

import pytest
import torch

from convert.cli import main
from convert.tiny_teacher import build_tokenizer

from test_convert_conversion import tiny_qwen


def write_qwen2_gguf(model, tok, path, quantise=None, state_dict=None, blocks=None) -> None:
    """Write a Qwen2 model + byte-level BPE tokenizer as a GGUF file with llama.cpp's tensor names: f32, or where
    `quantise(tensor)` returns (raw bytes, type name) that type's blocks. `state_dict` (default the model's) and
    `blocks` (the name map's layer count) let a test write a broken file."""
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
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, blocks or cfg.num_hidden_layers)
    for n, t in (model.state_dict() if state_dict is None else state_dict).items():
        if n == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # one tensor, as llama.cpp writes a tied model
        q = quantise(t) if quantise else None
        name = names.get_name(n, try_suffixes=(".weight", ".bias"))
        if q is None:
            w.add_tensor(name, t.float().numpy())
        else:
            w.add_tensor(name, q[0], raw_dtype=getattr(gguf.GGMLQuantizationType, q[1]))
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
    # the tokenizer alone (what GPU sessions tokenise with beside the teacher's save) is load_source's, hash for hash
    from convert.corpus import tokenizer_hash
    from convert.export import load_source, load_tokenizer

    alone = load_tokenizer(tmp_path / "tiny.gguf")
    assert tokenizer_hash(alone) == tokenizer_hash(load_source(str(tmp_path / "tiny.gguf"))[1])
    assert alone("def f(x):")["input_ids"] == tok("def f(x):")["input_ids"]


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


def _random_blocks(rng, rows: int, row_len: int, kind: str):
    """[rows, bytes] uint8 of random `kind` blocks (Q8_0: 32 values a block, k-quants 256) with finite fp16
    scales, so every bit pattern of the quants and packed scales is exercised."""
    import numpy as np

    block, nbytes, scale_at = {"Q8_0": (32, 34, [0]), "Q4_K": (256, 144, [0, 2]), "Q5_K": (256, 176, [0, 2]),
                               "Q6_K": (256, 210, [208])}[kind]
    raw = rng.integers(0, 256, (rows * row_len // block, nbytes), dtype=np.uint8)
    for at in scale_at:
        raw[:, at:at + 2] = (rng.standard_normal(len(raw)) * 0.01).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_the_torch_dequantiser_equals_ggufs_own_bit_for_bit(kind, device):
    import gguf
    import numpy as np

    from convert.gguf_dequant import dequantize

    raw = _random_blocks(np.random.default_rng(0), 12, 512, kind)
    want = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, kind))
    got = dequantize(torch.from_numpy(raw).to(device), kind)
    assert got.dtype == torch.float32 and got.shape == (12, 512) and got.device.type == device
    assert np.array_equal(got.cpu().numpy(), want.reshape(12, 512))


@pytest.mark.parametrize("tie", [False, True])
def test_a_quantised_gguf_loads_as_transformers_loads_it_bit_for_bit(tmp_path, tie):
    """Q4_K / Q6_K / Q8_0 matrices (random blocks) and F32 vectors: `load_source`'s torch dequantisation gives the
    tensors transformers' own GGUF loading gives, the model config and the tokenizer alike."""
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM

    from convert.export import load_source

    tok = build_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    src = tiny_qwen("qwen2", vocab=len(tok), tie=tie)
    src.config.hidden_size, src.config.intermediate_size, src.config.head_dim = 256, 512, 64  # whole k-quant blocks
    src = type(src)(src.config)
    rng = np.random.default_rng(1)
    kinds = iter(["Q4_K", "Q6_K", "Q8_0", "Q5_K"] * 100)
    path = tmp_path / "tiny.gguf"
    def quantise(t):
        if t.dim() != 2:
            return None
        kind = next(kinds)
        return _random_blocks(rng, t.shape[0], t.shape[1], kind), kind

    write_qwen2_gguf(src, tok, path, quantise)
    ours, tok_ours = load_source(str(path))
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie
    # transformers marks its model GGUF-quantised though its tensors are plain (save_dequantised drops the mark)
    assert ours.config.to_dict() == {k: v for k, v in theirs.config.to_dict().items() if k != "quantization_config"}
    assert ours.generation_config.to_dict() == theirs.generation_config.to_dict()
    # the buffers a state dict leaves out (rotary frequencies) are real too: the same logits, bit for bit
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    assert tok_ours("def f(x):")["input_ids"] == tok("def f(x):")["input_ids"]


def test_a_gguf_missing_a_tensor_or_holding_a_stray_one_is_refused_with_its_name(tmp_path):
    from convert.export import load_source

    tok = build_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    src = tiny_qwen("qwen2", vocab=len(tok), layers=2)
    sd = src.state_dict()
    del sd["model.layers.1.mlp.down_proj.weight"]
    write_qwen2_gguf(src, tok, tmp_path / "missing.gguf", state_dict=sd)
    with pytest.raises(KeyError, match=r"model.layers.1.mlp.down_proj.weight \(looked for blk.1.ffn_down.weight\)"):
        load_source(str(tmp_path / "missing.gguf"))
    extra = {**src.state_dict(), "model.layers.2.mlp.up_proj.weight": torch.zeros(96, 64)}  # a third block's
    write_qwen2_gguf(src, tok, tmp_path / "extra.gguf", state_dict=extra, blocks=3)
    with pytest.raises(ValueError, match=r"tensors no model tensor claims: \['blk.2.ffn_up.weight'\]"):
        load_source(str(tmp_path / "extra.gguf"))


def test_a_gguf_without_the_gguf_package_names_the_extra_to_install(tmp_path, monkeypatch):
    import sys

    from convert.gguf_source import gguf_tensors

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ImportError, match=r"needs the gguf package: pip install 'jet-nemotron\[gguf\]'"):
        gguf_tensors(tmp_path / "x.gguf", {}, tied=False)
