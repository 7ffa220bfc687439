"""Bad input: a clear error naming the problem, and no output folder left behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from convert.cli import main
from convert.data import check_tokenizer_fits, pack_documents
from convert.layer_map import parse_spec, resolve_layer_map
from convert.qwen_to_jet import SourceDims, convert_model

from test_convert_conversion import tiny_qwen


@pytest.fixture
def qwen_dir(tmp_path):
    d = tmp_path / "qwen"
    tiny_qwen("qwen2").save_pretrained(d)
    return d


def _no_output(tmp_path, out):
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "a temporary folder was left behind"


def test_cli_converts_and_refuses_to_overwrite(tmp_path, qwen_dir):
    out = tmp_path / "jet"
    assert main(["convert", str(qwen_dir), str(out), "--layer-map", "jet,attn,swa,jet", "--window", "8"]) == 0
    assert (out / "config.json").exists() and (out / "README.md").exists() and (out / "model.safetensors").exists()
    assert main(["convert", str(qwen_dir), str(out), "--layer-map", "all-attn"]) == 1


def test_unsupported_architecture(tmp_path, capsys):
    d = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4)).save_pretrained(d)
    out = tmp_path / "out"
    assert main(["convert", str(d), str(out), "--layer-map", "all-attn"]) == 1
    assert "unsupported source architecture: model_type 'llama'" in capsys.readouterr().err
    _no_output(tmp_path, out)


@pytest.mark.parametrize("damage,message", [
    ("missing", "is missing tensor model.layers.2.self_attn.k_proj.weight (layer 2)"),
    ("shape", "model.layers.2.self_attn.k_proj.weight has shape (16, 64), expected (32, 64) (layer 2)"),
])
def test_missing_or_misshaped_tensor(tmp_path, qwen_dir, capsys, damage, message):
    sd = load_file(qwen_dir / "model.safetensors")
    name = "model.layers.2.self_attn.k_proj.weight"
    if damage == "missing":
        del sd[name]
    else:
        sd[name] = sd[name][:16].contiguous()
    src = tiny_qwen("qwen2")
    with pytest.raises((KeyError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        from convert.qwen_to_jet import build_jet_config, convert_state_dict

        convert_state_dict(sd, src.config, build_jet_config(src.config, parse_spec("all-jet", 4)))


@pytest.mark.parametrize("spec,message", [
    ("jet,attn,jet", "has 3 layers but the source model (qwen2) has 4"),
    ("jet,attn,mamba,jet", "layer 2 has unknown type 'mamba'"),
    ("attn:9", "layer index 9 is outside 0..3"),
    ("jet,swa,jet,jet", "sliding-window layers [1] but no window size"),
])
def test_bad_layer_map(tmp_path, qwen_dir, capsys, spec, message):
    out = tmp_path / "out"
    assert main(["convert", str(qwen_dir), str(out), "--layer-map", spec]) == 1
    assert message in capsys.readouterr().err
    _no_output(tmp_path, out)


def test_bad_layer_map_json(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"format": "jet-nemotron-layer-map/v1", "num_layers": 5, "layer_types": ["jet"] * 4}))
    with pytest.raises(ValueError, match="num_layers is 5 but layer_types has 4"):
        resolve_layer_map(str(p))
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_layer_map(str(p))


def test_tokenizer_that_does_not_fit(tmp_path):
    from convert.tiny_teacher import build_tokenizer

    tok = build_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model embeds only 101"):
        check_tokenizer_fits(tok, 101, "model")
    from convert.export import write_folder

    model = convert_model(tiny_qwen("qwen2"), parse_spec("all-attn", 4))
    with pytest.raises(ValueError, match="embeds only 101"):
        write_folder(tmp_path / "out", model, tok)
    _no_output(tmp_path, tmp_path / "out")


def test_empty_or_too_short_data(tmp_path):
    from convert.tiny_teacher import build_tokenizer

    tok = build_tokenizer(["def f(x):\n    return x + 1\n" * 50], vocab_size=300)
    with pytest.raises(ValueError, match="no non-empty document"):
        pack_documents([("a.txt", ""), ("b.txt", "  \n")], tok, 16)
    with pytest.raises(ValueError, match="the data is too short"):
        pack_documents([("a.txt", "x = 1\n")], tok, 16, min_train_rows=4)


def test_distill_cli_rejects_short_data_without_output(tmp_path, capsys):
    from convert.tiny_teacher import build_tokenizer

    qwen_dir = tmp_path / "qwen"
    tiny_qwen("qwen2", vocab=300).save_pretrained(qwen_dir)
    conv = tmp_path / "jet"
    assert main(["convert", str(qwen_dir), str(conv), "--layer-map", "jet,attn,jet,jet"]) == 0
    tok = build_tokenizer(["x = 1\n" * 20], vocab_size=300)
    tok.save_pretrained(conv)
    (tmp_path / "d.txt").write_text("x = 1\n")
    out = tmp_path / "distilled"
    assert main(["distill", str(out), "--teacher", str(qwen_dir), "--student", str(conv), "--data",
                 str(tmp_path / "d.txt"), "--seq-len", "64", "--stage1-steps", "2", "--batch-size", "4",
                 "--micro-batch", "4"]) == 1
    assert "the data is too short" in capsys.readouterr().err
    _no_output(tmp_path, out)


def test_source_dims_reject_qwen3_with_o_bias():
    from transformers import Qwen3Config

    with pytest.raises(ValueError, match="o_proj bias"):
        SourceDims.from_config(Qwen3Config(attention_bias=True))


def test_push_dry_run_lists_exact_files(tmp_path, qwen_dir, capsys):
    out = tmp_path / "jet"
    assert main(["convert", str(qwen_dir), str(out), "--layer-map", "all-attn"]) == 0
    (out / ".cache").mkdir()
    (out / ".cache" / "x").write_text("junk")
    assert main(["push", str(out), "me/jet-test", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "model.safetensors" in text and "config.json" in text and ".cache" not in text
    assert "would upload" in text


def _converted_tiny_with_data(tmp_path):
    """(a tiny Qwen2 folder with its tokenizer, its conversion); tmp_path/data.jsonl holds code rows."""
    import json as _json

    from convert.tiny_teacher import build_tokenizer

    text = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 1\n" * 60
    tok = build_tokenizer([text], vocab_size=300)
    qwen_dir = tmp_path / "qwen"
    tiny_qwen("qwen2", vocab=len(tok)).save_pretrained(qwen_dir)
    tok.save_pretrained(qwen_dir)
    (tmp_path / "data.jsonl").write_text("\n".join(_json.dumps({"text": text[i:i + 300]})
                                                   for i in range(0, len(text), 300)))
    conv = tmp_path / "jet"
    assert main(["convert", str(qwen_dir), str(conv), "--layer-map", "jet,attn,swa,jet", "--window", "8"]) == 0
    return qwen_dir, conv


def test_cli_distill_end_to_end_with_resume(tmp_path):
    """convert -> distill (both stages, checkpoints) -> a folder that reloads; a second run resumes."""
    import json as _json

    from transformers import AutoModelForCausalLM

    qwen_dir, conv = _converted_tiny_with_data(tmp_path)
    out = tmp_path / "distilled"
    args = ["distill", str(out), "--teacher", str(qwen_dir), "--student", str(conv), "--data",
            str(tmp_path / "data.jsonl"), "--seq-len", "32", "--stage1-steps", "4", "--stage2-steps", "2",
            "--batch-size", "4", "--micro-batch", "2", "--warmup", "1", "--save-every", "2"]
    assert main(args) == 0
    for name in ("README.md", "loss_curve.png", "distillation.json", "config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    report = _json.loads((out / "distillation.json").read_text())
    assert report["kl_after"] < report["kl_before"]
    assert "| this model |" in (out / "README.md").read_text()
    assert (tmp_path / "distilled.ckpt" / "stage1" / "step_2" / "progress.json").exists()
    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert (tmp_path / "distilled.ckpt" / "stage2" / "step_2" / "progress.json").exists()  # finished stage
    assert main(args + ["--resume", "--overwrite"]) == 0  # both stages are complete: nothing is retrained
    again = _json.loads((out / "distillation.json").read_text())
    assert again["ppl_student"] == report["ppl_student"]


def test_cli_time_budget_makes_the_steps_caps_and_the_last_stage_fills_what_is_left(tmp_path):
    import json as _json

    qwen_dir, conv = _converted_tiny_with_data(tmp_path)
    out = tmp_path / "distilled"
    base = ["distill", str(out), "--teacher", str(qwen_dir), "--student", str(conv), "--data",
            str(tmp_path / "data.jsonl"), "--seq-len", "32", "--stage1-steps", "3", "--stage2-steps", "100000",
            "--batch-size", "4", "--micro-batch", "2", "--warmup", "1"]
    assert main(base + ["--time-budget-min", "0"]) == 1  # refused before anything loads
    assert not out.exists()
    assert main(base + ["--time-budget-min", "0.25"]) == 0
    stages = _json.loads((out / "distillation.json").read_text())["stages"]
    assert [s["steps"] for s in stages][0] == 3  # stage 1 reached its cap inside the budget
    two = stages[1]
    assert 10 <= two["steps"] < 100_000 and two["step_budget"]["cap"] == 100_000
    assert two["step_budget"]["seconds"] <= 15 - 10  # what stage 1 and the reserve left of 15 s
    assert len(two["history"]) == two["steps"]


def test_cli_time_split_ends_each_stage_by_its_running_share_of_the_budget(tmp_path, monkeypatch):
    import json as _json
    from dataclasses import replace

    import convert.pipeline as pipeline
    from convert.step_budget import RESERVE_S

    qwen_dir, conv = _converted_tiny_with_data(tmp_path)
    seen, real = [], pipeline.distill

    def two_steps(student, teacher, sampler, cfg, *a, **k):  # the deadline each stage is given, then a short run
        seen.append(cfg.time_budget_s)
        return real(student, teacher, sampler, replace(cfg, steps=2, time_budget_s=None), *a, **k)

    monkeypatch.setattr(pipeline, "distill", two_steps)
    base = ["distill", "--teacher", str(qwen_dir), "--student", str(conv), "--data", str(tmp_path / "data.jsonl"),
            "--seq-len", "32", "--stage1-steps", "1000", "--stage2-steps", "1000", "--batch-size", "4",
            "--micro-batch", "2", "--warmup", "1", "--time-budget-min", "2"]
    assert main([*base, str(tmp_path / "split"), "--time-split", "0.7,0.3"]) == 0
    one, two = seen
    # stage 1 ends by 70% of 120 s less the reserve for its held-out measurement; stage 2 by the whole budget
    assert 84 - RESERVE_S - 30 < one <= 84 - RESERVE_S and 120 - RESERVE_S - 30 < two <= 120 - RESERVE_S
    assert [s["steps"] for s in _json.loads((tmp_path / "split" / "distillation.json").read_text())["stages"]] == [2, 2]
    seen.clear()
    assert main([*base, str(tmp_path / "caps")]) == 0  # without a split every stage may use the whole budget
    assert seen[0] > 84 - RESERVE_S


def test_cli_micro_batch2_sets_the_rows_a_forward_of_stages_2_and_3_only(tmp_path, monkeypatch):
    import convert.pipeline as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "distill_checkpoint", lambda *a, **k: seen.update(k))
    base = ["distill", str(tmp_path / "out"), "--teacher", "t", "--student", "s", "--data", "d", "--batch-size", "16",
            "--micro-batch", "8", "--stage2-steps", "3", "--stage3-steps", "1"]
    assert main(base + ["--micro-batch2", "2"]) == 0
    assert [seen[k].micro_batch for k in ("stage1", "stage2", "stage3")] == [8, 2, 2]
    assert main(base) == 0  # by default every stage takes --micro-batch (stage 3 at most its own batch)
    assert [seen[k].micro_batch for k in ("stage1", "stage2", "stage3")] == [8, 8, 4]
    assert seen["stage3"].batch_size == 4  # 16 rows of 2,048 tokens a step = 4 of 8,192
    assert main(base + ["--batch-size2", "32", "--micro-batch2", "4"]) == 0  # stage 2's own batch; stage 3 follows it
    assert [seen[k].batch_size for k in ("stage1", "stage2", "stage3")] == [16, 32, 8]


def test_cli_frozen_bf16_holds_every_stages_frozen_weights_in_bf16(tmp_path, monkeypatch):
    """--frozen-bf16 (run l's recipe: stage 2 with frozen MLPs) reaches each stage's config; off by default."""
    import convert.pipeline as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "distill_checkpoint", lambda *a, **k: seen.update(k))
    base = ["distill", str(tmp_path / "out"), "--teacher", "t", "--student", "s", "--data", "d", "--stage2-steps", "3",
            "--stage3-steps", "1", "--bf16", "--train2", "non-mlp"]
    assert main(base + ["--frozen-bf16"]) == 0
    assert [seen[k].frozen_bf16 for k in ("stage1", "stage2", "stage3")] == [True, True, True]
    assert main(base) == 0
    assert [seen[k].frozen_bf16 for k in ("stage1", "stage2", "stage3")] == [False, False, False]
    assert [seen[k].residual_bf16 for k in ("stage1", "stage2", "stage3")] == [False, False, False]
    assert main(base + ["--residual-bf16"]) == 0  # every stage's config; attention transfer has no residual stream
    assert [seen[k].residual_bf16 for k in ("stage1", "stage2", "stage3")] == [True, True, True]


def test_the_readme_spells_out_the_15min_recipe_as_it_is():
    """The README's usage writes --recipe 15min out as flags: each one is the recipe's value, and the recipe's keys it
    leaves out are the CLI's defaults (lr1, stage3_steps); a recipe change the README misses fails here (its
    `--train2` said non-mlp after the recipe had taken mixers)."""
    from convert.recipes import RECIPES

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("add `--recipe 15min`,", 1)[1].split("(the steps are", 1)[0]
    words = re.sub(r"\s*#\s*", " ", block).replace("which stands for", "").split()
    flags, i = {}, 0
    while i < len(words):
        key = words[i].removeprefix("--").replace("-", "_")
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[key], i = words[i + 1], i + 2
        else:
            flags[key], i = True, i + 1
    recipe = RECIPES["15min"]
    assert set(recipe) - set(flags) == {"lr1", "stage3_steps"} and set(flags) <= set(recipe), sorted(flags)
    for key, value in flags.items():
        want = recipe[key]
        got = value if isinstance(value, bool) or isinstance(want, str) else type(want)(float(value))
        assert got == want, (key, value, want)


def test_cli_recipe_15min_is_the_measured_variant_and_a_given_flag_wins(tmp_path, monkeypatch, capsys):
    """--recipe 15min gives each stage the settings of the variant that run p measured (runs l and m's with the
    residual stream in bf16 and stage 2 training the token mixers and norms: benchmarks/variants/
    acceptance_v13_15min.json over distill_variants' BASE); a flag on the command line wins."""
    import sys as _sys

    import convert.pipeline as pipeline

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    _sys.path.insert(0, str(bench))
    from distill_variants import BASE

    (variant,) = json.loads((bench / "variants" / "acceptance_v13_15min.json").read_text())
    v = BASE | variant
    seen = {}
    monkeypatch.setattr(pipeline, "distill_checkpoint", lambda *a, **k: seen.update(k))
    base = ["distill", str(tmp_path / "out"), "--teacher", "t", "--student", "s", "--data", "d", "--recipe", "15min"]
    assert main(base) == 0
    s1, s2, s3 = seen["stage1"], seen["stage2"], seen["stage3"]
    assert [s1.steps, s2.steps, s3.steps] == v["steps"]
    assert seen["time_split"] == v["split"][:2] and seen["time_budget_s"] == v["budget_s"]
    assert s1.batch_size == s2.batch_size == v["batch_size"] and v["batch_size2"] is None
    assert [s1.lr, s2.lr] == v["lr"][:2] and s2.jet_lr == v["jet_lr2"] and s1.mse_weight == v["mse_weight"]
    assert s1.train == "jet" and s1.resolved().local is v["local1"] and s2.train == v["train2"] == "mixers"
    assert s1.warmup_steps == s2.warmup_steps == 30  # distill_variants' warm-up
    assert s2.frozen_bf16 is v["frozen_bf16"] and s2.fused_adam is v["fused_adam"] and s2.mixed_precision == "bf16"
    assert s2.residual_bf16 is v["residual_bf16"] is True
    assert s2.kl_top1 == s3.kl_top1 == v["kl_top1"] and s2.kl_focus == s3.kl_focus == v["kl_focus"]
    r = seen["retrieval"]
    assert (r["ratio"], r["kinds"], r["chat_ratio"], r["chat_file"]) == \
        (v["retrieval_ratio"], v["retrieval_kinds"], v["chat_ratio"], v["chat_file"])
    assert [s1.micro_batch, s2.micro_batch] == [8, 4]  # 4 rows a forward in stage 2 fit an 80 GB card
    assert "recipe 15min: " in capsys.readouterr().out
    assert not (s1.teacher_fp8 or s2.teacher_fp8 or s3.teacher_fp8) and v["teacher_fp8"] == []
    assert main(base + ["--micro-batch2", "8", "--lr2", "1e-5", "--no-fused-adam", "--kl-top1", "0.2",
                        "--teacher-fp8", "1", "--no-residual-bf16", "--kl-focus", "2"]) == 0
    assert seen["stage1"].teacher_fp8 and not (seen["stage2"].teacher_fp8 or seen["stage3"].teacher_fp8)
    assert seen["stage2"].micro_batch == 8 and seen["stage2"].lr == 1e-5 and seen["stage2"].fused_adam is False
    assert seen["stage2"].kl_top1 == seen["stage3"].kl_top1 == 0.2 and seen["stage1"].kl_top1 == 0
    assert seen["stage2"].kl_focus == seen["stage3"].kl_focus == 2.0 and seen["stage1"].kl_focus == 0
    assert seen["stage2"].jet_lr == 1e-4  # the rest still the recipe's
    assert seen["stage2"].residual_bf16 is False
    out = capsys.readouterr().out
    assert "--fused-adam" not in out.split(";")[0] and "given here instead: --fused-adam, --lr2, --micro-batch2" in out
