"""Bad input across the CLI and the library (issue 17): every case must end in one clear line naming the file,
tensor, layer or flag, and leave every folder it could touch exactly as it was (hashed before and after).

One workspace per module (a tiny Qwen2 teacher with a tokenizer, its conversion, a data file and one finished
two-step distillation with checkpoints) is shared by all cases; a case that needs a damaged input damages a
copy in its own folder, which is hashed too.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert.cli import main

from test_convert_conversion import tiny_qwen

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 1\n" * 40


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file and '<dir>' of every folder under root (hidden ones included)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The shared workspace: q (teacher + tokenizer), jet (converted), data.jsonl, run (distilled) + run.ckpt."""
    from convert.export import write_folder
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model
    from convert.tiny_teacher import build_tokenizer

    root = tmp_path_factory.mktemp("bad_input")
    tok = build_tokenizer([TEXT], vocab_size=300)
    teacher = tiny_qwen("qwen2", vocab=300)  # the tokenizer has fewer (290): ids always fit
    teacher.save_pretrained(root / "q")
    tok.save_pretrained(root / "q")
    write_folder(root / "jet", convert_model(teacher, parse_spec("jet,attn,swa,jet"), window=8), tok)
    (root / "data.jsonl").write_text("\n".join(json.dumps({"text": TEXT[i:i + 200]}) for i in range(0, len(TEXT), 200)))
    (root / "other.jsonl").write_text((root / "data.jsonl").read_text() + "\n" + json.dumps({"text": TEXT[:100]}))
    assert main(distill_args(root, "run")) == 0
    assert sorted(p.name for p in (root / "run.ckpt" / "stage1").iterdir()) == ["step_1", "step_2"]
    return root


def distill_args(ws: Path, out: str, *extra: str) -> list[str]:
    return ["distill", str(ws / out), "--teacher", str(ws / "q"), "--student", str(ws / "jet"), "--data",
            str(ws / "data.jsonl"), "--seq-len", "16", "--stage1-steps", "2", "--batch-size", "2", "--micro-batch",
            "2", "--warmup", "1", "--save-every", "1", *extra]


@pytest.fixture
def refused(capsys, ws):
    """refused(argv, message, *other_roots): exit status 1, exactly one 'error:' line holding `message`, no
    traceback, and the workspace and `other_roots` byte-identical afterwards."""

    def run(argv: list[str], message: str, *roots: Path) -> str:
        roots = (ws, *roots)
        before = [tree(r) for r in roots]
        capsys.readouterr()
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 1, err[-2000:]
        assert "Traceback" not in err and len(lines) == 1, err[-2000:]
        assert message in lines[0], lines[0]
        for r, b in zip(roots, before):
            assert tree(r) == b, f"{r} changed: {sorted(set(tree(r).items()) ^ set(b.items()))[:4]}"
        return lines[0]

    return run


@pytest.fixture
def lib_refuses(ws):
    """lib_refuses(fn, exception, message, *roots): `fn()` raises `exception` whose text holds `message`;
    nothing under the workspace or `roots` changed."""

    def run(fn, exc, message: str, *roots: Path):
        roots = (ws, *roots)
        before = [tree(r) for r in roots]
        with pytest.raises(exc) as info:
            fn()
        text = info.value.args[0] if isinstance(info.value, KeyError) else str(info.value)
        assert message in text, text
        assert "\n" not in text.strip(), text
        for r, b in zip(roots, before):
            assert tree(r) == b
        return text

    return run


def _damaged_copy(ws: Path, name: str, dst: Path, damage) -> tuple[Path, str]:
    """A copy of the workspace folder `name` with `damage` = (edit, expected message) applied to it."""
    make, message = damage
    folder = _copy(ws, name, dst)
    make(folder)
    return folder, message


def _copy(ws: Path, name: str, dst: Path) -> Path:
    shutil.copytree(ws / name, dst / name)
    return dst / name


def _edit_weights(folder: Path, fn) -> None:
    sd = load_file(folder / "model.safetensors")
    fn(sd)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _set(name: str, index, value: float):
    def f(sd):
        sd[name] = sd[name].clone()
        sd[name].view(-1)[index] = value
    return f


# ------------------------------------------------------------------------------------------- convert: the source

def _truncate(folder: Path):
    b = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(b[: len(b) // 2])


def _index_with_missing_shard(folder: Path):
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))


SOURCE_DAMAGE = {
    # issue 17.1: transformers initialised these at random and convert exited 0
    "missing-mlp": (lambda d: _edit_weights(d, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight")),
                    "is missing 1 tensor(s): model.layers.1.mlp.up_proj.weight (layer 1)"),
    "missing-final-norm": (lambda d: _edit_weights(d, lambda sd: sd.pop("model.norm.weight")),
                           "is missing 1 tensor(s): model.norm.weight"),
    "misshaped": (lambda d: _edit_weights(d, lambda sd: sd.update({
        "model.layers.2.self_attn.k_proj.weight": sd["model.layers.2.self_attn.k_proj.weight"][:16].clone()})),
        "tensor model.layers.2.self_attn.k_proj.weight (layer 2) in model.safetensors has shape (16, 64), the "
        "config implies (32, 64)"),
    "unexpected": (lambda d: _edit_weights(d, lambda sd: sd.update({"model.layers.0.mlp.extra.weight": torch.ones(2)})),
                   "does not use: model.layers.0.mlp.extra.weight (layer 0)"),
    # issue 17.2: NaN / Inf were copied into the converted model
    "nan": (lambda d: _edit_weights(d, _set("model.layers.3.mlp.down_proj.weight", 5, math.nan)),
            "tensor model.layers.3.mlp.down_proj.weight (layer 3) has 1 non-finite value(s) (NaN among them)"),
    "inf": (lambda d: _edit_weights(d, _set("model.embed_tokens.weight", 0, math.inf)),
            "tensor model.embed_tokens.weight has 1 non-finite value(s) (Inf among them)"),
    # issue 17.4: SafetensorError traceback that named no file
    "truncated": (_truncate, "model.safetensors cannot be read (truncated or not safetensors?)"),
    "index-missing-shard": (_index_with_missing_shard, "names shard(s) ['model-00002-of-00002.safetensors']"),
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), "has no weights (*.safetensors or *.bin)"),
    "broken-config": (lambda d: (d / "config.json").write_text("{not json"), "config.json cannot be read as a model config"),
    "no-config": (lambda d: (d / "config.json").unlink(), "has no config.json"),
    # issue 17.6: zero / negative head counts ended in ZeroDivisionError or "negative dimension"
    "zero-heads": (lambda d: _edit_config(d, num_attention_heads=0), "num_attention_heads = 0 must be a positive integer"),
    "negative-heads": (lambda d: _edit_config(d, num_attention_heads=-4),
                       "num_attention_heads = -4 must be a positive integer"),
    "kv-heads-not-divisor": (lambda d: _edit_config(d, num_key_value_heads=3), "num_key_value_heads = 3 must be a "
                                                                              "positive divisor of num_attention_heads = 4"),
    "negative-kv-heads": (lambda d: _edit_config(d, num_key_value_heads=-2), "num_key_value_heads = -2"),
    "config-hidden-mismatch": (lambda d: _edit_config(d, hidden_size=32),
                               "tensor model.embed_tokens.weight in model.safetensors has shape (300, 64), the config "
                               "implies (300, 32)"),
    "config-more-layers": (lambda d: _edit_config(d, num_hidden_layers=5, layer_types=["full_attention"] * 5),
                           "tensor(s): model.layers.4.input_layernorm.weight (layer 4)"),
    "llama": (lambda d: _edit_config(d, model_type="llama", architectures=["LlamaForCausalLM"]),
              "unsupported source architecture: model_type 'llama'"),
}


@pytest.mark.parametrize("damage", sorted(SOURCE_DAMAGE))
def test_convert_refuses_a_damaged_source(ws, tmp_path, refused, damage):
    src, message = _damaged_copy(ws, "q", tmp_path, SOURCE_DAMAGE[damage])
    out = tmp_path / "out"
    refused(["convert", src, out, "--layer-map", "jet,attn,swa,jet", "--window", "8", "--dtype", "float32"], message,
            tmp_path)


# ---------------------------------------------------------------------------------------- convert: maps and flags

def _map_file(ws, tmp_path, content) -> Path:
    p = tmp_path / "map.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


CONVERT_FLAGS = {
    "window-zero": (["--layer-map", "jet,attn,swa,jet", "--window", "0"], "--window must be >= 1 (tokens), got 0"),
    "window-negative": (["--layer-map", "jet,attn,swa,jet", "--window", "-4"], "--window must be >= 1"),
    "window-without-swa": (["--layer-map", "all-jet", "--window", "8"], "--window 8 was given but layer map spec "
                                                                        "'all-jet' has no sliding-window"),
    "dtype-float8": (["--layer-map", "all-attn", "--dtype", "float8"], "--dtype 'float8' is not supported; allowed: "
                                                                       "['float32', 'bfloat16', 'float16']"),
    "init-unknown": (["--layer-map", "all-jet", "--init", "zeros"], "--init 'zeros' is not a JetBlock init scheme"),
    "jet-heads-zero": (["--layer-map", "all-jet", "--jet-heads", "0"], "JetBlock num_heads (--jet-heads) must be a "
                                                                       "positive number, got 0"),
    "jet-heads-negative": (["--layer-map", "all-jet", "--jet-heads", "-2"], "num_heads (--jet-heads)"),
    "jet-head-dim-zero": (["--layer-map", "all-jet", "--jet-head-dim", "0"], "head_dim (--jet-head-dim)"),
    "expand-v-zero": (["--layer-map", "all-jet", "--expand-v", "0"], "expand_v (--expand-v)"),
    "expand-v-fractional": (["--layer-map", "all-jet", "--jet-head-dim", "16", "--expand-v", "1.3"],
                            "not a whole value-head dimension"),
    "conv-size-zero": (["--layer-map", "all-jet", "--conv-size", "0"], "conv_size (--conv-size)"),
    "reduction-zero": (["--layer-map", "all-jet", "--generator-reduction", "0"],
                       "dconv_generator_reduction (--generator-reduction)"),
    "reduction-too-large": (["--layer-map", "all-jet", "--generator-reduction", "100000"], "leaves no generator width"),
    "map-too-short": (["--layer-map", "jet,attn,jet"], "has 3 layers but the source model (qwen2) has 4"),
    "map-unknown-type": (["--layer-map", "jet,attn,mamba,jet"], "layer 2 has unknown type 'mamba'"),
    "map-index-outside": (["--layer-map", "attn:9"], "layer index 9 is outside 0..3"),
    "map-swa-no-window": (["--layer-map", "jet,swa,jet,jet"], "sliding-window layers [1] but no window size"),
    # issue 17.8: contradictory placements were accepted, the last one winning
    "map-layer-twice": (["--layer-map", "attn:1,1 swa:1"], "layer 1 is placed twice (attn and attn)"),
    "map-two-kinds": (["--layer-map", "attn:1 swa:1", "--window", "8"], "layer 1 is placed twice (attn and swa)"),
    "map-overlapping-ranges": (["--layer-map", "attn:0-2 swa:2-3", "--window", "8"], "layer 2 is placed twice"),
    "map-bad-count": (["--layer-map", "jet*x,attn"], "repeat count in 'jet*x' is not a number"),
    "map-empty-range": (["--layer-map", "attn:3-1"], "empty range '3-1'"),
    "map-bad-index": (["--layer-map", "attn:a"], "'a' is not a layer index"),
    "map-json-broken": (["--layer-map", "{tmp}/map.json", "@{broken"], "not valid JSON"),
    "map-json-count": (["--layer-map", "{tmp}/map.json", "@count"], "num_layers is 5 but layer_types has 4 entries"),
    "map-json-format": (["--layer-map", "{tmp}/map.json", "@format"], "format 'v0' is not 'jet-nemotron-layer-map/v1'"),
    "map-json-no-types": (["--layer-map", "{tmp}/map.json", "@notypes"], "expected an object with 'layer_types'"),
    "map-json-jet-key": (["--layer-map", "{tmp}/map.json", "@jetkey"], "unknown JetBlock size keys ['heads']"),
    "map-json-window-zero": (["--layer-map", "{tmp}/map.json", "@window0"], "swa.window_size must be >= 1, got 0"),
    "map-json-missing": (["--layer-map", "{tmp}/nowhere.json"], "layer map file"),
}
MAP_FILES = {
    "{broken": "{not json",
    "count": {"num_layers": 5, "layer_types": ["jet"] * 4},
    "format": {"format": "v0", "layer_types": ["jet"] * 4},
    "notypes": {"jet": {}},
    "jetkey": {"layer_types": ["jet"] * 4, "jet": {"heads": 2}},
    "window0": {"layer_types": ["jet", "swa", "jet", "jet"], "swa": {"window_size": 0}},
}


@pytest.mark.parametrize("case", sorted(CONVERT_FLAGS))
def test_convert_refuses_bad_flags_and_maps(ws, tmp_path, refused, case):
    flags, message = CONVERT_FLAGS[case]
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if flags[-1].startswith("@"):
        _map_file(ws, tmp_path, MAP_FILES[flags.pop()[1:]])
    refused(["convert", ws / "q", tmp_path / "out", *flags], message, tmp_path)


def test_convert_refuses_an_existing_output(ws, refused):
    refused(["convert", ws / "q", ws / "jet", "--layer-map", "all-attn"], "output folder")


def test_convert_never_writes_over_its_source(ws, refused):
    # issue 17.5: `convert src src --overwrite` replaced its own source
    refused(["convert", ws / "q", ws / "q", "--layer-map", "all-attn", "--overwrite"], "overlaps the source")


def test_convert_never_replaces_a_folder_holding_its_source(ws, refused):
    refused(["convert", ws / "q", ws, "--layer-map", "all-attn", "--overwrite"], "overlaps the source")


def test_convert_names_a_source_that_is_not_there(ws, refused):
    refused(["convert", ws / "nowhere", ws / "out", "--layer-map", "all-attn"], "is neither a local folder/file nor")


def test_convert_names_a_missing_gguf_file(ws, refused):
    refused(["convert", ws / "q", ws / "out", "--layer-map", "all-attn", "--gguf-file", "m.gguf"],
            f"GGUF file {ws / 'q' / 'm.gguf'} does not exist")


def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing(ws, tmp_path, refused, monkeypatch):
    # issue 17.4: a full disk ended in a traceback
    from jet_nemotron import JetNemotronForCausalLM

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))

    monkeypatch.setattr(JetNemotronForCausalLM, "save_pretrained", full)
    refused(["convert", ws / "q", tmp_path / "out", "--layer-map", "all-attn"], "No space left on device", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------- distill

def _student(ws, tmp_path, damage) -> Path:
    s = _copy(ws, "jet", tmp_path)
    damage(s)
    return s


STUDENT_DAMAGE = {
    # issue 17.4: "layer_types": 7 was a TypeError traceback
    "layer-types-int": (lambda d: _edit_config(d, layer_types=7), "layer_types must be a list of layer type names"),
    "broken-config": (lambda d: (d / "config.json").write_text("{"), "config.json cannot be read as a model config"),
    "truncated": (_truncate, "model.safetensors cannot be read"),
    "nan": (lambda d: _edit_weights(d, _set("model.layers.0.self_attn.q_proj.weight", 3, math.nan)),
            "jet: tensor model.layers.0.self_attn.q_proj.weight (layer 0) has 1 non-finite value(s)"),
    "missing-tensor": (lambda d: _edit_weights(d, lambda sd: sd.pop("model.layers.3.self_attn.A_log")),
                       "lacks 1 tensor(s) the model needs, e.g. ['model.layers.3.self_attn.A_log']"),
    "zero-heads": (lambda d: _edit_config(d, num_attention_heads=0), "num_attention_heads must be a positive integer"),
    "not-jet": (lambda d: _edit_config(d, model_type="qwen2", architectures=["Qwen2ForCausalLM"]),
                "holds a 'qwen2' model, not a Jet-Nemotron one"),
}


@pytest.mark.parametrize("damage", sorted(STUDENT_DAMAGE))
def test_distill_refuses_a_damaged_student(ws, tmp_path, refused, damage):
    student, message = _damaged_copy(ws, "jet", tmp_path, STUDENT_DAMAGE[damage])
    refused(with_flags(distill_args(ws, "o"), ["--student", str(student)]), message, tmp_path)


BOOLEAN_FLAGS = ("--resume", "--overwrite", "--bf16", "--dry-run", "--chat-docstrings", "--frozen-bf16",
                 "--residual-bf16")


def with_flags(args: list[str], flags: list[str]) -> list[str]:
    """`args` with each `--name value` of `flags` replacing the one there (or appended), booleans appended."""
    args, i = list(args), 0
    while i < len(flags):
        name = flags[i]
        if name in BOOLEAN_FLAGS:
            args.append(name)
            i += 1
            continue
        value = flags[i + 1]
        if name in args:
            args[args.index(name) + 1] = value
        else:
            args += [name, value]
        i += 2
    return args


def test_distill_refuses_a_teacher_with_nan(ws, tmp_path, refused):
    teacher = _copy(ws, "q", tmp_path)
    _edit_weights(teacher, _set("model.layers.2.mlp.gate_proj.weight", 0, math.nan))
    args = with_flags(distill_args(ws, "o"), ["--teacher", str(teacher)])
    refused(args, "tensor model.layers.2.mlp.gate_proj.weight (layer 2) has 1 non-finite", tmp_path)


def test_distill_refuses_a_teacher_of_another_vocabulary(ws, tmp_path, refused):
    tiny_qwen("qwen2", vocab=101).save_pretrained(tmp_path / "t")
    args = with_flags(distill_args(ws, "o"), ["--teacher", str(tmp_path / "t")])
    refused(args, "student vocab 300 != teacher vocab 101", tmp_path)


def _data(tmp_path, text: str) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text(text)
    return p


DISTILL_CASES = {
    # issue 17.6: a missing student folder was reported as a bad Hub repo id
    "student-missing": (["--student", "{ws}/nowhere"], "student folder {ws}/nowhere does not exist"),
    "student-is-a-file": (["--student", "{ws}/data.jsonl"], "student folder {ws}/data.jsonl is not a folder"),
    "teacher-missing": (["--teacher", "nowhere"], "source nowhere is neither a local folder/file nor a Hub id"),
    "data-missing": (["--data", "{ws}/nowhere.jsonl"], "data path {ws}/nowhere.jsonl does not exist"),
    "data-not-json": (["--data", "@{not json}"], "d.jsonl:1: not a JSON line"),
    "data-no-field": (["--data", '@{"body": "x"}'], "d.jsonl:1: no field 'text' (fields: ['body']); use --text-field"),
    "text-field-wrong": (["--text-field", "body"], "data.jsonl:1: no field 'body'"),
    "data-empty": (["--data", '@{"text": "  "}'], "the data has no non-empty document"),
    "data-too-short": (["--data", '@{"text": "x = 1"}'], "the data is too short"),
    "seq-len-one": (["--seq-len", "1"], "--seq-len must be >= 2, got 1"),
    # issue 17.8: accepted although meaningless
    "save-every-negative": (["--save-every", "-1"], "stage 1: save_every must be >= 0, got -1"),
    "warmup-negative": (["--warmup", "-5"], "stage 1: warmup_steps must be >= 0, got -5"),
    "no-steps": (["--stage1-steps", "0"], "no distillation stage has steps > 0"),
    "negative-steps": (["--stage1-steps", "-3"], "--stage1-steps must be >= 0, got -3"),
    "batch-not-multiple": (["--batch-size", "3"], "--batch-size 3 is not a multiple of --micro-batch 2"),
    "micro-batch-zero": (["--micro-batch", "0"], "micro_batch must be >= 1, got 0"),
    "micro-batch2-not-dividing": (["--stage2-steps", "1", "--micro-batch2", "3"], "stage 2's --batch-size2 (else "
                                  "--batch-size) 2 is not a multiple of stage 2's --micro-batch2 (else "
                                  "--micro-batch) 3"),
    "batch-size2-not-dividing": (["--stage2-steps", "1", "--batch-size2", "3"], "stage 2's --batch-size2 (else "
                                 "--batch-size) 3 is not a multiple of stage 2's --micro-batch2 (else "
                                 "--micro-batch) 2"),
    "time-split-without-budget": (["--time-split", "1"], "--time-split divides --time-budget-min between the "
                                  "stages; give a budget too"),
    "time-split-count": (["--time-budget-min", "1", "--stage2-steps", "2", "--time-split", "1"],
                         "--time-split gives 1 shares, but 2 stages have steps (stage 1, stage 2)"),
    "time-split-sum": (["--time-budget-min", "1", "--stage2-steps", "2", "--time-split", "0.7,0.2"],
                       "--time-split shares sum to 0.9, not 1 (stage 1, stage 2)"),
    "time-split-zero": (["--time-budget-min", "1", "--stage2-steps", "2", "--time-split", "0,1"],
                        "--time-split shares must be in (0, 1], got 0.0"),
    "time-split-words": (["--time-budget-min", "1", "--time-split", "most"],
                         "--time-split 'most': comma-separated numbers, e.g. 0.7,0.3"),
    "train-unknown": (["--train1", "mlp"], "train must be one of jet, mixers, non-mlp, all, got 'mlp'"),
    "lr-zero": (["--lr1", "0"], "stage 1: lr must be a positive number, got 0.0"),
    "lr-negative": (["--stage2-steps", "2", "--lr2", "-1e-3"], "stage 2: lr must be a positive number"),
    "lr-nan": (["--lr1", "nan"], "lr must be a positive number, got nan"),
    "kl-weight-negative": (["--kl-weight", "-1"], "kl_weight must be >= 0, got -1.0"),
    "nothing-to-train-on": (["--kl-weight", "0", "--mse-weight", "0"], "kl_weight and mse_weight are both zero"),
    "kl-chunk-zero": (["--kl-chunk", "0"], "kl_chunk must be >= 1, got 0"),
    "kl-top1-one": (["--stage2-steps", "1", "--kl-top1", "1"], "stage 2: kl_top1 is the share of the KL's target moved "
                    "onto the teacher's first choice, in [0, 1); got 1.0"),
    "kl-focus-negative": (["--stage2-steps", "1", "--kl-focus", "-1"], "stage 2: kl_focus weighs a token's KL by 1 + "
                          "kl_focus (1 - the teacher's top probability), a finite number >= 0; got -1.0"),
    "teacher-fp8-stage-four": (["--teacher-fp8", "1,4"], "--teacher-fp8 '1,4': comma-separated stages of 1, 2, 3"),
    "max-tokens-zero": (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
    # the corpus, stage-3 and retrieval flags (issue 14) are checked before anything loads, too
    "stage3-steps-negative": (["--stage3-steps", "-1"], "--stage3-steps must be >= 0, got -1"),
    "stage3-seq-len-one": (["--stage3-steps", "1", "--stage3-seq-len", "1"], "--stage3-seq-len must be >= 2, got 1"),
    "stage3-batch-not-multiple": (["--stage3-steps", "1", "--stage3-batch-size", "3", "--stage3-micro-batch", "2"],
                                  "--stage3-batch-size 3 is not a multiple of --stage3-micro-batch 2"),
    "lr3-zero": (["--stage3-steps", "1", "--lr3", "0"], "stage 3: lr must be a positive number, got 0.0"),
    "retrieval-ratio-one": (["--retrieval-ratio", "1"], "--retrieval-ratio must be in [0, 1), got 1.0"),
    "retrieval-ratio-negative": (["--retrieval-ratio", "-0.1"], "--retrieval-ratio must be in [0, 1), got -0.1"),
    "retrieval-kinds-unknown": (["--retrieval-ratio", "0.2", "--retrieval-kinds", "needle"],
                                "--retrieval-kinds must be among passkey, kv, table; got needle"),
    "chat-ratio-one": (["--chat-ratio", "1"], "--chat-ratio must be in [0, 1) and below 1 - --retrieval-ratio, "
                                              "got 1.0 (retrieval 0.0)"),
    "chat-and-retrieval-all-rows": (["--retrieval-ratio", "0.5", "--chat-ratio", "0.5"],
                                    "--chat-ratio must be in [0, 1) and below 1 - --retrieval-ratio, got 0.5"),
    "chat-file-without-chat-rows": (["--chat-file", "{ws}/none.jsonl"],
                                    "--chat-file {ws}/none.jsonl is used by chat rows only: give --chat-ratio > 0"),
    "chat-file-missing": (["--chat-ratio", "0.1", "--chat-file", "{ws}/none.jsonl"],
                          "chat file {ws}/none.jsonl does not exist"),
    "chat-docstrings-without-chat-rows": (["--chat-docstrings"], "--chat-docstrings picks the corpus functions that "
                                                                 "chat rows ask for: it needs --chat-ratio > 0"),
    "data-weight-zero": (["--data-weight", "0"], "--data-weight values must be > 0, got [0.0]"),
    "eval-fraction-one": (["--eval-fraction", "1"], "--eval-fraction must be in [0, 1), got 1.0"),
    "eval-rows-zero": (["--eval-rows", "0"], "--eval-rows must be >= 1, got 0"),
    "on-stale-unknown": (["--on-stale", "ignore"], "--on-stale must be 'rebuild' or 'error', got 'ignore'"),
    "tokenise-workers-zero": (["--tokenise-workers", "0"], "--tokenise-workers must be >= 1, got 0"),
    "peak-tflops-zero": (["--peak-tflops", "0"], "peak_tflops must be a positive number, got 0.0"),
    "recipe-unknown": (["--recipe", "20min"], "--recipe: no recipe '20min'; known: 15min"),
    "frozen-bf16-without-bf16": (["--frozen-bf16"], "--frozen-bf16 holds frozen weights in the bf16 that --bf16 "
                                                    "computes them in: it needs --bf16"),
    "residual-bf16-without-bf16": (["--residual-bf16"], "--residual-bf16 runs the residual stream in the bf16 of "
                                                        "--bf16: it needs --bf16"),
    "log-every-negative": (["--log-every", "-1"], "stage 1: log_every must be >= 0, got -1"),
    "out-is-student": (["--out", "{ws}/jet", "--overwrite"], "overlaps the student"),
    "out-holds-data": (["--out", "{ws}", "--overwrite"], "overlaps the teacher"),
    "ckpt-is-student": (["--ckpt-dir", "{ws}/jet"], "checkpoint folder {ws}/jet overlaps the student"),
    "ckpt-inside-out": (["--ckpt-dir", "{ws}/o/ck"], "checkpoint folder {ws}/o/ck overlaps the output {ws}/o"),
    "out-exists": (["--out", "{ws}/run"], "output folder {ws}/run exists; pass --overwrite"),
    # issue 17.3: --resume with nothing to resume started from step 0 without a word
    "resume-nothing": (["--resume"], "--resume: no checkpoint in {ws}/o.ckpt (missing or empty)"),
    # issue 17.3: a fresh run did not clear an old OUT.ckpt, which a later --resume then continued
    "fresh-over-old-checkpoints": (["--ckpt-dir", "{ws}/run.ckpt"], "checkpoint folder {ws}/run.ckpt holds an earlier "
                                                                    "run (stage1/step_1, stage1/step_2); pass --resume"),
    # issue 17.3: resuming after changing the settings was accepted, and the report described the new ones
    "resume-other-lr": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--lr1", "0.002"],
                        "belongs to a different run: stage1.lr 0.001 -> 0.002"),
    "resume-other-seq-len": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--seq-len", "12"], "seq_len 16 -> 12"),
    "resume-fewer-steps": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--stage1-steps", "1"], "stage1.steps 2 -> 1"),
    "resume-other-batch": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--batch-size", "4"],
                           "stage1.batch_size 2 -> 4"),
    "resume-other-seed": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--seed", "1"], "stage1.seed 0 -> 1"),
    "resume-other-data": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--data", "{ws}/other.jsonl"],
                          "belongs to a different run: data "),
    # issue 17.2: the loss went nan, the NaN model was saved and the run exited 0
    "loss-goes-non-finite": (["--lr1", "1e30", "--ckpt-dir", "{tmp}/ck"],
                             "at step 2; stopped before applying it. Last good checkpoint: {tmp}/ck/stage1/step_1"),
    "resume-added-stage": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--stage2-steps", "2"], "stage2.lr (absent) -> "),
    "resume-added-stage3": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--stage3-steps", "2", "--stage3-seq-len",
                             "32"], "stage3.seq_len (absent) -> 32"),
    "resume-added-retrieval": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--retrieval-ratio", "0.2"],
                               "retrieval.ratio (absent) -> 0.2"),
    "resume-added-chat-rows": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--chat-ratio", "0.2"],
                               "retrieval.chat_ratio (absent) -> 0.2"),
    "resume-other-max-tokens": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--max-tokens", "40"],
                                "belongs to a different run: data "),
    "resume-other-teacher": (["--ckpt-dir", "{ws}/run.ckpt", "--resume", "--teacher", "@teacher"], "teacher "),
}


@pytest.mark.parametrize("case", sorted(DISTILL_CASES))
def test_distill_refuses_bad_input(ws, tmp_path, refused, case):
    flags, message = DISTILL_CASES[case]
    flags = [f.replace("{ws}", str(ws)).replace("{tmp}", str(tmp_path)) for f in flags]
    message = message.replace("{ws}", str(ws)).replace("{tmp}", str(tmp_path))
    for i, f in enumerate(flags):
        if f.startswith("@{"):
            flags[i] = str(_data(tmp_path, f[1:]))
        elif f == "@teacher":
            t = _copy(ws, "q", tmp_path)
            _edit_config(t, rms_norm_eps=1e-5)
            flags[i] = str(t)
    args = distill_args(ws, "o")
    if "--out" in flags:
        i = flags.index("--out")
        args[1] = flags[i + 1]
        del flags[i : i + 2]
    refused(with_flags(args, flags), message, *([] if case == "loss-goes-non-finite" else [tmp_path]))
    if case == "loss-goes-non-finite":  # the checkpoint of the last good step is there, the output is not
        assert sorted(p.name for p in (tmp_path / "ck" / "stage1").iterdir()) == ["step_1"]


def test_resume_of_a_truncated_checkpoint_names_it(ws, tmp_path, refused):
    ck = _copy(ws, "run.ckpt", tmp_path)
    weights = next((ck / "stage1" / "step_2").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    refused(distill_args(ws, "o", "--ckpt-dir", str(ck), "--resume"),
            f"checkpoint {ck / 'stage1' / 'step_2'} cannot be loaded", tmp_path)


def test_resume_of_a_broken_progress_file_names_it(ws, tmp_path, refused):
    ck = _copy(ws, "run.ckpt", tmp_path)
    (ck / "stage1" / "step_2" / "progress.json").write_text("{")
    refused(distill_args(ws, "o", "--ckpt-dir", str(ck), "--resume"), "has a broken progress.json", tmp_path)


# ----------------------------------------------------------------------------------------------------------- push

def _push_folder(ws, tmp_path, damage):
    f = _copy(ws, "jet", tmp_path)
    damage(f)
    return f


PUSH_CASES = {
    # issue 17.7: push --dry-run only checked that config.json exists
    "repo-id-no-owner": ("jet-test", None, "repo id 'jet-test' must be 'owner/name'"),
    "repo-id-too-deep": ("me/a/b", None, "must be 'owner/name' (one '/')"),
    "repo-id-bad-chars": ("me/bad name!", None, "repo id 'me/bad name!' is not a valid Hub id"),
    "folder-missing": ("me/jet", "nowhere", "does not exist"),
    "no-config": ("me/jet", lambda d: (d / "config.json").unlink(), "has no config.json"),
    "broken-config": ("me/jet", lambda d: (d / "config.json").write_text("{"), "cannot be read as a model config"),
    "no-weights": ("me/jet", lambda d: (d / "model.safetensors").unlink(), "has no weights (*.safetensors)"),
    "weights-lack-tensor": ("me/jet", lambda d: _edit_weights(d, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight")),
                            "the weights lack 1 tensor(s) its config needs, e.g. ['model.layers.1.mlp.up_proj.weight']"),
    "weights-misshaped": ("me/jet", lambda d: _edit_config(d, intermediate_size=48),
                          "tensor model.layers.0.mlp.gate_proj.weight in model.safetensors has shape (96, 64)"),
    "weights-nan": ("me/jet", lambda d: _edit_weights(d, _set("model.norm.weight", 0, math.nan)),
                    "tensor model.norm.weight has 1 non-finite"),
    "weights-truncated": ("me/jet", _truncate, "cannot be read (truncated or not safetensors?)"),
}


@pytest.mark.parametrize("case", sorted(PUSH_CASES))
def test_push_dry_run_refuses(ws, tmp_path, refused, case):
    repo, damage, message = PUSH_CASES[case]
    if damage is None:
        folder = ws / "jet"
    elif damage == "nowhere":
        folder = tmp_path / "nowhere"
    else:
        folder = _push_folder(ws, tmp_path, damage)
    refused(["push", folder, repo, "--dry-run"], message, tmp_path)


# -------------------------------------------------------------------------------------------------------- library

CONFIG_CASES = {
    "zero-heads": (dict(num_attention_heads=0), "num_attention_heads must be a positive integer, got 0"),
    "negative-heads": (dict(num_attention_heads=-4), "num_attention_heads must be a positive integer, got -4"),
    "zero-kv-heads": (dict(num_key_value_heads=0), "num_key_value_heads must be a positive integer, got 0"),
    "kv-not-divisor": (dict(num_key_value_heads=3), "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
    "zero-hidden": (dict(hidden_size=0), "hidden_size must be a positive integer, got 0"),
    "layer-types-int": (dict(layer_types=7), "layer_types must be a list of layer type names, got int 7"),
    "jet-heads-zero": (dict(efficient_attention_config={"jet": {"num_heads": 0}}), "sizes must be positive"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_refuses(lib_refuses, case):
    from jet_nemotron import JetNemotronConfig

    kw, message = CONFIG_CASES[case]
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, layer_types=["jet", "attn"])
    lib_refuses(lambda: JetNemotronConfig(**{**base, **kw}), ValueError, message)


@pytest.fixture(scope="module")
def tiny():
    from conftest import tiny_model

    return tiny_model()


FORWARD_CASES = {
    "ids-1d": (dict(input_ids=torch.ones(5, dtype=torch.long)), "input_ids must be [batch, seq_len], got shape (5,)"),
    "ids-3d": (dict(input_ids=torch.ones(1, 2, 5, dtype=torch.long)), "got shape (1, 2, 5)"),
    "ids-float": (dict(input_ids=torch.ones(2, 5)), "input_ids must hold integer token ids, got dtype torch.float32"),
    "embeds-wrong-width": (dict(inputs_embeds=torch.ones(2, 5, 7)), "inputs_embeds must be [batch, seq_len, 64]"),
    "mask-other-batch": (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(3, 5)),
                         "attention_mask must be [batch 2, past + seq_len >= 5] for inputs of shape (2, 5), got (3, 5)"),
    "mask-too-short": (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4)),
                       "got (2, 4)"),
    "mask-3d": (dict(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, 5)),
                "attention_mask must be 2-D [batch, keys] or 4-D, got shape (2, 5, 5)"),
    "positions-other-length": (dict(input_ids=torch.ones(2, 5, dtype=torch.long), position_ids=torch.arange(4)[None]),
                               "position_ids must be [batch 2 or 1, 5] for inputs of shape (2, 5), got (1, 4)"),
    "both-ids-and-embeds": (dict(input_ids=torch.ones(2, 5, dtype=torch.long), inputs_embeds=torch.ones(2, 5, 64)),
                            "pass exactly one of input_ids and inputs_embeds"),
}


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_refuses_wrong_shapes(lib_refuses, tiny, case):
    kw, message = FORWARD_CASES[case]
    lib_refuses(lambda: tiny(**kw), ValueError, message)


def test_generate_refuses_a_mask_of_another_length(lib_refuses, tiny):
    ids = torch.ones(2, 5, dtype=torch.long)
    text = lib_refuses(lambda: tiny.generate(input_ids=ids, attention_mask=torch.ones(2, 3, dtype=torch.long),
                                             max_new_tokens=2, do_sample=False), ValueError, "got (2, 3)")
    assert "attention_mask" in text


def _setup_distill():
    from test_convert_distill import _setup

    return _setup()


def test_distill_resume_without_a_checkpoint(lib_refuses, tmp_path):
    from convert.distill import DistillConfig, distill

    teacher, student, train, _ = _setup_distill()
    lib_refuses(lambda: distill(student, teacher, train, DistillConfig(steps=2, batch_size=4, micro_batch=4),
                                tmp_path, resume=True), FileNotFoundError, f"nothing to resume: no checkpoint in {tmp_path}",
                tmp_path)


def test_distill_checkpoints_refuse_another_run(lib_refuses, tmp_path):
    from convert.distill import DistillConfig, distill

    cfg = dict(steps=2, batch_size=4, micro_batch=4, save_every=1, log_every=0)
    teacher, student, train, _ = _setup_distill()
    distill(student, teacher, train, DistillConfig(**cfg), tmp_path, stop=lambda step: step >= 1)
    teacher, student, train, _ = _setup_distill()
    lib_refuses(lambda: distill(student, teacher, train, DistillConfig(**cfg), tmp_path), FileExistsError,
                f"checkpoint folder {tmp_path} already holds checkpoints (step_1)", tmp_path)
    lib_refuses(lambda: distill(student, teacher, train, DistillConfig(**{**cfg, "lr": 5e-3}), tmp_path, resume=True),
                ValueError, "belongs to a different run: this_stage.lr 0.001 -> 0.005", tmp_path)
    lib_refuses(lambda: distill(student, teacher, train[:-1], DistillConfig(**cfg), tmp_path, resume=True),
                ValueError, "train_rows [20, 32]:", tmp_path)


def test_non_finite_loss_stops_naming_step_and_checkpoint(lib_refuses, tmp_path):
    # issue 17.2: the loss went nan, the NaN model was saved and the run exited 0
    from convert.distill import DistillConfig, NonFiniteLossError, distill

    teacher, student, train, _ = _setup_distill()
    cfg = DistillConfig(stage=2, steps=4, batch_size=4, micro_batch=4, save_every=1, log_every=0, lr=1e30,
                        warmup_steps=0)  # the first step throws the weights to ~1e30, the second overflows
    lib_refuses(lambda: distill(student, teacher, train, cfg, tmp_path / "ck"), NonFiniteLossError,
                f"at step 2; stopped before applying it. Last good checkpoint: {tmp_path / 'ck' / 'step_1'}")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_1"]


def test_out_of_device_memory_names_the_micro_batch_and_resumes_with_fewer_rows(lib_refuses, tmp_path, monkeypatch):
    # an 80 GB card runs out in stage 2 at the H200's 8 rows a forward: the error says what to lower, the step's
    # checkpoint before it is kept, and the run resumes from it with fewer rows a forward as the same run
    import convert.distill as distill_module
    from convert.distill import DeviceMemoryError, DistillConfig, distill

    teacher, student, train, _ = _setup_distill()
    cfg = dict(stage=2, steps=3, batch_size=4, micro_batch=4, save_every=1, log_every=1, lr=1e-3, warmup_steps=0)
    real, calls = distill_module.teacher_targets, []

    def short_of_memory(teacher, x, *a, **k):
        calls.append(len(x))
        if len(calls) == 2 and len(x) == 4:  # the second step, at 4 rows a forward
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return real(teacher, x, *a, **k)

    monkeypatch.setattr(distill_module, "teacher_targets", short_of_memory)
    lib_refuses(lambda: distill(copy.deepcopy(student), teacher, train, DistillConfig(**cfg), tmp_path / "ck"),
                DeviceMemoryError, "stage 2, step 2: out of device memory with 4 rows of 32 tokens a forward. Lower "
                "--micro-batch (the --batch-size of 4 stays: more micro-steps are accumulated, so the run is the "
                f"same), or turn on --gradient-checkpointing. Last good checkpoint: {tmp_path / 'ck' / 'step_1'}")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_1"]
    resumed = distill(copy.deepcopy(student), teacher, train, DistillConfig(**{**cfg, "micro_batch": 2}),
                      tmp_path / "ck", resume=True)
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3] and calls[2:] == [2] * 4


def test_data_options_library_refuses_a_weight_per_missing_source(lib_refuses):
    from convert.pipeline import check_data_options

    lib_refuses(lambda: check_data_options({"weights": [1.0, 2.0]}, None, 0.05, 64, 0, 1), ValueError,
                "1 --data sources but 2 --data-weight values")
    lib_refuses(lambda: check_data_options(None, {"ratio": float("nan")}, 0.05, 64, 0, 1), ValueError,
                "--retrieval-ratio must be in [0, 1), got nan")


def test_non_finite_loss_read_back_later_names_both_steps_and_saves_nothing(lib_refuses, tmp_path):
    # losses are read back every log_every steps (no host sync per step): a NaN is caught at the next read-back,
    # before that step's update, and as every checkpoint follows a read-back, nothing non-finite is saved
    from convert.distill import DistillConfig, NonFiniteLossError, distill

    teacher, student, train, _ = _setup_distill()
    cfg = DistillConfig(stage=2, steps=6, batch_size=4, micro_batch=4, save_every=0, log_every=3, lr=1e30,
                        warmup_steps=0)
    lib_refuses(lambda: distill(student, teacher, train, cfg, tmp_path / "ck"), NonFiniteLossError,
                "at step 2; stopped at step 3 before applying that step (losses are read back every log_every = 3 "
                "steps); nothing since step 2 was saved. Last good checkpoint: none", tmp_path)


def test_layer_map_library_refuses_a_layer_placed_twice(lib_refuses):
    from convert.layer_map import parse_spec

    lib_refuses(lambda: parse_spec("attn:1,1 swa:1", 4), ValueError, "layer 1 is placed twice (attn and attn)")


def test_distill_config_refuses_negative_cadences(lib_refuses):
    from convert.distill import DistillConfig

    lib_refuses(lambda: DistillConfig(warmup_steps=-5).resolved(), ValueError, "warmup_steps must be >= 0, got -5")
    lib_refuses(lambda: DistillConfig(save_every=-1).resolved(), ValueError, "save_every must be >= 0, got -1")


# ------------------------------------------------------------------- what happens instead: the recoveries above

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(ws, tmp_path):
    # issue 17.5: `.OUT.tmp-PID` folders of killed runs were never removed (each run removed only its own PID's)
    dead, live = _dead_pid(), os.getppid()
    (tmp_path / f".out.tmp-{dead}").mkdir()
    (tmp_path / f".out.tmp-{dead}" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".out.old-{dead}").write_text("an old file")
    (tmp_path / f".out.tmp-{live}").mkdir()
    assert main(["convert", str(ws / "q"), str(tmp_path / "out"), "--layer-map", "all-attn"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.tmp-{live}", "out"]


def test_overwriting_a_file_leaves_no_old_copy(ws, tmp_path):
    # issue 17.5: `.out.old-PID` was left when --overwrite replaced a file
    (tmp_path / "out").write_text("not a model")
    assert main(["convert", str(ws / "q"), str(tmp_path / "out"), "--layer-map", "all-attn", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "config.json").is_file()


def test_overwrite_clears_another_runs_checkpoints(ws, tmp_path):
    # issue 17.3: a fresh run kept the old checkpoints, which a later --resume continued
    ck = _copy(ws, "run.ckpt", tmp_path)
    args = with_flags(distill_args(ws, "o"), ["--ckpt-dir", str(ck), "--lr1", "0.002", "--stage1-steps", "1"])
    args[1] = str(tmp_path / "o")
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in (ck / "stage1").iterdir()) == ["step_1"]
    ident = json.loads((ck / "stage1" / "step_1" / "progress.json").read_text())["identity"]
    assert ident["stage1"]["lr"] == 0.002 and ident["stage1"]["steps"] == 1
    report = json.loads((tmp_path / "o" / "distillation.json").read_text())
    assert report["identity"]["config_hash"] == ident["config_hash"]


def test_student_without_jetblocks_distills_with_everything_trainable(tmp_path):
    # issue 17.4: the documented `all-attn` map with --train1 all crashed in DistillLoss (MSE over no layer)
    from convert.distill import DistillConfig, distill
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model

    teacher = tiny_qwen("qwen2", layers=2)
    student = convert_model(teacher, parse_spec("all-attn", 2))
    rows = torch.randint(0, 101, (8, 16), generator=torch.Generator().manual_seed(0))
    out = distill(student, teacher, rows, DistillConfig(stage=1, steps=2, batch_size=4, micro_batch=4, train="all",
                                                        log_every=0))
    assert [h["mse"] for h in out["history"]] == [0.0, 0.0] and all(math.isfinite(h["kl"]) for h in out["history"])


def test_debug_shows_the_traceback(ws, tmp_path):
    with pytest.raises(ValueError, match="layer 0 has unknown type 'bogus'"):
        main(["--debug", "convert", str(ws / "q"), str(tmp_path / "out"), "--layer-map", "bogus,jet,jet,jet"])


def test_a_non_finite_model_is_never_written(tmp_path):
    from convert.export import write_folder
    from convert.layer_map import parse_spec
    from convert.qwen_to_jet import convert_model

    model = convert_model(tiny_qwen("qwen2"), parse_spec("all-attn", 4))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"written file model.safetensors: tensor model.layers.1.mlp.up_proj.weight "
                                         r"\(layer 1\) has 1 non-finite"):
        write_folder(tmp_path / "out", model)
    assert list(tmp_path.iterdir()) == []


def test_input_checks_trace_into_one_graph():
    # the forward's shape checks read static shapes only: dynamo traces through them without a graph break
    from conftest import tiny_model

    m = tiny_model(layer_types=("attn", "swa"))
    ids, mask = torch.randint(3, 100, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    compiled = torch.compile(m.model, backend="eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        want = m.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    torch.testing.assert_close(got, want)


def test_chat_rows_from_a_file_train_and_a_resume_with_other_chats_is_refused(ws, tmp_path, refused):
    """`--chat-file`: a run draws its chat rows from the file and records its hash; resuming it with other chats
    under the same name is refused naming that hash, with every folder left as it was."""
    from convert.teacher_answers import write_chats

    chat = [{"role": "user", "content": "Write add."}, {"role": "assistant", "content": "```python\n" + TEXT[:40] + "\n```"}]
    chats = write_chats(tmp_path / "chats.jsonl", [chat])
    flags = ["--chat-ratio", "0.5", "--chat-file", str(chats), "--ckpt-dir", str(tmp_path / "ck")]
    run = distill_args(ws, "o", *flags)
    run[1] = str(tmp_path / "run")
    assert main(run) == 0
    assert "chat_file_sha256" in (tmp_path / "run" / "distillation.json").read_text()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Of every stage's rows, 50% chats in the tokenizer's template, from a chat file (sha256 " in card
    write_chats(chats, [chat, chat])  # other chats under the same name
    again = distill_args(ws, "o", *flags, "--resume")
    again[1] = str(tmp_path / "again")
    refused(again, "retrieval.chat_file_sha256", tmp_path)
