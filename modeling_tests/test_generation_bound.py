"""benchmarks/generation.py's step bound: the weights cost the longer of one read and the batch's matmuls, every
cache byte one move; and its derivation for rows measured before the bound was recorded."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generation.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("generation_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _models(gen):
    jet_cfg, qwen_cfg = gen.model_configs(smoke=True)
    with torch.device("meta"):
        return (gen.JetNemotronForCausalLM(jet_cfg).to(torch.bfloat16),
                gen.Qwen2ForCausalLM(qwen_cfg).to(torch.bfloat16))


def test_bound_is_bytes_at_batch_1_and_matmuls_at_large_batch(gen):
    bw, rate = 1e12, 1e14
    for model in _models(gen):
        w, n_lin = gen.weight_bytes(model), gen.linear_weights(model)
        cache = gen.step_bytes(model, 1, 128) - w
        assert cache > 0 and 0 < n_lin * 2 <= 2 * w  # bf16: 2 bytes per weight; the embedding is no linear layer
        # batch 1: one read of the weights (1e-12 s/byte) dwarfs 2 FLOPs per weight (1e-14 s/FLOP)
        assert gen.bound_seconds(model, 1, 128, bw, rate) == pytest.approx((w + cache) / bw)
        B = 10_000  # 2 * n_lin * B / rate > w / bw: the matmuls set the weights' cost
        want = 2 * n_lin * B / rate + B * cache / bw
        assert gen.bound_seconds(model, B, 128, bw, rate) == pytest.approx(want)


def test_derived_fraction_is_one_at_the_bound(gen):
    jet, _ = _models(gen)
    bw, rate, batch, ctx = 2e12, 3e14, 64, 128
    tok_s = batch / gen.bound_seconds(jet, batch, ctx, bw, rate)  # a run exactly at the bound
    row = {"model": "jet", "ctx": ctx, "decode_batch1_batch": 1, "decode_batch1_tok_s": 1.0,
           "decode_max_batch_batch": batch, "decode_max_batch_tok_s": tok_s,
           "step_max_batch_ms": 1e3 * batch / tok_s}
    results = {"rows": [row], "copy_bandwidth_GBps": [bw / 1e9, [bw / 1e9]], "bf16_matmul_TFLOPs": rate / 1e12,
               "smoke": True}
    gen.derive_bounds(results)
    assert row["decode_max_batch_bound_frac"] == pytest.approx(1.0)
    assert row["step_max_batch_bound_frac"] == pytest.approx(1.0)
    assert 0 < row["decode_batch1_bound_frac"] < 1


def test_merge_refuses_mixed_cards_and_state_dtypes(gen, tmp_path):
    def run(name, device, state_dtype):
        path = tmp_path / name
        path.write_text(gen.json.dumps({"device": device, "copy_bandwidth_GBps": 1.0, "rows": [{"ctx": 1}],
                                        "jet_recurrent_state_dtype": state_dtype}))
        return path

    a, b = run("a.json", "H200", "float32"), run("b.json", "H200", "float32")
    assert len(gen.merge([a, b])["rows"]) == 2
    with pytest.raises(ValueError, match="different cards"):
        gen.merge([a, run("c.json", "H100", "float32")])
    with pytest.raises(ValueError, match="state dtypes.*bfloat16"):
        gen.merge([a, run("d.json", "H200", "bfloat16")])


def test_smoke_run_with_one_dynamic_compile_records_each_rows_cost(gen, tmp_path):
    """--smoke --dynamic --teacher-first on the CPU (dynamo's eager backend): both models (the teacher first), both
    contexts, each row with the seconds it cost (compiles included), the run marked dynamic, positive decode rates,
    and the ratios of both contexts."""
    gen.main(["--smoke", "--dynamic", "--teacher-first", "--out", str(tmp_path)])
    import json

    res = json.loads((tmp_path / "generation_smoke.json").read_text())
    assert res["compile_dynamic"] is True and set(res["ratios"]) == {"64", "128"}
    assert [(r["model"], r["ctx"]) for r in res["rows"]] == [("qwen", 64), ("qwen", 128), ("jet", 64), ("jet", 128)]
    for r in res["rows"]:
        assert r["row_s"] > 0 and r["decode_batch1_tok_s"] > 0 and r["decode_max_batch_tok_s"] > 0


def test_one_models_failure_keeps_the_others_rows_and_fails_the_run(gen, tmp_path, monkeypatch):
    """A session has one try at the card: if Jet-Nemotron's rows fail (e.g. a compile error), the teacher's are still
    measured and written, the error is recorded, and the command exits non-zero."""
    real = gen.prefill_seconds

    def prefill(model, ctx, device):
        if model.config.model_type == "jet_nemotron":
            raise RuntimeError("planted failure")
        return real(model, ctx, device)

    monkeypatch.setattr(gen, "prefill_seconds", prefill)
    with pytest.raises(SystemExit, match="1 model\\(s\\) failed.*planted failure"):
        gen.main(["--smoke", "--out", str(tmp_path)])
    import json

    res = json.loads((tmp_path / "generation_smoke.json").read_text())
    assert res["errors"] == [{"model": "jet", "ctx": 64, "error": "RuntimeError: planted failure"}]
    assert [(r["model"], r["ctx"]) for r in res["rows"]] == [("qwen", 64), ("qwen", 128)]
