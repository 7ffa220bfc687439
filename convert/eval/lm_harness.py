"""lm-evaluation-harness on a model folder, exactly as a user runs it:
`lm_eval run --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks TASKS`, in a subprocess.

lm-eval's own tasks download their data; `tasks/` beside this file holds example tasks over local JSON
(`python_mc`: loglikelihood, `python_gen`: generate_until, `python_rolling`: loglikelihood_rolling; tag
`jet_python` runs all three). lm-eval reads a task's `data_files` relative to its working directory, so the
harness runs inside that folder and every path handed to it is absolute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def model_args(model: str, dtype: str | None = None) -> str:
    """`--model_args` of a folder or a .gguf file (lm-eval's hf model takes gguf_file= like transformers)."""
    p = Path(model)
    if not p.exists():  # a Hub id
        return f"pretrained={model},trust_remote_code=True" + (f",dtype={dtype}" if dtype else "")
    p = p.resolve()
    args = f"pretrained={p.parent},gguf_file={p.name}" if p.is_file() else f"pretrained={p}"
    return args + ",trust_remote_code=True" + (f",dtype={dtype}" if dtype else "")


def lm_eval(model: str, tasks: str, limit: int | None = None, batch_size: int | str = 8, device: str | None = None,
            dtype: str | None = None, include_path: Path = TASKS_DIR, timeout: float = 3600) -> dict:
    """{task: {metric: value}} of lm-eval's run on `model` (folder or .gguf) for comma-separated `tasks`."""
    if not tasks.strip():
        raise ValueError("lm-eval: no tasks given (use --suite lm-eval:TASK1,TASK2)")
    device = device or ("cuda" if _cuda() else "cpu")
    with tempfile.TemporaryDirectory(prefix="lm-eval-") as tmp:
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args(model, dtype),
               "--tasks", tasks, "--include_path", str(Path(include_path).resolve()), "--batch_size",
               str(batch_size), "--device", device, "--output_path", tmp]
        if limit:
            cmd += ["--limit", str(limit)]
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        print("running", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=include_path, env=env, timeout=timeout, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"lm-eval on {model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        found = sorted(Path(tmp).rglob("results_*.json"))
        if not found:
            raise RuntimeError(f"lm-eval on {model} wrote no results_*.json under its --output_path")
        results = json.loads(found[-1].read_text())["results"]
    print(proc.stdout[-2000:])
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}
            for task, metrics in results.items()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
