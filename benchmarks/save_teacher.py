"""Save a GGUF teacher dequantised (fp32 safetensors + its tokenizer) as a model folder, so the later processes of a
GPU session load it in seconds instead of reading the GGUF again. Through transformers' GGUF loading this took ~90 s
for the 1.5B GGUF on the H200 machine; `load_source` now dequantises on the GPU (`convert/gguf_dequant.py`).

    python benchmarks/save_teacher.py qwen2.5-coder-1.5b-instruct-q4_k_m.gguf runs/teacher_fp32
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    import torch

    from convert.export import load_source, save_dequantised

    gguf, folder = (argv or sys.argv[1:])[:2]
    t = time.perf_counter()
    teacher, tok = load_source(gguf, None, torch.float32)
    save_dequantised(teacher, tok, folder)
    print(f"saved {folder} in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
