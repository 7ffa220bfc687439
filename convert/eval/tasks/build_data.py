"""Writes the example lm-eval tasks' local data (python_*.jsonl): Python expressions whose answers Python itself
computes, so every label is right by construction. Rerun to regenerate; the seed fixes the rows.

    python convert/eval/tasks/build_data.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = ["len({l})", "sorted({l})[0]", "max({l})", "min({l})", "sum({l})", "{l}[-1]", "{l}[1:3]",
             "{a} * {b}", "{a} + {b} * {c}", "({a} + {b}) % {c}", "{a} // {c}", "'{w}'.upper()", "'{w}'[::-1]",
             "len('{w}')", "'{w}'.count('a')", "abs({a} - {b} * {c})"]
WORDS = ["banana", "parser", "lambda", "tensor", "kernel", "alpaca", "cache", "window"]


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        t = rng.choice(TEMPLATES)
        expr = t.format(l=[rng.randint(0, 9) for _ in range(rng.randint(3, 6))], a=rng.randint(2, 30),
                        b=rng.randint(2, 30), c=rng.randint(2, 9), w=rng.choice(WORDS))
        value = eval(expr)  # noqa: S307 (our own templates)
        answer = repr(value)
        # distractors: the same expression with one digit changed, then near misses of the value
        wrong = [repr(eval(expr.replace(str(d), str((d + 1) % 10), 1))) for d in range(10) if str(d) in expr]
        if isinstance(value, int):
            wrong += [repr(value + k) for k in (1, -1, 2, 10)]
        wrong += [repr(value[::-1]), repr(value * 2)] if not isinstance(value, int) else []
        wrong = list(dict.fromkeys(w for w in wrong if w != answer))[:3]
        if len(wrong) < 3:
            continue
        out.append({"expr": expr, "answer": answer, "choices": sorted([answer] + wrong)})
    return out


def main() -> None:
    data = rows(24)
    with open(HERE / "python_expressions.jsonl", "w") as f:
        for r in data:
            f.write(json.dumps({**r, "label": r["choices"].index(r["answer"])}) + "\n")
    with open(HERE / "python_programs.jsonl", "w") as f:  # whole short programs for loglikelihood_rolling
        for i in range(0, len(data), 4):
            body = "".join(f"    x{j} = {r['expr']}\n    assert x{j} == {r['answer']}\n" for j, r in enumerate(data[i:i + 4]))
            f.write(json.dumps({"text": f"def check_{i // 4}():\n{body}\n\ncheck_{i // 4}()\n"}) + "\n")


if __name__ == "__main__":
    main()
