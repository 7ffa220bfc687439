"""`jet-nemotron demo`: the whole pipeline on an embedded default, offline, in a few minutes on 2 CPU cores.

1. Train a byte-level BPE (1024 tokens) on ~1 MB of Python's stdlib sources and pretrain a 6-layer Qwen2
   teacher (hidden 128) on them; save it as a normal Qwen2 checkpoint folder.
2. Convert it with a 2B-style map (JetBlocks everywhere but one full-attention and one sliding layer).
3. Distil: stage 1 (JetBlocks only, KL + attention MSE), stage 2 (everything, KL).
4. Reload the saved folder with `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` and
   print a generation from teacher and student.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch

from .distill import DistillConfig
from .tiny_teacher import TeacherSize, build_qwen2, build_tokenizer, pretrain, read_corpus, stdlib_files

DEMO_MAP = "jet,jet,attn,jet,swa,jet"


def make_teacher(out: Path, size: TeacherSize = TeacherSize(), steps: int = 150, seq_len: int = 128,
                 corpus_chars: int = 1_000_000, seed: int = 0, device: str = "cpu", bf16: bool = False,
                 batch: int = 16, lr: float = 3e-3):
    """Tokenizer + pretrained Qwen2 teacher saved to `out` (a plain Qwen2 folder). Returns (model, tok, rows)."""
    from .data import pack_documents

    texts = read_corpus(stdlib_files("train"), corpus_chars)
    tok = build_tokenizer(texts, size.vocab)
    packed = pack_documents((("stdlib", t) for t in texts), tok, seq_len, eval_fraction=0.0)
    model = build_qwen2(size, tok, seed)
    losses = pretrain(model, packed.train, steps, batch=batch, lr=lr, device=device, bf16=bf16, seed=seed)
    print(f"teacher: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, loss {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / 10:.3f} nats/token after {steps} steps of {batch}x{seq_len} tokens")
    model.to("cpu")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # made here from Python's own sources: the converted model's card inherits this licence
    (out / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A tiny Qwen2 teacher made by `jet-nemotron demo`\n")
    return model, tok


def run_demo(workdir: str | Path = "jet_nemotron_demo", teacher_steps: int = 150, stage1_steps: int = 40,
             stage2_steps: int = 40, seq_len: int = 128, prompt: str = "def __init__(self", overwrite: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .pipeline import convert_checkpoint, distill_checkpoint

    torch.manual_seed(0)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir, conv_dir, out_dir = work / "teacher-qwen2", work / "converted", work / "jet-nemotron-demo"
    print(f"[1/4] building the teacher in {teacher_dir}")
    make_teacher(teacher_dir, steps=teacher_steps, seq_len=seq_len)
    print(f"[2/4] converting with map {DEMO_MAP}")
    # fp32: the converted model is distilled right away, in memory
    student, tok, teacher = convert_checkpoint(str(teacher_dir), conv_dir, DEMO_MAP, window=32, dtype="float32",
                                               overwrite=overwrite)
    print("[3/4] distilling")
    # one corpus folder: 60 training modules, and 20 held-out ones (whole files) under heldout/
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    (data / "heldout").mkdir(parents=True)
    for i, p in enumerate(stdlib_files("train")[:60]):
        shutil.copyfile(p, data / f"{i:02d}_{p.name}")
    for i, p in enumerate(stdlib_files("eval")[:20]):
        shutil.copyfile(p, data / "heldout" / f"{i:02d}_{p.name}")
    s1 = DistillConfig(stage=1, steps=stage1_steps, batch_size=8, micro_batch=8, lr=3e-3, warmup_steps=4,
                       log_every=10)
    s2 = replace(s1, stage=2, steps=stage2_steps, lr=1e-3)
    res = distill_checkpoint(str(teacher_dir), str(conv_dir), out_dir, [str(data)], seq_len=seq_len, stage1=s1,
                             stage2=s2, max_tokens=200_000, corpus={"held_out": ["heldout"]}, overwrite=overwrite,
                             teacher_model=teacher, student_model=student, tokenizer=tok)
    print(f"[4/4] reloading {out_dir} with trust_remote_code=True and generating")
    model = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(out_dir, trust_remote_code=True)
    ids = tok(prompt, return_tensors="pt")
    for label, m in (("teacher", teacher), ("student", model)):
        # greedy, with a repetition penalty: a model this small otherwise loops on one token
        gen = m.generate(**ids, max_new_tokens=40, do_sample=False, repetition_penalty=1.3, no_repeat_ngram_size=3,
                         pad_token_id=tok.eos_token_id)
        print(f"--- {label} ---\n{tok.decode(gen[0])}")
    print(f"done: {out_dir} (teacher ppl {res['ppl_teacher']:.2f}, student ppl {res['ppl_student']:.2f}, "
          f"loss curve {out_dir / 'loss_curve.png'})")
    return res
