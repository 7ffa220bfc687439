"""Generate text with a Jet-Nemotron model and report speed and cache size.

    python examples/generate.py --model path/to/model --prompt "def fibonacci(n):" --max-new-tokens 64
    python examples/generate.py --model path/to/model --static      # preallocated cache + compiled decode (GPU)

Prints the continuation, decode tok/s and the cache's bytes per layer kind (KV only for full-attention layers,
a window for sliding layers, a fixed state for JetBlocks).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(model_path: str, prompts: list[str], max_new_tokens: int = 64, static: bool = False,
             do_sample: bool = False, temperature: float = 0.7) -> list[str]:
    """Generate a continuation for each prompt (left-padded batch); print tok/s and cache bytes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jet_nemotron import CACHE_NAME  # `.cache` on transformers >= 5.24, `.past_key_values` before

    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left", trust_remote_code=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True,
                                                 dtype=torch.bfloat16 if cuda else torch.float32)
    model = model.to("cuda" if cuda else "cpu").eval()
    inputs = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
              return_dict_in_generate=True)
    if do_sample:
        kw["temperature"] = temperature
    if static:
        kw["cache_implementation"] = "static"
    start = time.perf_counter()
    out = model.generate(**inputs, **kw)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    print(f"{new.numel() / seconds:.1f} tok/s over {new.shape[0]} sequence(s) (includes prefill"
          f"{' and compilation' if static else ''})")
    cache = getattr(out, CACHE_NAME)
    if hasattr(cache, "nbytes_per_layer_type"):
        sizes = cache.nbytes_per_layer_type()
        print("cache: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", action="append", default=None, help="repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--static", action="store_true", help="static cache + compiled decode step")
    parser.add_argument("--sample", action="store_true")
    args = parser.parse_args(argv)
    for text in generate(args.model, args.prompt or ["The quick brown fox"], args.max_new_tokens, args.static,
                         args.sample):
        print("---\n" + text)


if __name__ == "__main__":
    main()
