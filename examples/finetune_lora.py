"""Fine-tune a Jet-Nemotron model with PEFT LoRA, merge the adapter, save, and reload the merged model.

    python examples/finetune_lora.py --model path/or/hub-id --data my.txt --out runs/lora --steps 200

LoRA targets are named explicitly: attention and JetBlock projections share the names q/k/v/o_proj, the
JetBlock adds its output gate g_proj, and the MLP has gate/up/down_proj. The JetBlock's tiny a_proj/b_proj
(decay and write strength per head) and the kernel generator are left frozen: low-rank updates buy
little there.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "g_proj", "gate_proj", "up_proj", "down_proj"]
log = logging.getLogger("finetune_lora")


def token_blocks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Pack a 1-D token stream into [N, seq_len] blocks (the tail that does not fill a block is dropped)."""
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"the data has {ids.numel()} tokens, fewer than one block of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def finetune_lora(
    model,
    blocks: torch.Tensor,
    out_dir: str | Path,
    steps: int = 100,
    batch_size: int = 4,
    lr: float = 1e-3,
    rank: int = 8,
    tokenizer=None,
) -> dict:
    """Train LoRA adapters on `blocks` [N, T], merge them, write the merged model to `out_dir` (via a temporary
    folder renamed at the end) and reload it. Returns losses and the reload check."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from tqdm.auto import tqdm

    model.train()
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                  target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s: %.2f M trainable parameters", rank, LORA_TARGETS, trainable / 1e6)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(0)
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="lora", disable=None)
    for step in bar:
        idx = torch.randint(0, blocks.shape[0], (batch_size,), generator=gen)
        batch = blocks[idx].to(next(peft_model.parameters()).device)
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tok_s = (step + 1) * batch.numel() / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:.0f}")

    merged = peft_model.merge_and_unload().eval()
    out_dir = Path(out_dir)
    # the temporary folder sits beside the target: a rename across file systems (the system temp dir) fails
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    probe = blocks[:2]
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True, dtype=merged.dtype).eval()
    with torch.no_grad():
        a = merged(probe.to(next(merged.parameters()).device)).logits.float().cpu()
        b = reloaded(probe).logits.float().cpu()
    max_diff = (a - b).abs().max().item()
    log.info("merged model written to %s; reload max |logit diff| = %.2e", out_dir, max_diff)
    return {"losses": losses, "reload_max_abs_diff": max_diff, "merged": merged, "reloaded": reloaded}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder or Hub id of a Jet-Nemotron model")
    parser.add_argument("--data", required=True, type=Path, help="a UTF-8 text file to fine-tune on")
    parser.add_argument("--out", required=True, type=Path, help="where the merged model goes")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True,
                                                 dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    if torch.cuda.is_available():
        model = model.cuda()
    if not args.data.is_file():
        raise FileNotFoundError(f"--data {args.data} is not a file")
    ids = torch.tensor(tok(args.data.read_text(encoding="utf-8"))["input_ids"])
    result = finetune_lora(model, token_blocks(ids, args.seq_len), args.out, args.steps, args.batch_size, args.lr,
                           args.rank, tokenizer=tok)
    first, last = result["losses"][0], result["losses"][-1]
    print(f"loss {first:.3f} -> {last:.3f} (ppl {math.exp(first):.1f} -> {math.exp(last):.1f}); "
          f"merged model in {args.out}")


if __name__ == "__main__":
    main()
