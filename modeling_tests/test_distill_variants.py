"""benchmarks/distill_variants.py: several short distillations from one converted start, same data and budget."""

import copy
import gzip
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import distill_variants as dv  # noqa: E402
from convert.step_budget import RESERVE_S  # noqa: E402


def test_uniform_map_spreads_attention_and_windows_evenly():
    types = dv.uniform_types(28, 2, 2)
    assert [i for i, t in enumerate(types) if t == "attn"] == [10, 24]
    assert [i for i, t in enumerate(types) if t == "swa"] == [3, 17]
    assert types.count("jet") == 24
    assert dv.uniform_types(6, 3, 0) == ["jet", "attn", "jet", "attn", "jet", "attn"]


def test_every_variant_keeps_the_preset_shape_and_differs_in_placement_only(tmp_path):
    searched = tmp_path / "map.json"
    types = ["jet"] * 28
    types[3], types[5], types[6], types[7] = "attn", "attn", "swa", "swa"
    searched.write_text(json.dumps({"format": "jet-nemotron-layer-map/v1", "num_layers": 28, "layer_types": types,
                                    "jet": {"num_heads": 4, "head_dim": 64}}))
    maps = [dv.layer_map_of(v, 28, searched) for v in dv.variant_list("placement", searched)]
    assert maps[0].layer_types == types
    assert maps[1].indices("attn") == [14, 19] and maps[1].indices("swa") == [20, 21]
    assert maps[2].layer_types == dv.uniform_types(28, 2, 2)
    for m in maps:  # the searched file's own JetBlock sizes are overridden by the preset's
        assert m.jet == maps[1].jet and m.jet["head_dim"] == 96 and m.swa == {"window_size": 1152}


def test_the_committed_h200_search_map_is_a_valid_placement_variant():
    """A comparison starts from this file (SEARCHED=...): it must load, stamped as it is, at 28 layers, and take the
    preset's JetBlock shape and window."""
    searched = Path(__file__).resolve().parents[1] / "benchmarks/results/real_model/placement_search/layer_map.json"
    variants = dv.variant_list("placement", searched)
    maps = [dv.layer_map_of(v, 28, searched) for v in variants]
    assert maps[0].indices("attn") == [0, 23] and maps[0].indices("swa") == [19, 22]
    assert all(m.jet == maps[1].jet and m.swa == {"window_size": 1152} for m in maps)


def test_recipe_presets_change_one_knob_each_from_an_attention_transfer_base():
    """The base is what won on the H200 (stage 1 as attention transfer); every other recipe row differs from it in
    one key (the transfer-then-end-to-end row in two that only make sense together)."""
    rows = dv.variant_list("recipe", None)
    base = rows[0]
    assert base["name"] == "base" and base["local1"] is True and base["steps"] is None
    for v in rows[1:]:
        changed = {k for k in dv.BASE if v[k] != base[k]}
        assert changed and (len(changed) == 1 or changed == {"local1", "local1_share"}), (v["name"], changed)


@pytest.mark.parametrize("spec, message", [
    ([{"name": "a", "lr2": 1e-4}], "unknown keys ['lr2']"),
    ([{"name": "a", "split": [0.5, 0.6, 0.0]}], "split needs 3 shares summing to 1"),
    ([{"name": "a"}, {"name": "a"}], "variant names repeat"),
    ([], "non-empty JSON list"),
    ([{"name": "a", "init": "zeros"}], "init attention / random"),
    ([{"name": "a", "jet_lr2": -1}], "jet_lr2 (the JetBlocks' peak lr in stages 2-3), kl_top1 (the share of "
                                     "stages 2-3's KL target on the teacher's first choice) or kl_focus (its "
                                     "uncertainty weight): stage 2: jet_lr must be a positive number"),
    ([{"name": "a", "kl_focus": -1.0}], "stage 2: kl_focus weighs a token's KL by 1 + kl_focus"),
    ([{"name": "a", "kl_top1": 1.0}], "stage 2: kl_top1 is the share of the KL's target moved onto the teacher's"),
    ([{"name": "a", "teacher_fp8": True}], "teacher_fp8 is a list of the stages (1, 2, 3)"),
    ([{"name": "a", "warmup": 0}], "warmup is each stage's warm-up in optimizer steps, an integer >= 1; got 0"),
    ([{"name": "a", "warmup": 2.5}], "warmup is each stage's warm-up in optimizer steps, an integer >= 1; got 2.5"),
])
def test_bad_variant_files_are_refused_with_the_problem_named(tmp_path, spec, message):
    path = tmp_path / "v.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SystemExit, match=re.escape(message)):
        dv.variant_list(str(path), None)
    with pytest.raises(SystemExit, match="needs --searched"):
        dv.variant_list("placement", None)


def test_toy_placement_comparison_runs_each_variant_on_the_same_budget(tmp_path, monkeypatch):
    import convert.eval.retrieval as retrieval_module

    depths_asked, real = [], retrieval_module.retrieval
    monkeypatch.setattr(retrieval_module, "retrieval",
                        lambda m, filler, lengths, depths, *a, **k: depths_asked.append(depths) or real(
                            m, filler, lengths, depths, *a, **k))
    searched = tmp_path / "map.json"
    searched.write_text(json.dumps({"format": "jet-nemotron-layer-map/v1", "num_layers": 4,
                                    "layer_types": ["attn", "jet", "jet", "jet"]}))
    out = tmp_path / "out"
    # a given rate: a probe's depends on how busy the machine is, and under load it planned 0 steps (a CI flake)
    dv.main(["--toy", "--variants", "placement", "--searched", str(searched), "--minutes", "0.02", "--rate", "30000",
             "--humaneval", "2", "--out", str(out), "--corpus-cache", str(tmp_path / "cache"), "--depths", "0,0.25,1"])
    res = json.loads((out / "variants.json").read_text())
    rows = res["variants"]
    assert [r["name"] for r in rows] == ["searched", "preset jet-nemotron-2b", "uniform"]
    assert depths_asked == [(0.0, 0.25, 1.0)] * 4  # the teacher and each variant, on the grid asked
    assert rows[0]["layer_types"] == ["attn", "jet", "jet", "jet"]
    assert rows[2]["layer_types"] == dv.uniform_types(4, 1, 1)
    assert len({tuple(r["steps"]) for r in rows}) == 1 and rows[0]["steps"][0] > 0  # one rate, one plan for all
    for r in rows:
        assert 0 < r["held_out_kl"] < 5 and r["ppl"] > 1 and set(r["retrieval"]) >= {"passkey@128", "niah@256"}
        by_stage = r["held_out_kl_by_stage"]
        assert len(by_stage) == sum(n > 0 for n in r["steps"]) and all(0 < k < 20 for k in by_stage)
    assert res["teacher_humaneval_run"]["problems"] == 2 and res["teacher_humaneval_run"]["seconds"] > 0
    assert all(r["humaneval_run"]["problems"] == 2 and 0 <= r["humaneval"] <= 1 for r in rows)
    assert all(len(r["humaneval_run"]["passed_ids"]) == r["humaneval_run"]["passed"]
               and set(r["humaneval_run"]["passed_ids"]) <= {0, 1} for r in rows)
    table = (out / "variants.md").read_text()
    assert "(2 in " in table
    # each variant against the first, problem by problem: the first against itself gains and loses nothing
    assert "HumanEval against searched: + / - (p)" in table and "| +0 / -0 (1.00) |" in table
    assert table.count("\n| ") == 4 and "| uniform |" in table  # header row aside: teacher + 3 variants
    # the footer gives each variant's own distillation time, not only --minutes (ignored by explicit plans)
    assert "--minutes 0.02." in table and "searched: " in table and "min of distillation" in table
    assert (out / "variants_kl.png").stat().st_size > 0


def test_students_are_measured_as_a_saved_bf16_student_loads(tmp_path):
    """Every parameter and buffer (the fp32 A_log / dt_bias, the fp32 rotary inv_freq) has the dtype and value that
    save_pretrained + from_pretrained(dtype=bf16) gives."""
    from conftest import tiny_model

    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    dv._as_loaded_bf16(model)
    ours = dict(model.named_parameters()) | dict(model.named_buffers())
    theirs = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert ours.keys() == theirs.keys()
    assert any(t.dtype == torch.float32 for n, t in theirs.items() if "inv_freq" in n)
    assert any(t.dtype == torch.float32 for n, t in theirs.items() if n.endswith("A_log"))
    for n, t in theirs.items():
        assert ours[n].dtype == t.dtype and torch.equal(ours[n], t), n


def test_half_attention_transfer_splits_stage_one_and_is_refused_with_full_transfer(tmp_path):
    out = tmp_path / "out"
    # a given rate makes the step plan a function of the FLOP counts alone (a probe's rate varies by machine)
    half = "transfer-half-then-end-to-end"
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps([{"name": "e2e", "local1": False}, {"name": "base"},
                                    {"name": half, "local1": False, "local1_share": 0.5},
                                    {"name": "fixed", "steps": [2, 1, 0]},
                                    {"name": "broken", "layer_map": "jet*3"}]))  # not the toy's layer count
    # --only runs in the order given, not the file's; a variant that fails is recorded and the next one runs
    dv.main(["--toy", "--variants", str(variants), "--only", f"broken,base,{half},e2e,fixed", "--minutes", "0.02",
             "--rate", "30000", "--out", str(out), "--corpus-cache", str(tmp_path / "cache"),
             "--save-students", str(tmp_path / "students")])
    res = json.loads((out / "variants.json").read_text())
    ran = res["variants"]
    assert [f["name"] for f in res["failed"]] == ["broken"] and "has 3 layers" in res["failed"][0]["error"]
    assert "| broken | failed: " in (out / "variants.md").read_text()
    # each student saved under its name, loadable as the measured one was (bf16 except A_log / dt_bias)
    saved = AutoModelForCausalLM.from_pretrained(ran[1]["saved"], trust_remote_code=True)
    assert Path(ran[1]["saved"]).name == half and saved.config.model_type == "jet_nemotron"
    assert [r["name"] for r in ran] == ["base", half, "e2e", "fixed"]
    rows = {r["name"]: r for r in ran}
    plan = rows[half]["plan"]
    assert [(p["stage"], p["local"]) for p in plan[:2]] == [(1, True), (1, False)]
    assert rows[half]["steps"][0] == plan[0]["steps"] + plan[1]["steps"]
    # the local half costs about half the FLOPs a token, so it buys more steps than the end-to-end half
    assert plan[0]["steps"] > plan[1]["steps"] > 0
    assert [(p["stage"], p["local"]) for p in rows["e2e"]["plan"]][0] == (1, False)
    assert [(p["stage"], p["local"]) for p in rows["base"]["plan"]][0] == (1, True)
    # the same budget buys the all-local stage 1 more steps than the end-to-end one
    assert rows["base"]["steps"][0] > rows["e2e"]["steps"][0]
    # an explicit plan is run as given, whatever the budget
    assert [(p["stage"], p["steps"]) for p in rows["fixed"]["plan"]] == [(1, 2), (2, 1)]
    assert rows["fixed"]["steps"] == [2, 1, 0]
    bad = tmp_path / "bad.json"
    for spec, match in (([{"name": "x", "local1": True, "local1_share": 0.5}], "local1_share"),
                        ([{"name": "x", "mse_weight": 0.0}], "mse_weight > 0"),
                        ([{"name": "x", "steps": [1, 2]}], "steps is"),
                        ([{"name": "x", "steps": [0, 0, 0]}], "steps is")):
        bad.write_text(json.dumps(spec))
        with pytest.raises(SystemExit, match=match):
            dv.variant_list(str(bad), None)


def test_a_failing_suite_costs_its_own_number_not_the_distilled_row(tmp_path, monkeypatch):
    """The student's stdlib perplexity raising (as an OOM did after a 15-minute distillation on an H100) is recorded
    under the row's eval_failed, and the row keeps its held-out KL and the suites after it."""
    real = dv._stdlib_ppl

    def stdlib_ppl(model, max_tokens):
        if model.name != "teacher":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, max_tokens)

    monkeypatch.setattr(dv, "_stdlib_ppl", stdlib_ppl)
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps([{"name": "base"}]))
    out = tmp_path / "out"
    dv.main(["--toy", "--variants", str(variants), "--minutes", "0.02", "--rate", "30000", "--stdlib-ppl", "300",
             "--lengths", "128", "--trials", "1", "--out", str(out), "--corpus-cache", str(tmp_path / "cache")])
    res = json.loads((out / "variants.json").read_text())
    assert "failed" not in res and res["teacher_stdlib_ppl"] > 1
    (row,) = res["variants"]
    assert row["eval_failed"] == {"stdlib_ppl": "RuntimeError: CUDA out of memory (simulated)"}
    assert "stdlib_ppl" not in row and row["held_out_kl"] > 0 and "passkey@128" in row["retrieval"]
    assert json.loads((out / "partial.json").read_text())["eval_failed"] == row["eval_failed"]
    assert "base: stdlib_ppl failed (RuntimeError: CUDA out of memory (simulated))" in (out / "variants.md").read_text()


def test_the_committed_12_minute_plan_fits_15_minutes_at_the_measured_rates():
    """Issue 14 allows at most 15 minutes of distillation: the plan's steps at the tok/s each stage measured on the
    H200 (the committed 4.5-minute run, same recipe and batch) must fit, and use most of it."""
    root = Path(__file__).resolve().parents[1]
    (v,) = dv.variant_list(str(root / "benchmarks/variants/attention_transfer_12min.json"), None)
    assert v["local1"] and v["batch_size"] == 16 and v["local1_share"] == 0 and v["chat_ratio"] == 0.1
    run = json.loads((root / "benchmarks/results/real_model/recipe_attention_transfer/variants.json").read_text())
    measured = run["variants"][0]
    assert measured["variant"]["local1"] and measured["variant"]["batch_size"] == 16
    tokens_per_step = 16 * 2048  # stage 3: 4 rows of 8,192
    seconds = sum(n * tokens_per_step / rate for n, rate in zip(v["steps"], measured["tok_per_s"]))
    assert 10 * 60 <= seconds <= 15 * 60, seconds


def test_without_a_rate_the_first_variant_probes_one(tmp_path):
    """No --rate: an end-to-end stage 1 is timed on a copy of the first student and every plan comes from it (how
    many steps it buys depends on the machine, so only the probe itself is checked). The chat and retrieval rows come
    from two worker processes here (`--row-workers`), as on the GPU machine by default, and the record says so."""
    out = tmp_path / "out"
    dv.main(["--toy", "--variants", "recipe", "--only", "base", "--minutes", "0.03", "--out", str(out),
             "--corpus-cache", str(tmp_path / "cache"), "--row-workers", "2"])
    res = json.loads((out / "variants.json").read_text())
    assert res["stage1_rate"]["measured"] and res["stage1_rate"]["tok_per_s"] > 0
    assert res["row_workers"] == 2


def test_traced_steps_of_each_stage_land_in_the_variants_own_folder(tmp_path):
    """--trace-steps / --trace-after reach every stage's DistillConfig: each stage's traced step is written under
    OUT/trace/<variant>/, as the session's TRACE_STEPS asks on the GPU."""
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "traced run", "steps": [3, 3, 0], "batch_size": 2}]))
    out = tmp_path / "out"
    dv.main(["--toy", "--variants", str(variants), "--out", str(out), "--corpus-cache", str(tmp_path / "cache"),
             "--trace-steps", "1", "--trace-after", "1"])
    folder = out / "trace" / dv._file_name("traced run")
    assert sorted(p.name for p in folder.glob("*.json")) == ["stage1_steps2-2.json", "stage2_steps2-2.json"]
    assert json.loads((folder / "stage2_steps2-2.json").read_text())["kernels"]


def test_best_student_prefers_humaneval_then_held_out_kl(tmp_path):
    rows = [{"name": "a", "held_out_kl": 0.2, "humaneval": 0.3, "saved": "/s/a"},
            {"name": "b", "held_out_kl": 0.4, "humaneval": 0.5, "saved": "/s/b"},
            {"name": "c", "held_out_kl": 0.1, "humaneval": 0.5, "saved": "/s/c"},
            {"name": "d", "held_out_kl": 0.0, "humaneval": 0.9}]  # not saved: cannot be evaluated
    f = tmp_path / "variants.json"
    f.write_text(json.dumps({"variants": rows}))
    assert dv.best_student(f) == Path("/s/c")
    for r in rows:
        r.pop("humaneval")
    f.write_text(json.dumps({"variants": rows}))
    assert dv.best_student(f) == Path("/s/c")
    f.write_text(json.dumps({"variants": rows[3:]}))
    assert dv.best_student(f) is None


def test_the_committed_chat_rows_ablation_plans_equal_steps_for_both_variants():
    """The chat-rows ablation differs in its rows only: same steps, split and recipe as its base."""
    root = Path(__file__).resolve().parents[1]
    a, b = dv.variant_list(str(root / "benchmarks/variants/chat_rows_4p5min.json"), None)
    assert {k: v for k, v in a.items() if k not in ("name", "chat_ratio")} == \
           {k: v for k, v in b.items() if k not in ("name", "chat_ratio")}
    assert a["chat_ratio"] == 0 and b["chat_ratio"] == 0.1 and a["local1"]


def test_the_committed_teacher_answers_ablation_differs_in_its_chat_file_only():
    root = Path(__file__).resolve().parents[1]
    answers = root / "modeling_tests" / "data" / "chats.jsonl"
    a, b = dv.variant_list(str(root / "benchmarks/variants/teacher_answers_4p5min.json"), None, answers)
    assert {k: v for k, v in a.items() if k not in ("name", "chat_file")} == \
           {k: v for k, v in b.items() if k not in ("name", "chat_file")}
    assert a["chat_file"] is None and b["chat_file"] == str(answers) and a["chat_ratio"] == 0.1


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "benchmarks/variants")
                                        .glob("*.json")))
def test_every_committed_variant_file_is_valid_and_plans_its_steps(name):
    """A session's plan is refused on the GPU only after the parts arrive (minutes of device time): check here."""
    answers = Path(__file__).resolve().parent / "data" / "chats.jsonl"  # stands in for a session's teacher answers
    root = Path(__file__).resolve().parents[1]
    searched = root / "benchmarks/results/real_model/placement_search/layer_map.json"  # the session's SEARCHED
    rows = dv.variant_list(str(root / "benchmarks/variants" / name), searched, answers)
    assert rows and all(v["steps"] is not None and sum(v["steps"]) > 0 for v in rows)
    for v in rows:  # every placement resolves on the real teacher's 28 layers, with the preset's JetBlock shape
        lm = dv.layer_map_of(v, 28, searched)
        assert len(lm.layer_types) == 28 and lm.jet == dv.resolve_layer_map("jet-nemotron-2b", 28).jet


@pytest.mark.parametrize("depths", ["0,2", "a,b", ","])
def test_bad_needle_depths_are_refused_before_anything_loads(depths):
    with pytest.raises(SystemExit, match="--depths"):
        dv.main(["--toy", "--depths", depths, "--out", "/nonexistent"])


def test_teacher_last_measures_the_students_first_and_keeps_each_measurement_as_it_comes(tmp_path, monkeypatch):
    """--teacher-last: the student's HumanEval and retrieval come before the teacher's, the table is written
    without the teacher's suites, and partial.json holds the student's row measurement by measurement."""
    import convert.eval.retrieval as retrieval_module

    out = tmp_path / "out"
    order, real = [], retrieval_module.retrieval

    def spy(model, *a, **k):
        order.append((model.name, sorted(json.loads((out / "partial.json").read_text())) if (
            out / "partial.json").exists() else None))
        return real(model, *a, **k)

    monkeypatch.setattr(retrieval_module, "retrieval", spy)
    tables = []
    real_write = dv.write
    monkeypatch.setattr(dv, "write", lambda res, o: real_write(res, o) or tables.append(
        ("teacher_retrieval" in res, (o / "variants.md").read_text())))
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "only", "steps": [2, 1, 0]}]))
    dv.main(["--toy", "--variants", str(variants), "--humaneval", "1", "--stdlib-ppl", "2000", "--teacher-last",
             "--out", str(out), "--corpus-cache", str(tmp_path / "cache")])
    # the student's retrieval ran after its HumanEval had been written; the teacher's after the student's row
    assert [name for name, _ in order] == ["only", "teacher"]
    assert {"humaneval", "held_out_kl", "ppl", "answers"} <= set(order[0][1]) and "retrieval" not in order[0][1]
    partial = json.loads((out / "partial.json").read_text())
    assert partial["name"] == "only" and {"humaneval", "retrieval"} <= set(partial)
    assert {"commit", "card", "date"} <= set(partial["stamp"][0])  # a cut run's record may be this file alone
    (first_has_teacher, first_table), (last_has_teacher, last_table) = tables[0], tables[-1]
    assert not first_has_teacher and last_has_teacher
    assert "| teacher | - | - | - | 0 | - |" in first_table and "| only |" in first_table
    res = json.loads((out / "variants.json").read_text())
    assert res["teacher_humaneval_run"]["problems"] == 1 and res["teacher_stdlib_ppl"] > 1
    assert res["seconds"]["teacher_suites"] > 0
    for name, run in (("only", res["variants"][0]["humaneval_run"]), ("teacher", res["teacher_humaneval_run"])):
        answers = [json.loads(line) for line in gzip.open(out / f"humaneval_{name}.jsonl.gz", "rt")]
        assert run["answers"] == f"humaneval_{name}.jsonl.gz"
        assert [a["task_id"] for a in answers] == ["HumanEval/0"] and sum(a["passed"] for a in answers) == run["passed"]
        assert {"completion", "result"} <= set(answers[0])
    assert f"({res['variants'][0]['stdlib_ppl'] / res['teacher_stdlib_ppl']:.2f}x)" in last_table
    # along the committed teacher answers' last chats (8 in a toy run): measured, and in the table
    a = res["variants"][0]["answers"]
    assert a["answers"] == res["answers_eval"]["chats"] == 8 and a["answer_tokens"] > 8
    assert a["kl"] > 0 and 0 <= a["exact"] <= a["before_miss"] <= 1 and 0 <= a["top1"] <= 1
    assert 0 <= a["head_top1"] <= 1 and a["head_kl"] >= 0
    assert f"| {a['kl']:.3f} / {a['top1']:.3f} / {a['exact']:.2f} / {a['head_top1']:.3f} |" in last_table


def test_no_student_trains_on_the_answers_it_is_measured_on(tmp_path):
    from types import SimpleNamespace

    from convert.chat_data import read_chats
    from convert.teacher_answers import write_chats
    from convert.tiny_teacher import build_tokenizer, read_corpus, stdlib_files

    tok = build_tokenizer(read_corpus(stdlib_files("train"), 50_000), 300)
    chats = [[{"role": "user", "content": f"Write f{i}.\n```python\ndef f{i}(x):\n```"},
              {"role": "assistant", "content": f"```python\ndef f{i}(x):\n    return x + {i}\n```"}] for i in range(6)]
    path = write_chats(tmp_path / "answers.jsonl.gz", chats)
    variants = [{"name": "corpus chats", "chat_file": None}, {"name": "these chats", "chat_file": str(path)}]
    args = SimpleNamespace(answers_eval_file=path, answers_eval=2, toy=False)
    rows = dv.held_out_answers(variants, args, tok, tmp_path / "out")
    assert variants[0]["chat_file"] is None
    trained = read_chats(variants[1]["chat_file"])
    assert trained == chats[:4] and Path(variants[1]["chat_file"]).parent == tmp_path / "out"
    assert len(rows) == 2 and "return x + 5" in tok.decode(rows[1][0][rows[1][1]:])
    with pytest.raises(SystemExit, match="holds 6 chats"):
        dv.held_out_answers([], SimpleNamespace(answers_eval_file=path, answers_eval=6, toy=False), tok, tmp_path)


def test_only_reads_names_that_hold_commas():
    names = {"base, 3 min", "chat rows 0.25, 3 min", "base"}
    assert dv.only_names("chat rows 0.25, 3 min,base, 3 min,base", names) == \
        (["chat rows 0.25, 3 min", "base, 3 min", "base"], [])
    assert dv.only_names("base,nope, 3 min", names) == (["base"], ["nope", " 3 min"])


def test_a_shared_first_stage_is_trained_once_and_gives_what_training_it_again_gives(tmp_path):
    """Two variants with the same start, stage-1 plan and rows: the second loads the first's stage-1 weights. Its
    held-out KL after each stage, its stage-2 losses and its answers' measures are those of the same variant run
    alone, which trains its own stage 1 (bit-exact on the CPU); a variant whose stage 1 differs trains its own, and
    in between does not cost the later one its reuse (one kept stage did: knobs_v2's docstring variant, second,
    would have made the two after it train the base's stage 1 again)."""
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "a", "steps": [3, 2, 0]},
                                    {"name": "c", "steps": [2, 2, 0]},
                                    {"name": "b", "steps": [3, 2, 0], "lr": [1e-3, 1e-4, 1e-4]}]))
    common = ["--toy", "--variants", str(variants), "--corpus-cache", str(tmp_path / "cache")]
    dv.main(common + ["--out", str(tmp_path / "shared")])
    dv.main(common + ["--only", "b", "--out", str(tmp_path / "alone")])
    shared = {r["name"]: r for r in json.loads((tmp_path / "shared" / "variants.json").read_text())["variants"]}
    (alone,) = json.loads((tmp_path / "alone" / "variants.json").read_text())["variants"]
    assert shared["a"]["stage1_reused_from"] is None and alone["stage1_reused_from"] is None
    assert shared["b"]["stage1_reused_from"] == "a" and shared["c"]["stage1_reused_from"] is None
    b = shared["b"]
    assert b["held_out_kl_by_stage"] == alone["held_out_kl_by_stage"] and b["held_out_kl"] == alone["held_out_kl"]
    assert [h["loss"] for h in b["history"]] == [h["loss"] for h in alone["history"]]
    assert b["answers"] == alone["answers"]
    assert b["held_out_kl_by_stage"][1] != shared["a"]["held_out_kl_by_stage"][1]  # stage 2 did differ
    # the reused stage's seconds count in the budget, and the card time it saved is said
    assert b["seconds"]["reused_s"] > 0 and shared["a"]["seconds"]["reused_s"] == 0
    assert "b: " in (tmp_path / "shared" / "variants.md").read_text() and "its first stage 'a''s" in (
        tmp_path / "shared" / "variants.md").read_text()
    # --fresh-stages trains it anyway
    dv.main(common + ["--only", "a,b", "--fresh-stages", "--out", str(tmp_path / "fresh")])
    fresh = json.loads((tmp_path / "fresh" / "variants.json").read_text())["variants"]
    assert [r["stage1_reused_from"] for r in fresh] == [None, None] and fresh[1]["held_out_kl"] == b["held_out_kl"]


def test_first_stages_differ_by_what_changes_their_weights_only():
    from types import SimpleNamespace

    from convert.distill import DistillConfig

    args = SimpleNamespace(searched=None, seq_len=2048)
    v = dict(dv.BASE)
    rows = {"ratio": 0.1, "kinds": ["passkey"], "chat_ratio": 0.25, "chat_file": None}
    key = dv._first_stage_key(v, DistillConfig(stage=1, steps=138, lr=1e-3), args, rows)
    # held in bf16, frozen weights are what autocast casts them to anyway: the same stage
    assert key == dv._first_stage_key(v, DistillConfig(stage=1, steps=138, lr=1e-3, frozen_bf16=True), args, rows)
    for other in (dv._first_stage_key(v, DistillConfig(stage=1, steps=69, lr=1e-3), args, rows),
                  dv._first_stage_key(v, DistillConfig(stage=1, steps=138, lr=1e-3), args, rows | {"chat_ratio": 0.5}),
                  dv._first_stage_key(v | {"init": "random"}, DistillConfig(stage=1, steps=138, lr=1e-3), args, rows),
                  dv._first_stage_key(v, DistillConfig(stage=1, steps=138, lr=1e-3, fused_adam=True), args, rows)):
        assert other != key


def test_tokenise_only_fills_the_cache_that_the_run_then_reads(tmp_path, monkeypatch):
    """--tokenise-only (run beside save_teacher on the GPU) builds the corpus cache and stops; the run after it reads
    every source from that cache (stopped here once its corpus is built: the rest is other tests')."""
    built, real = [], dv.build_corpus
    monkeypatch.setattr(dv, "build_corpus", lambda *a, **k: built.append(real(*a, **k)) or built[-1])

    class Built(Exception):
        pass

    def stop(*a, **k):
        raise Built

    monkeypatch.setattr(dv, "teacher_on", stop)  # the first step after the corpus and the answers' rows
    common = ["--toy", "--variants", "recipe", "--only", "base", "--corpus-cache", str(tmp_path / "cache")]
    dv.main([*common, "--tokenise-only", "--out", str(tmp_path / "tokenise")])
    assert len(built) == 1 and not any(src.cache_hit for src in built[0].sources)
    assert not (tmp_path / "tokenise" / "variants.json").exists()  # tokenised, nothing else
    with pytest.raises(Built):
        dv.main([*common, "--out", str(tmp_path / "out")])
    assert len(built) == 2 and all(src.cache_hit for src in built[1].sources)
    assert built[1].train_tokens == built[0].train_tokens


def test_tokenise_only_refuses_a_missing_tokenizer_source(tmp_path):
    with pytest.raises(SystemExit, match="no such model folder or GGUF"):
        dv.main(["--teacher", str(tmp_path / "nope.gguf"), "--tokenise-only", "--out", str(tmp_path / "o")])


def test_own_answers_train_the_second_part_of_stage_2_on_what_the_student_wrote(tmp_path, monkeypatch):
    """On-policy distillation: stage 2 runs in two parts; between them the student (a copy, its weights untouched)
    answers function requests of the train files, every answer kept, and the second part's chat rows are drawn
    from exactly that file while the corpus walk goes on. (Stopped once the stages ran: the measurements are other
    tests'.)"""
    from convert.chat_data import read_chats

    class Distilled(BaseException):  # not an Exception: run_variant records those and goes on
        pass

    samplers, real_samplers = [], dv.stage_samplers
    monkeypatch.setattr(dv, "stage_samplers", lambda *a, **k: samplers.append((a, k, real_samplers(*a, **k))) or
                        samplers[-1][2])
    stages, real_distill = [], dv.distill

    def weights(model):
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def distill(student, teacher, sampler, cfg, **kw):
        before = weights(student)
        summary = real_distill(student, teacher, sampler, cfg, **kw)
        stages.append((cfg.stage, cfg.steps, sampler, before, weights(student)))
        return summary

    def stop(*a, **k):
        raise Distilled

    monkeypatch.setattr(dv, "distill", distill)
    monkeypatch.setattr(dv, "eval_kl", stop)  # the first measurement after the stages
    out = tmp_path / "out"
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "own", "steps": [1, 4, 0], "chat_ratio": 0.25, "split2": 0.5,
                                     "own_answers": 3}]))
    with pytest.raises(Distilled):
        dv.main(["--toy", "--variants", str(variants), "--answers-eval", "0", "--own-answers-tokens", "12",
                 "--teacher-last", "--out", str(out), "--corpus-cache", str(tmp_path / "cache")])
    assert [(stage, steps) for stage, steps, *_ in stages] == [(1, 1), (2, 2), (2, 2)]
    chats = read_chats(out / "own_answers_own.jsonl.gz")  # all 3 kept, whatever the toy student wrote
    assert len(chats) == 3 and all(c[1]["content"].startswith("```python\n") for c in chats)
    meta = json.loads((out / "own_answers_own.jsonl.gz.meta.json").read_text())
    assert meta["stats"]["asked"] == 3 and {"commit", "card", "date"} <= set(meta["stamp"][0])
    (_, plan, *_), _, first = samplers[0]
    (_, (part,), _, _, rows), kw, second = samplers[1]
    assert stages[1][2] is first[1] and stages[2][2] is second[0]  # the second part reads the new sampler
    after_first_part, before_second = stages[1][4], stages[2][3]  # the answering copy left the weights as they were
    assert all(torch.equal(after_first_part[n], w) for n, w in before_second.items())
    assert part.steps == 2 and rows["chat_file"] == str(out / "own_answers_own.jsonl.gz")
    # the corpus walk goes on after the rows the earlier parts drew
    assert kw["start_tokens"] == sum(c.steps * c.batch_size * 128 for c in plan[:2])


def test_variants_distil_on_the_measuring_teacher_not_a_second_copy(tmp_path, monkeypatch):
    """The teacher on the device (bf16 on a card) that measures every variant is the one each distillation trains
    on: handing `distill` the CPU teacher made it cast a second device copy, 3.6 GB of a 1.5B teacher on the card."""
    class Distilled(BaseException):  # not an Exception: run_variant records those and goes on
        pass

    placed, given = [], []
    monkeypatch.setattr(dv, "teacher_on", lambda t, dev, dtype=None: placed.append(copy.deepcopy(t)) or placed[-1])

    def distill(student, teacher, *a, **k):
        given.append(teacher)
        raise Distilled

    monkeypatch.setattr(dv, "distill", distill)
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "one", "steps": [1, 0, 0]}]))
    with pytest.raises(Distilled):
        dv.main(["--toy", "--variants", str(variants), "--answers-eval", "0", "--teacher-last", "--out",
                 str(tmp_path / "out"), "--corpus-cache", str(tmp_path / "cache")])
    assert len(placed) == 1 and len(given) == 1 and given[0] is placed[0]


@pytest.mark.parametrize("spec, match", [({"own_answers": 8}, "needs split2 > 0"),
                                         ({"split2": 1.0}, r"split2 is the share"),
                                         ({"split2": 0.5, "own_answers": -1}, r"split2 is the share"),
                                         ({"split2": 0.5, "own_answers": 8, "chat_ratio": 0.0}, "chat_ratio > 0")])
def test_bad_own_answers_settings_are_refused_before_anything_loads(tmp_path, spec, match):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", **spec}]))
    with pytest.raises(SystemExit, match=match):
        dv.variant_list(str(bad), None)


def test_own_answers_in_bf16_leave_the_trained_fp32_weights_as_they_are(tmp_path):
    """The GPU's path (a bf16 copy answers under autocast), here on the CPU: every answer written, the student's
    fp32 weights unchanged in value and dtype."""
    from distill_real import toy_models

    from convert.chat_data import read_chats
    from convert.qwen_to_jet import convert_model
    from convert.teacher_answers import function_heads

    teacher, _, tok = toy_models(tmp_path)
    student = convert_model(teacher, dv.layer_map_of({**dv.BASE, "name": "x"}, teacher.config.num_hidden_layers,
                                                     None)).float()
    heads = function_heads(*dv.TOY_CORPUS, 4)  # the toy run's train files, as its own answers' requests
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    stats = dv._own_answers(student, tok, heads, tmp_path / "own.jsonl.gz", torch.device("cpu"), True, 8)
    assert stats["asked"] == stats["answered"] == 4 and len(read_chats(tmp_path / "own.jsonl.gz")) == 4
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in student.named_parameters())


def test_stage_two_takes_its_own_micro_batch_and_trains_as_it_would_at_stage_ones(tmp_path, monkeypatch):
    """--micro-batch2 sets the rows a forward of stage 2 only (an 80 GB card fits stage 2 at fewer than stage 1);
    the gradient is accumulated over the same batch, so the student's losses are those of the default to rounding.
    --checkpoint2 recomputes stage 2's activations in its backward: the same losses again, stage 1 untouched."""
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "a", "steps": [2, 2, 0]}]))
    seen, real = [], dv.distill
    monkeypatch.setattr(dv, "distill", lambda s, t, smp, cfg, **k: seen.append((cfg.stage, cfg.micro_batch))
                        or checkpointed.append(cfg.gradient_checkpointing) or real(s, t, smp, cfg, **k))
    checkpointed = []
    common = ["--toy", "--variants", str(variants), "--corpus-cache", str(tmp_path / "cache")]
    dv.main(common + ["--out", str(tmp_path / "same")])
    assert seen == [(1, 2), (2, 2)]
    seen.clear()
    dv.main(common + ["--micro-batch2", "1", "--out", str(tmp_path / "one")])
    assert seen == [(1, 2), (2, 1)]
    seen.clear()
    checkpointed.clear()
    dv.main(common + ["--micro-batch2", "1", "--checkpoint2", "--out", str(tmp_path / "ckpt")])
    assert seen == [(1, 2), (2, 1)] and checkpointed == [False, True]
    same, one, ckpt = (json.loads((tmp_path / d / "variants.json").read_text())["variants"][0]
                       for d in ("same", "one", "ckpt"))
    assert [h["loss"] for h in one["history"]] == pytest.approx([h["loss"] for h in same["history"]], rel=1e-4)
    assert [h["loss"] for h in ckpt["history"]] == pytest.approx([h["loss"] for h in one["history"]], rel=1e-4)
    # a variant's batch below the rows a forward (batch 4 against the default 8 on a card) takes them all at once
    # (without that, its first stage fails: batch_size not a multiple of micro_batch)
    variants.write_text(json.dumps([{"name": "small", "steps": [2, 2, 0], "batch_size": 1}]))
    seen.clear()
    dv.main(common + ["--out", str(tmp_path / "small")])
    assert seen == [(1, 1), (2, 1)]


def _toy_run_seeing(variant: dict, fields: tuple[str, ...], tmp_path, monkeypatch) -> list[tuple]:
    """Run one toy `variant` into tmp_path/out; each stage's DistillConfig `fields`, in the order the stages ran."""
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([variant]))
    seen, real = [], dv.distill
    monkeypatch.setattr(dv, "distill", lambda s, t, smp, cfg, **k: seen.append(tuple(getattr(cfg, f) for f in fields))
                        or real(s, t, smp, cfg, **k))
    dv.main(["--toy", "--variants", str(variants), "--corpus-cache", str(tmp_path / "cache"),
             "--out", str(tmp_path / "out")])
    return seen


def test_a_stage_one_only_variant_is_measured_after_its_one_stage(tmp_path, monkeypatch):
    """knobs_v8_stage1.json's form: no stage 2, the held-out KL and each JetBlock's transfer loss after stage 1."""
    seen = _toy_run_seeing({"name": "stage 1 only, batch 4", "steps": [3, 0, 0], "batch_size": 4},
                           ("stage", "steps"), tmp_path, monkeypatch)
    assert seen == [(1, 3)]
    row = json.loads((tmp_path / "out" / "variants.json").read_text())["variants"][0]
    assert row["steps"] == [3, 0, 0] and len(row["held_out_kl_by_stage"]) == 1
    # the same student measured twice (on a GPU the second time as a bf16 model, hence the tolerance)
    assert row["held_out_kl"] == pytest.approx(row["held_out_kl_by_stage"][0], rel=0.05)
    jet = [i for i, t in enumerate(row["layer_types"]) if t == "jet"]
    assert sorted(map(int, row["held_out_mse_by_layer"])) == jet


def test_a_variants_warmup_reaches_its_stages_within_a_tenth_of_their_steps(tmp_path, monkeypatch):
    """knobs_v11's form: the warm-up is the variant's (the harness's 30 steps unless given), capped at a tenth of
    each stage's steps as before."""
    seen = _toy_run_seeing({"name": "a", "steps": [30, 10, 0], "batch_size": 2, "warmup": 2},
                           ("stage", "warmup_steps"), tmp_path, monkeypatch)
    assert seen == [(1, 2), (2, 1)]
    seen = _toy_run_seeing({"name": "b", "steps": [30, 0, 0], "batch_size": 2}, ("stage", "warmup_steps"),
                           tmp_path, monkeypatch)
    assert seen == [(1, 3)]


def test_a_variants_stage_two_takes_its_own_batch(tmp_path, monkeypatch):
    seen = _toy_run_seeing({"name": "a", "steps": [2, 3, 0], "batch_size": 2, "batch_size2": 4},
                           ("stage", "batch_size", "micro_batch"), tmp_path, monkeypatch)
    assert seen == [(1, 2, 2), (2, 4, 2)]
    row = json.loads((tmp_path / "out" / "variants.json").read_text())["variants"][0]
    assert row["tokens"] == (2 * 2 + 3 * 4) * 128  # the toy's rows of 128 tokens
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps([{"name": "b", "steps": [2, 3, 0], "batch_size2": 0}]))
    with pytest.raises(SystemExit, match=re.escape("batch_size2 is rows a step, an integer >= 1 (or null: "
                                                   "batch_size); got 0")):
        dv.variant_list(str(variants), None)


def test_a_budget_ends_each_stage_by_its_share():
    v = {"budget_s": 900.0, "split": [0.5, 0.5, 0.0]}
    one, two = dv.DistillConfig(stage=1, steps=700), dv.DistillConfig(stage=2, steps=10_000)
    assert dv._stage_ends([one, two], v) == [450, 900]
    # stage 2 in two parts (split2) shares its span by their caps
    halves = [dv.DistillConfig(stage=2, steps=n) for n in (3_000, 1_000)]
    assert dv._stage_ends([one, *halves], v) == [450, 450 + 0.75 * 450, 900]
    assert dv._stage_ends([one, two], {"budget_s": None, "split": [0.5, 0.5, 0.0]}) is None


def test_a_budget_needs_the_steps_it_caps(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps([{"name": "a", "budget_s": 60}]))
    with pytest.raises(SystemExit, match=re.escape("budget_s (seconds > 0) times the stages against their caps")):
        dv.variant_list(str(path), None)


def test_a_budgeted_variant_gives_each_stage_the_seconds_left_to_its_end_and_records_what_ran(tmp_path, monkeypatch):
    (one, n1, b1), (two, n2, b2) = _toy_run_seeing({"name": "a", "steps": [3, 10_000, 0], "budget_s": 24.0,
                                                    "split": [0.5, 0.5, 0.0]}, ("stage", "steps", "time_budget_s"),
                                                   tmp_path, monkeypatch)
    assert (one, n1, two, n2) == (1, 3, 2, 10_000)
    # stage 1 had until 12 s less the reserve; it stopped at its cap of 3 steps, and stage 2 has what is left of 24
    r = RESERVE_S
    assert 0 < b1 <= 12 - r and b1 < b2 <= 24 - r
    row = json.loads((tmp_path / "out" / "variants.json").read_text())["variants"][0]
    ran = [p["steps"] for p in row["plan"]]
    assert ran[0] == 3 and 10 <= ran[1] < 10_000 and row["steps"][:2] == ran
    assert row["tokens"] == sum(ran) * 16 * 128 and len(row["history"]) == sum(ran)
    # stage 1 (attention transfer) left each JetBlock's held-out transfer loss, keyed by layer
    jet = [i for i, t in enumerate(row["layer_types"]) if t == "jet"]
    assert sorted(map(int, row["held_out_mse_by_layer"])) == jet
    assert all(0 < m < 10 for m in row["held_out_mse_by_layer"].values())
