"""The GPU session's chain on the CPU with a tiny GGUF, so a broken script costs a CI run, not a GPU session:
distill_real (GGUF -> convert -> tokenise -> stages 1-3 in one process -> the fp32 teacher saved with its
tokenizer) and then eval_real of the distilled student against that teacher folder."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "modeling_tests"))


def test_distill_real_then_eval_real_on_a_tiny_gguf(tmp_path):
    from test_convert_conversion import tiny_qwen
    from test_convert_gguf import write_qwen2_gguf

    from convert.tiny_teacher import build_tokenizer, read_corpus, stdlib_files

    tok = build_tokenizer(read_corpus(stdlib_files("train"), 100_000), vocab_size=400)
    write_qwen2_gguf(tiny_qwen("qwen2", vocab=len(tok)), tok, tmp_path / "tiny.gguf")
    stdlib = stdlib_files("train")[0].parent
    src = tmp_path / "src"
    for pkg in ("json", "email"):  # a small corpus: one package trains, one is held out
        (src / pkg).mkdir(parents=True)
        for f in sorted((stdlib / pkg).glob("*.py")):
            (src / pkg / f.name).write_text(f.read_text())
    work, out = tmp_path / "work", tmp_path / "out"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JET_NEMOTRON_COMMIT": "test"}
    run = subprocess.run([sys.executable, "benchmarks/distill_real.py", "--gguf", str(tmp_path / "tiny.gguf"),
                          "--work", str(work), "--out", str(out), "--site-packages", str(src), "--held-out", "json",
                          "--layer-map", "jet,attn,jet,jet", "--steps", "3,2,2", "--seq-len", "64",
                          "--stage3-seq-len", "128", "--batch-size", "4", "--micro-batch", "2",
                          "--stage3-micro-batch", "1", "--stages", "0,1,2,3", "--save-teacher",
                          "--passkey-trials", "1", "--eval-rows", "4"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((out / "results_stages0123.json").read_text())
    assert res["steps"] == [3, 2, 2] and res["stamp"][0]["commit"] == "test"
    assert set(res["wall_s"]) >= {"load", "tokenise", "distil", "evaluate"}
    assert [s["config"]["stage"] for s in res["stages"]] == [1, 2, 3]
    assert {"prepare", "held_out_kl_before", "steps_and_finish"} <= set(res["stages"][0]["seconds"])
    assert (work / "teacher_fp32" / "tokenizer.json").exists() and (work / "distilled" / "config.json").exists()
    ev = subprocess.run([sys.executable, "benchmarks/eval_real.py", "--model", str(work / "distilled"),
                         "--baseline", str(work / "teacher_fp32"), "--out", str(tmp_path / "ev"), "--suite", "niah",
                         "--text", str(src / "json"), "--lengths", "230", "--trials", "1"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "eval" / "eval.json").read_text())
    assert report["stamp"][0]["commit"] == "test" and "baseline" in report["suites"]["niah"]


def test_variants_on_a_saved_teacher_folder(tmp_path):
    """pipeline-variants' chain: save_teacher (GGUF -> fp32 folder with tokenizer), then distill_variants on it."""
    from test_convert_conversion import tiny_qwen
    from test_convert_gguf import write_qwen2_gguf

    from convert.tiny_teacher import build_tokenizer, read_corpus, stdlib_files

    tok = build_tokenizer(read_corpus(stdlib_files("train"), 100_000), vocab_size=400)
    write_qwen2_gguf(tiny_qwen("qwen2", vocab=len(tok)), tok, tmp_path / "tiny.gguf")
    stdlib = stdlib_files("train")[0].parent
    src = tmp_path / "src"
    for pkg in ("json", "email"):
        (src / pkg).mkdir(parents=True)
        for f in sorted((stdlib / pkg).glob("*.py")):
            (src / pkg / f.name).write_text(f.read_text())
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JET_NEMOTRON_COMMIT": "test"}
    save = subprocess.run([sys.executable, "benchmarks/save_teacher.py", str(tmp_path / "tiny.gguf"),
                           str(tmp_path / "teacher")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert save.returncode == 0, save.stderr[-3000:]
    run = subprocess.run([sys.executable, "benchmarks/distill_variants.py", "--variants", "recipe", "--only",
                          "end-to-end-stage1,base", "--teacher", str(tmp_path / "teacher"), "--site-packages",
                          str(src), "--held-out", "json", "--minutes", "0.01", "--rate", "20000", "--seq-len", "64",
                          "--stage3-seq-len", "128", "--micro-batch", "4", "--lengths", "230", "--trials", "1",
                          "--eval-rows", "4", "--out", str(tmp_path / "variants")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "variants" / "variants.json").read_text())
    assert [v["name"] for v in res["variants"]] == ["end-to-end-stage1", "base"]
    base, local = res["variants"]  # the end-to-end stage 1 first, as the rate's reference
    assert base["steps"][1:] == local["steps"][1:] and local["steps"][0] > base["steps"][0]  # cheaper stage-1 steps


def test_teacher_answers_on_a_saved_teacher_folder(tmp_path):
    """ANSWERS=N's step on a saved teacher folder: the teacher loads, heads come from the train package only, every
    head is asked; a tiny random teacher never closes its block, so nothing is kept and the script says so (exit 1)
    without writing a file: the GPU session's variant then fails alone."""
    from test_convert_conversion import tiny_qwen

    from convert.tiny_teacher import build_tokenizer, read_corpus, stdlib_files

    tok = build_tokenizer(read_corpus(stdlib_files("train"), 100_000), vocab_size=400)
    teacher = tiny_qwen("qwen2", vocab=len(tok))
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    stdlib = stdlib_files("train")[0].parent
    for pkg in ("json", "email"):
        (tmp_path / "src" / pkg).mkdir(parents=True)
        for f in sorted((stdlib / pkg).glob("*.py")):
            (tmp_path / "src" / pkg / f.name).write_text(f.read_text())
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JET_NEMOTRON_COMMIT": "test"}
    out = tmp_path / "answers.jsonl.gz"
    run = subprocess.run([sys.executable, "benchmarks/teacher_answers.py", "--teacher", str(tmp_path / "teacher"),
                          "--site-packages", str(tmp_path / "src"), "--held-out", "json", "--n", "6",
                          "--batch-size", "4", "--max-new-tokens", "8", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "6 function heads" in run.stdout, run.stdout + run.stderr[-2000:]
    assert "kept no answer of 6 asked: nothing written" in run.stderr and not out.exists()
