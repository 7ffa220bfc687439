"""`--layout official`: folders that NVIDIA's HF code and SGLang read, checked against what those loaders read.

What each loader reads is data (`data/official_format.json`, written from SGLang's `models/jet_nemotron.py` and
`configs/jet_nemotron.py` and from the official `jetai/modeling/hf/` at the commits it names). SGLang's
`load_weights` is replayed on the exported names: every checkpoint name must land on a parameter (it skips
none), every parameter and every shard of a stacked one must be filled, each with the shape the loader builds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import tiny_model
from convert.cli import main
from convert.official_layout import check_representable, official_config, official_state_dict
from test_convert_conversion import tiny_qwen
from test_remote_code import CHILD

FORMAT = json.loads((Path(__file__).parent / "data" / "official_format.json").read_text())
SAFE = {"__builtins__": {"int": int}}


# ------------------------------------------------------------------------------------------------ helpers

def read_folder(folder: Path) -> tuple[dict, dict[str, tuple[tuple[int, ...], str]]]:
    """(config.json, {tensor name: (shape, safetensors dtype)}) over every shard."""
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                s = st.get_slice(k)
                tensors[k] = (tuple(s.get_shape()), s.get_dtype())
    return json.loads((folder / "config.json").read_text()), tensors


def expected_params(spec: dict, config: dict) -> dict[str, object]:
    """{parameter name: shape, or {shard id: shape} for a stacked one} the loader builds for `config`."""
    ns = dict(config, jet=config["efficient_attention_config"]["jet"])
    for name, expr in spec["symbols"].items():
        ns[name] = eval(expr, SAFE, ns)

    def shape(v):
        return {k: tuple(eval(e, SAFE, ns)) for k, e in v.items()} if isinstance(v, dict) else tuple(eval(v, SAFE, ns))

    out = {n: shape(v) for n, v in spec["params"]["global"].items()}
    if not config.get("tie_word_embeddings", True):
        out.update({n: shape(v) for n, v in spec["params"]["untied"].items()})
    for i, kind in enumerate(config["layer_types"]):
        group = spec["swa_same_params_as"] if kind == "swa" else kind
        for n, v in {**spec["params"]["every_layer"], **spec["params"][group]}.items():
            out[n.format(i=i)] = shape(v)
    return out


def sglang_load(tensors: dict[str, tuple], config: dict) -> None:
    """Replay SGLang's load_weights (rule in the data file) on the checkpoint names; assert every parameter is filled."""
    spec = FORMAT["sglang"]
    params = expected_params(spec, config)
    filled: dict[str, object] = {}
    for name, (shape, _) in tensors.items():
        for param_part, shard_part, shard_id in spec["stacked_params_mapping"]:
            if shard_part not in name.split("."):
                continue
            target = name.replace(shard_part, param_part)
            if target in params:
                assert isinstance(params[target], dict), f"{target} is not stacked in SGLang"
                filled.setdefault(target, {})[str(shard_id)] = shape
                break
        else:
            assert name in params, f"SGLang's load_weights raises KeyError on checkpoint tensor {name}"
            filled[name] = shape
    missing = sorted(set(params) - set(filled))
    assert not missing, f"SGLang parameters left unloaded: {missing[:5]}"
    for name, want in params.items():
        assert filled[name] == want, f"{name}: checkpoint gives {filled[name]}, SGLang builds {want}"


def check_config_fields(config: dict, spec: dict) -> None:
    """The fields a loader reads are present and hold values it accepts."""
    missing = [f for f in spec["config_fields"] if f not in config]
    assert not missing, f"config.json lacks {missing}"
    assert set(config["layer_types"]) <= set(spec["layer_types_allowed"]), config["layer_types"]
    assert len(config["layer_types"]) == config["num_hidden_layers"]
    jet = config["efficient_attention_config"]["jet"]
    # both build JetBlockConfig(**jet): SGLang's has no defaults (a missing key raises), the official one has
    # defaults (a missing key silently changes the model), and an extra key raises in both
    assert sorted(jet) == sorted(spec["jet_block_config_fields"]), sorted(jet)
    assert isinstance(jet["norm_eps"], str) and float(jet["norm_eps"]) > 0
    if "swa" in config["layer_types"]:
        assert isinstance(config["efficient_attention_config"]["swa"]["window_size"], int)
    assert config.get("head_dim", config["hidden_size"] // config["num_attention_heads"]) == \
        config["hidden_size"] // config["num_attention_heads"]  # SGLang ignores head_dim: it must not matter
    if "hidden_act_allowed" in spec:
        assert config["hidden_act"] in spec["hidden_act_allowed"]


def check_official_folder(folder: Path) -> dict:
    """Every check of both loaders on a written folder; returns its config."""
    config, tensors = read_folder(folder)
    assert config["model_type"] == "jet_nemotron" and config["architectures"] == ["JetNemotronForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_jet_nemotron.JetNemotronForCausalLM"
    check_config_fields(config, FORMAT["sglang"])
    check_config_fields(config, FORMAT["official_hf"])
    sglang_load(tensors, config)
    official = expected_params(FORMAT["official_hf"], config)
    assert {n: s for n, (s, _) in tensors.items()} == official
    want_dtype = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}[config["torch_dtype"]]
    assert {d for _, d in tensors.values()} == {want_dtype}  # one dtype, A_log and dt_bias included (as released)
    return config


def run_cli(*args) -> None:
    assert main([str(a) for a in args]) == 0


@torch.no_grad()
def logits(model, ids):
    return model(ids, attention_mask=torch.ones_like(ids)).logits


# ------------------------------------------------------------------------------------------------ acceptance 1

def test_tiny_qwen2_converted_with_official_layout_loads_everywhere(tmp_path):
    """convert --layout official and export --layout official of a converted tiny Qwen2: the SGLang-name test and
    the official-name test pass, ours reloads with identical logits, and remote code loads it."""
    from jet_nemotron import JetNemotronForCausalLM

    src = tmp_path / "qwen"
    tiny_qwen("qwen2", layers=4).save_pretrained(src)
    common = ["--layer-map", "jet,attn,swa,jet", "--window", "8", "--dtype", "float32", "--init", "random"]
    run_cli("convert", src, tmp_path / "ours", *common)
    run_cli("convert", src, tmp_path / "direct", *common, "--layout", "official")
    run_cli("export", tmp_path / "ours", tmp_path / "exported", "--dtype", "float32")

    ours = JetNemotronForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    ids = torch.randint(0, 101, (2, 70), generator=torch.Generator().manual_seed(0))  # > one 64-token chunk
    want = logits(ours, ids)
    for name in ("direct", "exported"):
        folder = tmp_path / name
        config = check_official_folder(folder)
        assert config["layer_types"] == ["jet", "attn", "swa", "jet"] and config["torch_dtype"] == "float32"
        again = JetNemotronForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        assert again.config.layer_types == ours.config.layer_types
        assert torch.equal(logits(again, ids), want), name
    # the two routes write the same folder contents
    a, b = read_folder(tmp_path / "direct"), read_folder(tmp_path / "exported")
    assert a == b

    folder = tmp_path / "exported"
    torch.save(ids, folder / "ids.pt")
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = torch.load(folder / "child.pt")
    assert child["cls"].startswith("transformers_modules"), child["cls"]
    with torch.no_grad():
        assert torch.equal(child["logits"], ours(ids).logits)


def test_bf16_export_rounds_only_the_dtype(tmp_path):
    """The release stores every tensor in bf16; ours reloads that folder with the logits of our model whose
    tensors (A_log and dt_bias too) are rounded to bf16: nothing else changes."""
    from jet_nemotron import JetNemotronForCausalLM

    from convert.official_layout import export_folder

    model = tiny_model()
    model.save_pretrained(tmp_path / "ours")
    run_cli("export", tmp_path / "ours", tmp_path / "off")
    check_official_folder(tmp_path / "off")
    # sharded (the 2B model in bf16 is ~3 GB, over the 2 GB shard size): same names, shapes and dtypes
    export_folder(tmp_path / "ours", tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert read_folder(tmp_path / "sharded") == read_folder(tmp_path / "off")
    again = JetNemotronForCausalLM.from_pretrained(tmp_path / "off", dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ids = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(again, ids), logits(model, ids))


def test_official_fixture_round_trips_to_the_same_folder(tmp_path, official_tiny):
    """official -> ours -> official gives back the official config (bar the writer's transformers version) and the
    very same tensors: the export is the inverse of what our loader does with an official folder."""
    run_cli("export", official_tiny, tmp_path / "ours", "--layout", "transformers", "--dtype", "float32")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["layer_types"][:2] == ["linear_attention", "full_attention"]
    run_cli("export", tmp_path / "ours", tmp_path / "back")
    want = json.loads((official_tiny / "config.json").read_text())
    got = check_official_folder(tmp_path / "back")
    differ = {k for k in want if got.get(k) != want[k]}
    assert differ == {"transformers_version"}, {k: (got.get(k), want[k]) for k in differ}
    # the one key we add: the release's 2B config writes it, the fixture's 4.53 save left the default out
    assert set(got) - set(want) == {"tie_word_embeddings"} and got["tie_word_embeddings"] is True
    with safe_open(official_tiny / "model.safetensors", "pt") as a, \
            safe_open(tmp_path / "back" / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_model_without_attention_bias_gets_zero_biases(tmp_path):
    from jet_nemotron import JetNemotronForCausalLM

    model = tiny_model(attention_bias=False)
    model.save_pretrained(tmp_path / "ours")
    run_cli("export", tmp_path / "ours", tmp_path / "off", "--dtype", "float32")
    check_official_folder(tmp_path / "off")
    with safe_open(tmp_path / "off" / "model.safetensors", "pt") as st:
        assert not st.get_tensor("model.layers.1.self_attn.q_proj.bias").any()
    again = JetNemotronForCausalLM.from_pretrained(tmp_path / "off", dtype=torch.float32).eval()
    assert again.config.attention_bias is True
    ids = torch.randint(3, 128, (1, 30))
    assert torch.equal(logits(again, ids), logits(model, ids))


def test_distill_with_official_layout(tmp_path):
    """distill --layout official writes the official folder (fp32, the distilled student's dtype) beside the
    tokenizer and reports."""
    from convert.tiny_teacher import build_tokenizer

    text = "def add(a, b):\n    return a + b\n" * 40
    tok = build_tokenizer([text], vocab_size=300)
    qwen = tmp_path / "qwen"
    tiny_qwen("qwen2", vocab=len(tok)).save_pretrained(qwen)
    tok.save_pretrained(qwen)
    (tmp_path / "data.txt").write_text(text)
    run_cli("convert", qwen, tmp_path / "jet", "--layer-map", "jet,attn,swa,jet", "--window", "8")
    out = tmp_path / "distilled"
    run_cli("distill", out, "--teacher", qwen, "--student", tmp_path / "jet", "--data", tmp_path / "data.txt",
            "--seq-len", "32", "--stage1-steps", "1", "--batch-size", "2", "--micro-batch", "2", "--warmup", "1",
            "--layout", "official")
    assert check_official_folder(out)["torch_dtype"] == "float32"
    for name in ("tokenizer.json", "distillation.json", "README.md", "modeling_jet_nemotron.py"):
        assert (out / name).exists(), name


def test_norm_eps_and_expand_v_as_the_official_loaders_read_them():
    from convert.official_layout import eps_string, official_expand_v

    assert [eps_string(x) for x in (1e-5, "1e-6", 1e-05, 2.5e-7)] == ["1e-5", "1e-6", "1e-5", "2.5e-7"]
    # both loaders truncate with int(): the written expand_v must give dv back from dk and from H * dk
    for dk, dv, heads in ((96, 256, 12), (7, 61, 3), (128, 256, 16), (100, 333, 5)):
        e = official_expand_v(dk, dv, heads, dv / dk)
        assert int(dk * e) == dv and int(heads * dk * e) == heads * dv, (dk, dv, e)
    assert int(7 * (61 / 7)) == 60  # why the plain ratio is not enough
    assert official_expand_v(96, 256, 12, 2.6666666667) == 2.6666666667  # the release's value is kept


def test_models_the_official_layout_cannot_hold_are_refused(tmp_path, capsys):
    from conftest import tiny_config

    with pytest.raises(ValueError, match="qk_norm"):
        check_representable(tiny_config(qk_norm=True))
    with pytest.raises(ValueError, match="hidden_size / num_attention_heads"):
        check_representable(tiny_config(head_dim=32))
    # through the CLI: a Qwen3 source stops with one line and writes nothing
    src = tmp_path / "qwen3"
    tiny_qwen("qwen3", layers=4).save_pretrained(src)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--layer-map", "jet,attn,attn,jet", "--layout", "official"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: qk_norm=True") and not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert main(["export", str(src), str(out), "--layout", "sglang"]) == 1
    assert "--layout must be one of" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ acceptance 2

# Qwen2.5-Coder-1.5B-Instruct's config (the real model here; its GGUF's metadata agrees, see the test below) and
# Qwen2.5-1.5B's (the official 2B model's base). They differ in context length and EOS token only.
REAL = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
            num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, hidden_act="silu",
            initializer_range=0.02)
BASE = dict(REAL, max_position_embeddings=131072, eos_token_id=151643)


def export_2b_on_meta(source: dict) -> tuple[dict, dict]:
    """The jet-nemotron-2b preset conversion of a source with these config facts, on meta tensors; the official
    config and {name: (shape, dtype)} the export writes."""
    from jet_nemotron import JetNemotronForCausalLM

    from convert.layer_map import resolve_layer_map
    from convert.qwen_to_jet import build_jet_config, convert_state_dict

    cfg = Qwen2Config(**source)
    with torch.device("meta"):
        src = Qwen2ForCausalLM(cfg)
    jcfg = build_jet_config(cfg, resolve_layer_map("jet-nemotron-2b"))
    converted = convert_state_dict(src.state_dict(), cfg, jcfg)
    with torch.device("meta"):
        model = JetNemotronForCausalLM(jcfg)
    assert {n: t.shape for n, t in model.state_dict().items()} == {n: t.shape for n, t in converted.items()}
    sd = official_state_dict(model, torch.bfloat16)
    return official_config(jcfg, torch.bfloat16), {n: (tuple(t.shape), t.dtype) for n, t in sd.items()}


@pytest.mark.parametrize("source,differ", [(BASE, set()), (REAL, {"max_position_embeddings", "eos_token_id"})],
                         ids=["qwen2.5-1.5b", "qwen2.5-coder-1.5b-instruct"])
def test_2b_preset_exports_the_official_2b_config_and_shapes(source, differ):
    config, tensors = export_2b_on_meta(source)
    official = FORMAT["official_2b_config"]["config"]
    shared = set(config) & set(official)
    assert shared >= set(official) - {"transformers_version"}  # we write every field the release writes
    got = {k for k in shared if config[k] != official[k]}
    assert got == differ | {"transformers_version"}, {k: (config[k], official[k]) for k in got}
    for k in differ:  # those come from the source, not from the export
        assert config[k] == source[k]

    shapes = {n: s for n, (s, _) in tensors.items()}
    assert {d for _, d in tensors.values()} == {torch.bfloat16}
    # REFERENCE.md's 2B JetBlock: 12 heads, dk 96, dv 256, conv 4, generator 3072 / 8 = 384
    jet = "model.layers.0.self_attn."
    assert shapes[jet + "q_proj.weight"] == shapes[jet + "k_proj.weight"] == (1152, 1536)
    assert shapes[jet + "v_proj.weight"] == shapes[jet + "g_proj.weight"] == (3072, 1536)
    assert shapes[jet + "a_proj.weight"] == shapes[jet + "b_proj.weight"] == (12, 1536)
    assert shapes[jet + "o_proj.weight"] == (1536, 3072) and shapes[jet + "o_norm.weight"] == (256,)
    assert shapes[jet + "A_log"] == shapes[jet + "dt_bias"] == (12,)
    gen = jet + "dynamic_conv1d.kernel_generator."
    assert shapes[gen + "w1.weight"] == (384, 1536) and shapes[gen + "w2.weight"] == (12288, 384)
    assert shapes[gen + "w2.bias"] == (12288,)
    for i in (14, 19, 20, 21):  # attn and swa: Qwen2.5-1.5B's attention, head 128, 12 q / 2 kv heads
        a = f"model.layers.{i}.self_attn."
        assert shapes[a + "q_proj.weight"] == (1536, 1536) and shapes[a + "q_proj.bias"] == (1536,)
        assert shapes[a + "k_proj.weight"] == shapes[a + "v_proj.weight"] == (256, 1536)
        assert shapes[a + "o_proj.weight"] == (1536, 1536) and a + "g_proj.weight" not in shapes
    assert "lm_head.weight" not in shapes and shapes["model.embed_tokens.weight"] == (151936, 1536)
    # and both loaders' names and shapes
    check_config_fields(config, FORMAT["sglang"])
    check_config_fields(config, FORMAT["official_hf"])
    sglang_load({n: (s, None) for n, s in shapes.items()}, config)
    assert shapes == expected_params(FORMAT["official_hf"], config)


def test_real_model_facts_match_its_gguf():
    """The REAL facts above against the real GGUF's metadata, where it has been downloaded (~13 s: gguf parses the
    whole 151,936-token vocabulary to reach the header)."""
    path = Path(os.environ.get("JET_NEMOTRON_REAL_GGUF", "/work/realmodel/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    gguf = pytest.importorskip("gguf")
    if not path.exists():
        pytest.skip(f"{path} is not here")
    fields = gguf.GGUFReader(path).fields
    meta = {k: fields[k].contents() for k in ("qwen2.block_count", "qwen2.context_length", "qwen2.embedding_length",
                                              "qwen2.feed_forward_length", "qwen2.attention.head_count",
                                              "qwen2.attention.head_count_kv", "qwen2.rope.freq_base",
                                              "qwen2.attention.layer_norm_rms_epsilon",
                                              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}
    assert meta["qwen2.block_count"] == REAL["num_hidden_layers"]
    assert meta["qwen2.context_length"] == REAL["max_position_embeddings"]
    assert meta["qwen2.embedding_length"] == REAL["hidden_size"]
    assert meta["qwen2.feed_forward_length"] == REAL["intermediate_size"]
    assert meta["qwen2.attention.head_count"] == REAL["num_attention_heads"]
    assert meta["qwen2.attention.head_count_kv"] == REAL["num_key_value_heads"]
    assert meta["qwen2.rope.freq_base"] == REAL["rope_theta"]
    assert meta["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(REAL["rms_norm_eps"])
    assert meta["tokenizer.ggml.bos_token_id"] == REAL["bos_token_id"]
    assert meta["tokenizer.ggml.eos_token_id"] == REAL["eos_token_id"]
