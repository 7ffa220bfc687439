"""A small Qwen2-architecture teacher built offline: a byte-level BPE trained on Python's stdlib sources and a
Qwen2ForCausalLM pretrained on the same text. Used by `jet-nemotron demo`, the tests and
`benchmarks/distill_quality.py`, so the whole pipeline runs with no download.

The corpus is every `.py` file under `sysconfig.get_paths()["stdlib"]` (code, docstrings and comments: ~30 MB
on CPython 3.11), sorted by path; files whose path hashes into the last 5% are held out for evaluation.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def stdlib_files(split: str = "train") -> list[Path]:
    """Sorted stdlib .py files of the split ("train" ~95%, "eval" ~5%, chosen by a hash of the path)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    held = lambda p: int(hashlib.md5(str(p.relative_to(root)).encode()).hexdigest(), 16) % 20 == 0  # noqa: E731
    out = [p for p in files if held(p) == (split == "eval")]
    if not out:
        raise FileNotFoundError(f"no stdlib sources found under {root}")
    return out


def read_corpus(files: list[Path], max_chars: int | None = None) -> list[str]:
    texts, n = [], 0
    for f in files:
        t = f.read_text(errors="replace")
        texts.append(t)
        n += len(t)
        if max_chars is not None and n >= max_chars:
            break
    return texts


def build_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Byte-level BPE (GPT-2 style pre-tokenisation) with Qwen-style special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass
class TeacherSize:
    vocab: int = 1024
    hidden: int = 128
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384


def build_qwen2(size: TeacherSize, tokenizer, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                      num_hidden_layers=size.layers, num_attention_heads=size.heads,
                      num_key_value_heads=size.kv_heads, max_position_embeddings=4096, tie_word_embeddings=True,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return Qwen2ForCausalLM(cfg)


def pretrain(model, rows: torch.Tensor, steps: int, batch: int = 16, lr: float = 3e-3, device="cpu",
             bf16: bool = False, seed: int = 0, log=print) -> list[float]:
    """Plain next-token training on packed rows [N, L] (AdamW, warmup + cosine). Returns the loss per step."""
    from tqdm.auto import tqdm

    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    warm = max(1, steps // 20)
    losses = []
    bar = tqdm(range(steps), desc="pretraining teacher", unit="step")
    t0 = time.perf_counter()
    for s in bar:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        x = rows[torch.randint(0, rows.shape[0], (batch,), generator=gen)].to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{(s + 1) * x.numel() / (time.perf_counter() - t0):.0f}")
    model.eval()
    return losses
