"""How far a bf16-stored JetBlock state moves a model's outputs over token-by-token decoding, beside running the whole
model in bf16 (the usual inference precision), on CPU or GPU.

    jet-nemotron demo                      # makes jet_nemotron_demo/jet-nemotron-demo, a small distilled student
    python benchmarks/state_dtype_drift.py jet_nemotron_demo/jet-nemotron-demo --tokens 512

Decodes the same text three ways, one token at a time through the cache: fp32 model with its fp32 state (the
reference), fp32 model with recurrent_state_dtype="bfloat16", and the model in bf16 with an fp32 state. Prints
perplexity, the relative logits difference against the reference (overall and per 128 tokens, to show whether it
grows) and greedy-token agreement. Text: this Python's own `textwrap.py` and `json/__init__.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from jet_nemotron import JetNemotronCache  # noqa: E402


@torch.no_grad()
def decode(model, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Perplexity of ids[1:] and the logits [N, V] (fp32), decoding ids [1, N + 1] one token at a time."""
    cache, nll, logits = JetNemotronCache(model.config), 0.0, []
    for t in range(ids.shape[1] - 1):
        lg = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits[0, -1].float()
        logits.append(lg)
        nll -= torch.log_softmax(lg, -1)[ids[0, t + 1]].item()
    return math.exp(nll / (ids.shape[1] - 1)), torch.stack(logits)


def drift(folder: str, tokens: int = 512, device: str = "cpu") -> dict:
    """The three decodes of the module docstring; returns their numbers."""
    tok = AutoTokenizer.from_pretrained(folder)
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = (lib / "textwrap.py").read_text() + (lib / "json" / "__init__.py").read_text()
    ids = torch.tensor(tok(text)["input_ids"][: tokens + 1], device=device)[None]
    runs = {}
    for name, dtype, state in (("reference", torch.float32, "float32"), ("bf16 state", torch.float32, "bfloat16"),
                               ("bf16 model", torch.bfloat16, "float32")):
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype,
                                                     recurrent_state_dtype=state).to(device).eval()
        runs[name] = decode(model, ids)
    ref = runs["reference"][1]
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    out = {"tokens": ids.shape[1] - 1, "ppl": {k: v[0] for k, v in runs.items()}}
    for name in ("bf16 state", "bf16 model"):
        lg = runs[name][1]
        out[name] = {"logits_rel_diff": rel(lg, ref),
                     "greedy_agreement": (lg.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                     "per_128_tokens": [rel(lg[i : i + 128], ref[i : i + 128]) for i in range(0, len(ref), 128)]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a saved Jet-Nemotron model folder")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(json.dumps(drift(args.folder, args.tokens, args.device), indent=1))


if __name__ == "__main__":
    main()
