"""How closely a student follows its teacher along the teacher's own answers: where greedy decoding, which HumanEval
scores, would take it.

The held-out KL on corpus rows measures the training distribution. On the H200 it kept falling while HumanEval
barely moved (issue 14's second acceptance run: KL 0.116 -> 0.094, HumanEval 78 -> 81 of 164), and what the student
lost was wrong logic in well-formed answers. A student writes its answer greedily; as long as its argmax is the
teacher's at every token, it writes the teacher's answer. So this runs both models over chats whose answers the
teacher wrote greedily (`teacher_answers.py`) and measures, on the answer's tokens only:

- `kl`: the mean KL(teacher || student), nats a token;
- `top1`: the share of answer tokens where the student's argmax is the teacher's;
- `exact`: the share of answers where it is so at every token (the student would write the teacher's answer);
- `before_miss`: the mean share of an answer before the student's first other argmax;
- `head_top1`, `head_kl`: `top1` and `kl` over the first `HEAD` tokens of each answer only. Greedy answers of the
  1.5B student first left the teacher's at a median of 7 tokens in (2 at 3 minutes of distillation): it picks
  another approach at the start of the body, and what follows is written from there;
- `teacher_top1`: the share where the teacher's argmax is the answer's own next token. Its answers were its greedy
  output, so this is near 1; a low value means the chats are not the teacher's, or are not tokenised as it wrote
  them, and the other numbers then measure something else.

A chat in `teacher_answers.py`'s form (the user turn ends with the function's head in a code block; the answer is
that head continued) is split as HumanEval prompts: the code block and head are in the prompt, the answer is the rest.
Any other chat is split at its last turn: the prompt is the chat template up to the assistant's turn.
"""

from __future__ import annotations

import torch

from .chat_data import answer_prompt, user_turn
from .evaluation import token_ids
from .teacher_answers import FENCE

HEAD = 8  # answer tokens of `head_top1` / `head_kl`


def split_chat(tok, chat: list[dict]) -> tuple[str, str]:
    """(prompt text, answer text) of a chat whose last turn is the assistant's (module docstring)."""
    if len(chat) < 2 or chat[-1]["role"] != "assistant":
        raise ValueError("a chat to measure on needs an assistant turn last, after at least one other turn")
    user, answer = chat[-2]["content"], chat[-1]["content"]
    opener = f"\n{FENCE}python\n"
    at = user.rfind(opener)
    if len(chat) == 2 and chat[0]["role"] == "user" and at >= 0 and user.endswith(FENCE):
        instruction, head = user[:at], user[at + len(opener): -len(FENCE)]
        begun = f"{FENCE}python\n{head}"  # the answer as teacher_answers.py began it
        # the request is read back only where `user_turn` writes it so: one definition of the form
        if head and user_turn(instruction, head) == user and answer.startswith(begun):
            return answer_prompt(tok, instruction, head), answer[len(begun):]
    prompt = tok.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
    return prompt, answer


def answer_rows(tok, chats: list[list[dict]], max_len: int = 2048) -> list[tuple[list[int], int]]:
    """[(token ids of prompt + answer, the answer's first index)] of the chats (`split_chat`), prompt and answer
    tokenised apart, as a prompt and its generated tokens are. A chat longer than `max_len` tokens is refused, naming
    it (cutting it would measure a part of an answer)."""
    rows = []
    for i, chat in enumerate(chats):
        prompt, answer = split_chat(tok, chat)
        p, a = token_ids(tok, prompt), token_ids(tok, answer)
        if not a:
            raise ValueError(f"chat {i}: its answer has no tokens")
        if len(p) + len(a) > max_len:
            raise ValueError(f"chat {i}: {len(p) + len(a)} tokens, more than max_len {max_len}")
        rows.append((p + a, len(p)))
    return rows


@torch.no_grad()
def answer_agreement(student, teacher, rows: list[tuple[list[int], int]], batch: int = 16, pad_id: int = 0,
                     device=None) -> dict:
    """The measures of the module docstring over `rows` (`answer_rows`). Both models are causal LMs with `.model`
    (returning last_hidden_state) and `.lm_head`; rows are right-padded, which a causal model's earlier positions do
    not see. Logits are formed at one row's answer positions at a time ([answer tokens, vocab], never [rows, length,
    vocab])."""
    if not rows:
        raise ValueError("answer_agreement needs at least one row")
    device = device or next(student.parameters()).device
    student.eval()
    kl_sum = agree = teacher_agree = tokens = exact = before = head_kl = head_agree = head_tokens = 0.0
    for i in range(0, len(rows), batch):
        part = rows[i: i + batch]
        width = max(len(ids) for ids, _ in part)
        x = torch.full((len(part), width), pad_id, dtype=torch.long)
        for r, (ids, _) in enumerate(part):
            x[r, : len(ids)] = torch.tensor(ids)
        x = x.to(device)
        hs = student.model(input_ids=x, use_cache=False).last_hidden_state
        ht = teacher.model(input_ids=x, use_cache=False).last_hidden_state
        for r, (ids, start) in enumerate(part):
            # the logits at position j predict token j + 1: positions start - 1 .. len - 2 predict the answer
            at = slice(start - 1, len(ids) - 1)
            ls = torch.log_softmax(student.lm_head(hs[r, at]).float(), -1)
            lt = torch.log_softmax(teacher.lm_head(ht[r, at]).float(), -1)
            kl = (lt.exp() * (lt - ls)).sum(-1)
            kl_sum += kl.sum().item()
            same = ls.argmax(-1) == lt.argmax(-1)
            n = same.numel()
            agree += same.sum().item()
            head_kl += kl[:HEAD].sum().item()
            head_agree += same[:HEAD].sum().item()
            head_tokens += min(n, HEAD)
            teacher_agree += (lt.argmax(-1).cpu() == torch.tensor(ids[start:])).sum().item()
            tokens += n
            miss = (~same).nonzero()
            exact += float(miss.numel() == 0)
            before += (miss[0, 0].item() if miss.numel() else n) / n
    return {"kl": kl_sum / tokens, "top1": agree / tokens, "exact": exact / len(rows),
            "before_miss": before / len(rows), "head_top1": head_agree / head_tokens, "head_kl": head_kl / head_tokens,
            "teacher_top1": teacher_agree / tokens, "answers": len(rows), "answer_tokens": int(tokens)}
