"""Chat-formatted code rows generated on the fly from the corpus's own Python, for instruct teachers.

An instruct model is used through its chat template (`convert.eval.humaneval` prompts it so), but a code corpus holds
none of the template's tokens. A student distilled on raw files alone has never seen the teacher in chat form. Each
document here is one chat: a user turn asking for a function (one of INSTRUCTIONS) with the function's head (its
`def` line(s) and docstring) in a code block, then the assistant's turn holding the whole function in a code block.
The functions come from the train stream, so held-out files stay unseen. The loss is the KL to the teacher on these
tokens. The answer therefore need not be the teacher's own: the student learns what the teacher predicts in chat
form. Chats follow each other as a multi-turn template does (each ends with the template's own end-of-turn, so no
EOS is added between them) in rows of `seq_len`; one longer than the room left is cut.

Given `chats` (a file of chats read by `read_chats`, e.g. the teacher's own answers that `teacher_answers.py` wrote),
a stream draws its documents from those instead: the same template, the same row layout. With `docstrings`, only
functions whose head holds a docstring are asked for, as HumanEval asks: a specification to read, not a signature to
guess from (22% of the functions of a site-packages sample had one).

Row k of a stream is a pure function of (seed, k), as `RetrievalStream`'s: resumed and multi-process runs see the
same rows.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import textwrap
from pathlib import Path

import numpy as np

from .evaluation import token_ids

INSTRUCTIONS = (
    "Complete the following Python function. Answer with the whole function in one Python code block.",
    "Write the body of this Python function.",
    "Implement the function below.",
    "Finish this code:",
)
_DEF = re.compile(r"([ \t]*)(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(")  # at the start of a line


def user_turn(instruction: str, head: str) -> str:
    """The user's message asking for the function whose head is given (HumanEval's prompt has this form)."""
    return f"{instruction}\n```python\n{head}```"


def answer_prompt(tok, instruction: str, head: str) -> str:
    """The text a model continues to answer for the function: the user's request in the chat template, then the
    assistant's code block begun with the head (HumanEval prompts so; the teacher's answers are asked so)."""
    text = tok.apply_chat_template([{"role": "user", "content": user_turn(instruction, head)}],
                                   add_generation_prompt=True, tokenize=False)
    return text + "```python\n" + head


def read_chats(path: str | Path) -> list[list[dict]]:
    """The chats of a jsonl file (optionally .gz), one {"messages": [{"role", "content"}, ...]} a line, each with a
    user turn and ending with an assistant turn. A line that is not such a chat is refused naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    chats = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {n}: not a JSON object with a 'messages' list ({err})") from None
            ok = (isinstance(messages, list) and len(messages) >= 2
                  and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                          and isinstance(m.get("content"), str) and m["content"] for m in messages)
                  and messages[-1]["role"] == "assistant" and any(m["role"] == "user" for m in messages))
            if not ok:
                raise ValueError(f"{path}, line {n}: a chat needs messages of role system / user / assistant with "
                                 f"non-empty text content, a user turn, and an assistant turn last")
            chats.append(messages)
    if not chats:
        raise ValueError(f"chat file {path} holds no chat")
    return chats


def _indent(line: str) -> int:
    """Columns of leading whitespace, tabs expanded as the `def` line's are (a tab-indented method's body)."""
    line = line.expandtabs()
    return len(line) - len(line.lstrip())


def has_docstring(head: str) -> bool:
    """Whether a function head (`functions`) ends with a docstring, as every HumanEval prompt does."""
    return head.rstrip().endswith(('"""', "'''"))


def functions(text: str, max_lines: int = 80) -> list[tuple[str, str]]:
    """[(head, whole function)] of the complete `def` blocks in `text`, dedented: head = the lines up to the one
    ending the signature (":" at the end of a line) plus a docstring right after it; whole = the head and the body
    (at most `max_lines` lines). Blocks cut by the end of `text` and one-line functions are skipped."""
    out = []
    lines = text.split("\n")
    starts = ((i, _indent(line)) for i, line in enumerate(lines) if _DEF.match(line))
    for i, indent in starts:
        j = i
        while j < len(lines) and not lines[j].rstrip().endswith(":"):
            j += 1
        end = j + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        if j >= len(lines) or end >= len(lines) or end - j < 2:  # no signature end, cut by the window, or no body
            continue
        head_end = j + 1
        first = lines[head_end].strip() if head_end < end else ""
        if first[:3] in ('"""', "'''"):  # the docstring belongs to the head (as a HumanEval prompt has it)
            quote, k = first[:3], head_end
            closed = first.count(quote) >= 2
            while not closed and k + 1 < end:
                k += 1
                closed = quote in lines[k]
            head_end = k + 1 if closed else head_end
        body = [ln for ln in lines[head_end:end]]
        while body and not body[-1].strip():
            body.pop()
        if not body or head_end - i + len(body) > max_lines:
            continue
        head = textwrap.dedent("\n".join(lines[i:head_end])) + "\n"
        whole = textwrap.dedent("\n".join(lines[i:head_end] + body)) + "\n"
        out.append((head, whole))
    return out


class ChatCodeStream:
    """Rows [seq_len] of back-to-back chat documents (see the module docstring); infinite, no `n`."""

    def __init__(self, tokenizer, haystack: np.ndarray, seq_len: int, seed: int = 0, window: int = 4096,
                 name: str = "chat", chats: list[list[dict]] | None = None, docstrings: bool = False):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat rows need a tokenizer with a chat template (an instruct model's); this one has "
                             "none: set the chat ratio to 0")
        self.chats = chats
        if chats is not None:  # documents come from the given chats: the train text is not read
            if not chats:
                raise ValueError("chat rows from a chat file need at least one chat")
            self.tok, self.seq_len, self.seed, self.name = tokenizer, seq_len, seed, name
            self._chat_ids: dict[int, list[int]] = {}  # a chat is templated and tokenised once, at its first draw
            return
        if len(haystack) <= 2 * window:
            raise ValueError(f"the train stream has {len(haystack)} tokens; chat rows read windows of {window} and "
                             f"need more than {2 * window}")
        self.tok, self.haystack, self.seq_len, self.seed, self.window = tokenizer, haystack, seq_len, seed, window
        self.docstrings = docstrings
        self.eos, self.name = tokenizer.eos_token_id, name  # the corpus's file separator, dropped from windows
        if not any(self._functions(random.Random(seed + i)) for i in range(8)):
            what = "functions with a docstring" if docstrings else "functions"
            raise ValueError(f"chat rows are built from Python {what} in the train text, and 8 windows of it held "
                             "none: use them with a code corpus, or set the chat ratio to 0")

    def _functions(self, rng: random.Random) -> list[tuple[str, str]]:
        at = rng.randrange(len(self.haystack) - self.window)
        ids = np.asarray(self.haystack[at: at + self.window])
        # an array, not a list: transformers checks a list element by element before decoding (a third of a row)
        found = functions(self.tok.decode(ids[ids != self.eos]))
        return [f for f in found if has_docstring(f[0])] if self.docstrings else found

    def document(self, rng: random.Random) -> list[int]:
        """One chat's token ids (a window without a function is skipped for the next one)."""
        if self.chats is not None:
            i = rng.randrange(len(self.chats))  # the draw rng.choice(self.chats) makes
            if i not in self._chat_ids:
                self._chat_ids[i] = token_ids(self.tok, self.tok.apply_chat_template(self.chats[i], tokenize=False))
            return self._chat_ids[i]  # shared: `draw` copies it into its row
        found = []
        for _ in range(64):
            found = self._functions(rng)
            if found:
                break
        if not found:
            raise ValueError("64 windows of the train text in a row held no complete Python function")
        head, whole = rng.choice(found)
        user = user_turn(rng.choice(INSTRUCTIONS), head)
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": f"```python\n{whole}```"}]
        return token_ids(self.tok, self.tok.apply_chat_template(chat, tokenize=False))

    def draw(self, k: int) -> np.ndarray:
        """Row k [seq_len] (int64)."""
        rng = random.Random(self.seed * 1_000_003 + k)
        row: list[int] = []
        while len(row) < self.seq_len:
            row += self.document(rng)
        return np.asarray(row[: self.seq_len], dtype=np.int64)
