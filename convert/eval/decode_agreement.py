"""Whether a model's cached greedy decoding wrote what its own full forward would: a check of the decode path.

Greedy decoding (`generation.greedy`) runs a model one token at a time on its cache. For a Jet-Nemotron model that
is the JetBlocks' recurrent step, the dynamic convolution's step and the sliding windows' ring, left-padded and
batched: code of this project that neither distillation nor perplexity runs. Each generated token should be the
argmax of the logits the model gives at its position when the whole text (prompt and generated tokens) is read in
one forward, the path that was trained and measured. Where it is not, either two logits nearly tie (two paths round
bf16 differently: the teacher's own recorded answers agreed at 0.994 top-1 on the H200) or the decode path computes
something else, which costs HumanEval passes without an error. So beside a HumanEval score:

- `decode_agreement`: the share of generated tokens that are the full forward's argmax;
- `decode_clear_misses`: generated tokens whose log-probability in the full forward is more than `MARGIN` nats below
  its argmax's: not a near tie;
- `decode_tokens`: how many tokens were checked.
"""

from __future__ import annotations

import torch

from .models import EvalModel

MARGIN = 1.0  # nats: bf16 rounding of two paths moves a log-probability by hundredths, not by this


@torch.no_grad()
def decode_agreement(m: EvalModel, prompts: list[list[int]], answers: list[list[int]], batch: int = 16) -> dict:
    """The measures of the module docstring, over prompts[i] followed by answers[i] (the ids greedy decoding gave;
    empty answers are skipped). Rows are right-padded, which a causal model's earlier positions do not see; logits
    are formed at one row's answer positions at a time ([answer tokens, vocab], never [rows, length, vocab])."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    rows = [(p + a, len(p)) for p, a in zip(prompts, answers) if a]
    agree = clear = tokens = 0
    model = m.model
    pad = m.tok.pad_token_id if m.tok.pad_token_id is not None else 0
    for i in range(0, len(rows), batch):
        part = rows[i: i + batch]
        x = torch.full((len(part), max(len(ids) for ids, _ in part)), pad, dtype=torch.long)
        for r, (ids, _) in enumerate(part):
            x[r, : len(ids)] = torch.tensor(ids)
        h = model.model(input_ids=x.to(m.device), use_cache=False).last_hidden_state
        for r, (ids, start) in enumerate(part):
            # position j predicts token j + 1: positions start - 1 .. len - 2 predict the answer
            logp = torch.log_softmax(model.lm_head(h[r, start - 1: len(ids) - 1]).float(), -1)
            wrote = torch.tensor(ids[start:], device=logp.device)
            best, got = logp.max(-1).values, logp.gather(-1, wrote[:, None])[:, 0]
            agree += int((logp.argmax(-1) == wrote).sum())
            clear += int((best - got > MARGIN).sum())
            tokens += len(wrote)
    return {"decode_agreement": agree / tokens if tokens else None, "decode_clear_misses": clear,
            "decode_tokens": tokens}
