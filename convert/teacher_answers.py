"""A model's own answers to function requests, as chats to distil on (`--chat-file`): the teacher's, or a student's.

Chat rows built from the corpus (`chat_data.ChatCodeStream`) answer each request with the function as the corpus
wrote it; the student then learns the teacher's predictions on text the teacher would not have written. Greedy
decoding, which HumanEval scores, follows the teacher's own answers instead. So this asks the teacher for the
functions first, in the form HumanEval asks: the request as a user turn, the answer begun as a code block holding
the function's head, continued greedily to the closing fence. Answers that do not parse as Python with their head,
or that ran out of tokens before the fence, are dropped.

A student's own answers (`keep_all`) are kept whole, closed or not, parsing or not: the teacher's predictions along
the text the student writes, mistakes included, are what on-policy distillation trains on (`distill_variants`'
`own_answers`).

    heads = function_heads([site_packages], held_out=["pandas"], n=4096)
    chats, stats = answer_chats(wrap(teacher, tok), heads)
    write_chats("answers.jsonl.gz", chats, meta)

Heads come from the sources' .py files, held-out files excluded by the corpus's own rule (`corpus.is_held_out`), in
the corpus's fixed pseudo-random file order, so a run is reproducible and a held-out file is never asked about.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import time
from pathlib import Path

from .chat_data import INSTRUCTIONS, answer_prompt, functions, user_turn
from .corpus import is_held_out, list_units, visiting_order

FENCE = "```"


def function_heads(sources: list[str | Path], held_out: list[str] | None = None, n: int = 4096, seed: int = 0,
                   max_head_chars: int = 1200) -> list[tuple[str, str]]:
    """Up to `n` distinct (instruction, function head) pairs from the sources' train .py files. Heads longer than
    `max_head_chars` (long docstrings) are skipped; the instruction is drawn from `chat_data.INSTRUCTIONS`."""
    rng, seen, out = random.Random(seed), set(), []
    for source in sources:
        kind, units, _ = list_units(Path(source), "text")
        if kind != "files":
            raise ValueError(f"{source}: function heads are read from a folder of .py files, not a table of rows")
        for u in visiting_order([u for u in units if u["rel"].endswith(".py") and not is_held_out(u["rel"], held_out or [], 0)]):
            try:
                text = Path(u["path"]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for head, _ in functions(text):
                if head in seen or len(head) > max_head_chars:
                    continue
                seen.add(head)
                out.append((rng.choice(INSTRUCTIONS), head))
                if len(out) == n:
                    return out
    return out


def _answer_text(head: str, completion: str, keep_all: bool = False) -> str | None:
    """The assistant's whole code block, or None when the completion does not close its block or does not parse;
    `keep_all`: the block as written up to its fence (or the end), closed, whatever it holds."""
    at = completion.find(FENCE)
    if keep_all:
        return f"{FENCE}python\n{head}{completion[:at if at >= 0 else None].rstrip()}\n{FENCE}"
    if at < 0:
        return None  # ran out of tokens inside the block
    body = completion[:at].rstrip()
    code = head + body
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    if not body.strip():
        return None
    return f"{FENCE}python\n{code}\n{FENCE}"


def answer_chats(m, heads: list[tuple[str, str]], max_new_tokens: int = 384, batch_size: int = 256,
                 compiled: bool | None = None, time_budget_s: float | None = None,
                 keep_all: bool = False) -> tuple[list[list[dict]], dict]:
    """(chats [user, assistant], stats) of the model `m` (an `eval.models.EvalModel`) answering each head greedily.

    Batches run in order until `time_budget_s` (if given) is spent; every batch is padded to the longest prompt of
    all, so with `compiled` one compiled decode step serves them all. `keep_all`: every answer is kept (a student's
    own, see the module docstring), else those without a closing fence or that do not parse are dropped. stats:
    asked, answered (kept), dropped_unclosed / dropped_unparsed (no closing fence / does not parse; kept anyway under
    `keep_all`), generated tokens, seconds, tok/s, keep_all.
    """
    from .eval.generation import greedy

    tok = m.tok
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{m.name}: the tokenizer has no chat template; its answers would not be chats")
    prompts = [tok(answer_prompt(tok, instruction, head), add_special_tokens=False)["input_ids"]
               for instruction, head in heads]
    width = max(map(len, prompts))
    chats, generated, unclosed, unparsed, asked = [], 0, 0, 0, 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
        part = slice(start, start + batch_size)
        new = greedy(m, prompts[part], max_new_tokens, batch_size, stop_strings=[FENCE], compiled=compiled,
                     desc=f"{m.name} answers", pad_to=width)
        for (instruction, head), ids in zip(heads[part], new):
            generated += len(ids)
            completion = tok.decode(ids, skip_special_tokens=True)
            answer = _answer_text(head, completion)
            if answer is None:  # counted either way: under keep_all, how often the model's own answers fail
                closed = FENCE in completion
                unclosed, unparsed = unclosed + (not closed), unparsed + closed
                if not keep_all:
                    continue
                answer = _answer_text(head, completion, keep_all=True)
            chats.append([{"role": "user", "content": user_turn(instruction, head)},
                          {"role": "assistant", "content": answer}])
        asked += len(new)
    seconds = time.perf_counter() - t0
    stats = {"asked": asked, "answered": len(chats), "dropped_unclosed": unclosed, "dropped_unparsed": unparsed,
             "generated_tokens": generated, "seconds": seconds, "tok_per_s": generated / max(seconds, 1e-9),
             "prompt_width": width, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "keep_all": keep_all}
    print(f"{m.name} answers: {len(chats):,} of {asked:,} asked kept ({unclosed} unclosed, {unparsed} do not parse); "
          f"{generated:,} tokens in {seconds:.1f} s ({stats['tok_per_s']:,.0f} tok/s)")
    return chats, stats


def write_chats(path: str | Path, chats: list[list[dict]], meta: dict | None = None) -> Path:
    """jsonl (gzip when the name ends in .gz) of {"messages": chat}; `meta` goes to PATH.meta.json beside it. Each file
    is written to a temporary name, then renamed: a cut run leaves no half file under either name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"messages": chat}, ensure_ascii=False) + "\n" for chat in chats)
    _write_then_rename(path, lines, gzip.open if path.suffix == ".gz" else open)
    if meta is not None:
        _write_then_rename(path.with_name(path.name + ".meta.json"), json.dumps(meta, indent=1) + "\n", open)
    return path


def _write_then_rename(path: Path, text: str, opener) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with opener(tmp, "wt", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)
