"""Converter: layer maps, identity conversion (logits equal), real-shape presets on meta tensors, init scheme."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from convert.layer_map import PRESETS, load_json, parse_spec, resolve_layer_map
from convert.qwen_to_jet import (build_jet_config, convert_model, convert_state_dict, init_jet_block,
                                 rope_low_frequency_dims, SourceDims)

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def tiny_qwen(kind: str = "qwen2", layers: int = 4, tie: bool = False, seed: int = 0, vocab: int = 101):
    """A random tiny Qwen2 / Qwen3 with non-trivial biases and norms (so dropping one would show)."""
    torch.manual_seed(seed)
    C, M = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    cfg = C(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=tie,
            initializer_range=0.1)
    model = M(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.2)
            elif "norm" in n:
                p.normal_(1, 0.2)
    return model


# ------------------------------------------------------------------------------------------------ layer maps

def test_presets_match_reference():
    m2 = resolve_layer_map("jet-nemotron-2b")
    assert m2.num_layers == 28 and m2.indices("attn") == [14, 19] and m2.indices("swa") == [20, 21]
    m4 = resolve_layer_map("jet-nemotron-4b")
    assert m4.num_layers == 36 and m4.indices("attn") == [17, 20, 32]
    assert m4.indices("swa") == [5, 16, 19, 21, 22, 25, 27]
    assert m2.swa["window_size"] == 1152 and m4.swa["window_size"] == 2048


def test_spec_forms_agree_and_json_round_trip(tmp_path):
    a = parse_spec("jet*14,attn,jet*4,attn,swa*2,jet*6")
    b = parse_spec("attn:14,19 swa:20-21", num_layers=28)
    assert a.layer_types == b.layer_types == PRESETS["jet-nemotron-2b"]["layer_types"]
    assert parse_spec(a.describe()).layer_types == a.layer_types
    p = tmp_path / "map.json"
    p.write_text(json.dumps(dict(resolve_layer_map("jet-nemotron-2b").to_json(), search={"objective": "mmlu"})))
    c = load_json(p)
    assert c.layer_types == a.layer_types and c.jet["head_dim"] == 96 and c.metadata["search"]["objective"] == "mmlu"
    assert parse_spec("j,a,s,linear_attention").layer_types == ["jet", "attn", "swa", "jet"]


# ------------------------------------------------------------------------------------------------ identity

@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
@pytest.mark.parametrize("tie", [False, True])
def test_all_attention_map_reproduces_source_logits(kind, tie):
    src = tiny_qwen(kind, tie=tie)
    jet = convert_model(src, resolve_layer_map("all-attn", 4)).eval()
    assert jet.config.qk_norm == (kind == "qwen3") and jet.config.attention_bias == (kind == "qwen2")
    ids = torch.randint(0, 101, (2, 37))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding on one row
    with torch.no_grad():
        for kw in ({}, {"attention_mask": mask}):
            want, got = src(ids, **kw).logits, jet(ids, **kw).logits
            # fp32, same ops in the same order; 1e-5 leaves room for a different matmul blocking only
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_attention_layers_copied_exactly_in_hybrid_map():
    src = tiny_qwen("qwen3")
    jet = convert_model(src, parse_spec("jet,attn,swa,jet"), window=8)
    s, j = src.state_dict(), jet.state_dict()
    for i in (1, 2):
        for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "q_norm.weight", "k_norm.weight"):
            assert torch.equal(s[f"model.layers.{i}.self_attn.{n}"], j[f"model.layers.{i}.self_attn.{n}"])
    for n in s:
        if "self_attn" not in n:
            assert torch.equal(s[n], j[n]), n


def test_saved_folder_reloads_in_fresh_process_with_remote_code(tmp_path):
    from convert.export import write_folder

    src = tiny_qwen("qwen2")
    jet = convert_model(src, parse_spec("jet,attn,swa,jet"), window=8).eval()
    write_folder(tmp_path / "out", jet)
    ids = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        ref = jet(ids).logits
    torch.save({"ids": ids, "ref": ref}, tmp_path / "ref.pt")
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        f"d = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}, trust_remote_code=True).eval()\n"
        "assert type(m).__module__.startswith('transformers_modules'), type(m).__module__\n"
        "torch.testing.assert_close(m(d['ids']).logits, d['ref'], atol=1e-5, rtol=0); print('ok')\n"
    )
    # a fresh interpreter that cannot import the repo's package: only the folder's copied code
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ real shapes

QWEN25 = {
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
}


def official_shapes(hidden, inter, layers, heads, kv, map_types, H, dk, dv, K=4, r=8, vocab=151936):
    """The official checkpoint's tensors, written out from REFERENCE.md (independent of the converter)."""
    hd = hidden // heads
    out = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i, t in enumerate(map_types):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                    p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                    p + "mlp.down_proj.weight": (hidden, inter)})
        a = p + "self_attn."
        if t == "jet":
            out.update({a + "q_proj.weight": (H * dk, hidden), a + "k_proj.weight": (H * dk, hidden),
                        a + "v_proj.weight": (H * dv, hidden), a + "g_proj.weight": (H * dv, hidden),
                        a + "o_proj.weight": (hidden, H * dv), a + "a_proj.weight": (H, hidden),
                        a + "b_proj.weight": (H, hidden), a + "A_log": (H,), a + "dt_bias": (H,),
                        a + "dynamic_conv1d.kernel_generator.w1.weight": (H * dv // r, hidden),
                        a + "dynamic_conv1d.kernel_generator.w2.weight": (H * dv * K, H * dv // r),
                        a + "dynamic_conv1d.kernel_generator.w2.bias": (H * dv * K,), a + "o_norm.weight": (dv,)})
        else:
            out.update({a + "q_proj.weight": (heads * hd, hidden), a + "q_proj.bias": (heads * hd,),
                        a + "k_proj.weight": (kv * hd, hidden), a + "k_proj.bias": (kv * hd,),
                        a + "v_proj.weight": (kv * hd, hidden), a + "v_proj.bias": (kv * hd,),
                        a + "o_proj.weight": (hidden, heads * hd)})
    return out


@pytest.mark.parametrize("size,preset,H,dk,dv", [("1.5b", "jet-nemotron-2b", 12, 96, 256),
                                                 ("3b", "jet-nemotron-4b", 16, 128, 256)])
def test_presets_on_meta_give_official_names_and_shapes(size, preset, H, dk, dv):
    from jet_nemotron import JetNemotronForCausalLM

    cfg = Qwen2Config(**QWEN25[size])
    with torch.device("meta"):
        src = Qwen2ForCausalLM(cfg)
    lm = resolve_layer_map(preset)
    jcfg = build_jet_config(cfg, lm)
    got = {n: tuple(t.shape) for n, t in convert_state_dict(src.state_dict(), cfg, jcfg).items()}
    want = official_shapes(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                           cfg.num_attention_heads, cfg.num_key_value_heads, lm.layer_types, H, dk, dv)
    assert got == want
    with torch.device("meta"):
        model = JetNemotronForCausalLM(jcfg)
    assert {n: tuple(t.shape) for n, t in model.state_dict().items()} == want
    assert jcfg.official_layer_types == lm.layer_types and jcfg.sliding_window == lm.swa["window_size"]


# ------------------------------------------------------------------------------------------------ init scheme

def test_rope_low_frequency_dims():
    # head 8: pairs (0,4) (1,5) (2,6) (3,7); slowest are the largest i
    assert rope_low_frequency_dims(8, 4).tolist() == [2, 3, 6, 7]
    assert rope_low_frequency_dims(8, 12).tolist() == list(range(8))


def test_attention_init_copies_heads_and_starts_closed():
    src = tiny_qwen("qwen2")
    cfg = build_jet_config(src.config, parse_spec("jet*4"), {"num_heads": 4, "head_dim": 8, "expand_v": 3})
    d = cfg.jet_dims()
    sd = src.state_dict()
    attn = {n.split("self_attn.")[1]: t for n, t in sd.items() if n.startswith("model.layers.0.self_attn.")}
    out = init_jet_block(attn, SourceDims.from_config(src.config), d)
    dims = rope_low_frequency_dims(16, 8)
    wq, wk, wv, wo = (attn[f"{p}_proj.weight"] for p in "qkvo")
    for h in range(4):
        assert torch.equal(out["q_proj.weight"][h * 8:(h + 1) * 8], wq[h * 16:(h + 1) * 16][dims])
        assert torch.equal(out["k_proj.weight"][h * 8:(h + 1) * 8], wk[(h // 2) * 16:(h // 2 + 1) * 16][dims])
        assert torch.equal(out["v_proj.weight"][h * 24:h * 24 + 16], wv[(h // 2) * 16:(h // 2 + 1) * 16])
        assert torch.equal(out["o_proj.weight"][:, h * 24:h * 24 + 16], wo[:, h * 16:(h + 1) * 16])
        assert out["o_proj.weight"][:, h * 24 + 16:(h + 1) * 24].abs().max() == 0
    assert out["g_proj.weight"].abs().max() == 0  # gate closed: the block adds nothing at step 0
    k = out["dynamic_conv1d.kernel_generator.w2.bias"].view(-1, d.conv_size)
    assert torch.equal(k[:, -1], torch.ones(k.shape[0])) and k[:, :-1].abs().max() == 0
    assert out["dynamic_conv1d.kernel_generator.w1.weight"].abs().max() > 0
    assert out["A_log"].dtype == torch.float32


def test_converted_model_starts_as_source_without_replaced_attention():
    """With the gate closed, the converted model equals the source with those layers' attention removed."""
    src = tiny_qwen("qwen2")
    jet = convert_model(src, parse_spec("jet,attn,jet,attn")).eval()
    ids = torch.randint(0, 101, (2, 23))
    hooks = [src.model.layers[i].self_attn.register_forward_hook(lambda m, a, o: (torch.zeros_like(o[0]), o[1]))
             for i in (0, 2)]
    with torch.no_grad():
        want = src(ids).logits
    for h in hooks:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(jet(ids).logits, want, atol=1e-5, rtol=0)
