"""Retrieval at long context, generated locally over a haystack of real text (never a repeated sentence).

Every task plants facts written as Python into a window of the haystack's token ids and ends the prompt with an
`assert` whose right-hand side is the answer; greedy decoding must start with it. Prompts of one (task, length)
have exactly `length` tokens, so a batch needs no padding.
- passkey: `PASSKEY = <5 digits>` at a random depth (the format of convert.evaluation, which distillation uses).
- niah: one needle `<name> = <7 digits>` at a set depth; the grid is length x depth.
- multi_needle: `n_needles` needles with distinct names at random depths; the question asks one of them.
- kv: a dict literal of random hex keys -> hex values (`n_pairs`, fewer in prompts under 1,600 tokens: at most
  one pair per 50 tokens), as one block at a random depth; one key asked.
- variable_tracking: `X = <value>`, then a chain `Y = X`, `Z = Y` (`n_hops`, default 2) at increasing depths,
  beside a decoy chain with another value; the question asks the chain's last name (multi-hop). The real
  Qwen2.5-Coder-1.5B-Instruct answered 3 of 4 such prompts at 1K tokens with 2 hops and 0 of 2 with 4 hops (CPU).
"""

from __future__ import annotations

import functools
import random

from tqdm.auto import tqdm

from ..evaluation import passkey_prompt, token_ids
from .generation import greedy
from .models import EvalModel, check_length

TASKS = ("passkey", "niah", "multi_needle", "kv", "variable_tracking")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# names of planted variables: real words, upper-cased, so the model reads them as constants
WORDS = ("ALPHA BRAVO CEDAR DELTA EMBER FALCON GARNET HARBOR IVORY JASPER KESTREL LANTERN MAPLE NECTAR OPAL "
         "PEPPER QUARTZ RAVEN SAFFRON TIMBER UMBER VELVET WILLOW XENON YARROW ZEPHYR AMBER BASALT COBALT DUNE").split()


def parse_depths(text: str) -> list[float]:
    """The needle depths of a comma-separated list of fractions in [0, 1] (`--depths`); a bad list names itself."""
    try:
        depths = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--depths {text!r}: give comma-separated fractions") from err
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise ValueError(f"--depths {text!r}: give at least one depth, each a fraction in [0, 1]")
    return depths


@functools.lru_cache(maxsize=4)  # a decode of the whole vocabulary: 0.6 s for Qwen's on a CPU, once per prompt without
def newline_ids(tok) -> frozenset[int]:
    """Ids whose text ends a line: needles go in after one, so no word of the haystack is cut in two."""
    return frozenset(i for i in range(len(tok)) if tok.decode([i]).endswith("\n"))


def plant(filler: list[int], length: int, pieces: list[tuple[list[int], float]], question: list[int],
          rng: random.Random, line_ends: frozenset[int] = frozenset()) -> list[int]:
    """A prompt of exactly `length` ids: a window of `filler` (random start) with each (ids, depth in [0, 1])
    inserted at that fraction of the filler (moved to the next line start within 64 tokens, when `line_ends`
    names the ids that end a line), in order of depth, then `question`."""
    n_fill = length - len(question) - sum(len(p) for p, _ in pieces)
    if n_fill < 0:
        raise ValueError(f"a prompt of {length} tokens cannot hold its needles and question "
                         f"({length - n_fill} tokens); use longer lengths")
    if len(filler) < n_fill:
        raise ValueError(f"the haystack has {len(filler):,} tokens; prompts of {length:,} need more text")
    start = rng.randint(0, len(filler) - n_fill)
    fill = filler[start:start + n_fill]
    out, at = [], 0
    for ids, depth in sorted(pieces, key=lambda p: p[1]):
        cut = max(at, round(depth * n_fill))
        nxt = next((k for k in range(cut, min(cut + 64, n_fill)) if k == 0 or fill[k - 1] in line_ends), None)
        cut = cut if nxt is None else nxt
        out += fill[at:cut] + ids
        at = cut
    return out + fill[at:] + question


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(32):08x}"


def make_prompt(task: str, tok, filler: list[int], length: int, rng: random.Random, depth: float | None = None,
                n_needles: int = 4, n_pairs: int = 32, n_hops: int = 2) -> tuple[list[int], str]:
    """One prompt (ids of exactly `length`) and its answer text for `task`."""
    if task == "passkey":
        return passkey_prompt(tok, filler, length, rng)
    ends = newline_ids(tok)
    if task == "niah":
        name, value = rng.choice(WORDS), _number(rng, 7)
        needle = token_ids(tok, f"\n{name}_MAGIC_NUMBER = {value}\n")
        q = token_ids(tok, f"\nassert {name}_MAGIC_NUMBER == ")
        return plant(filler, length, [(needle, rng.random() if depth is None else depth)], q, rng, ends), value
    if task == "multi_needle":
        names = rng.sample(WORDS, n_needles)
        values = [_number(rng, 7) for _ in names]
        pieces = [(token_ids(tok, f"\n{n}_MAGIC_NUMBER = {v}\n"), rng.random()) for n, v in zip(names, values)]
        k = rng.randrange(n_needles)
        return plant(filler, length, pieces, token_ids(tok, f"\nassert {names[k]}_MAGIC_NUMBER == "), rng, ends), values[k]
    if task == "kv":
        pairs = [(_hex(rng), _hex(rng)) for _ in range(max(2, min(n_pairs, length // 50)))]
        block = "\nLOOKUP = {\n" + "".join(f'    "{k}": "{v}",\n' for k, v in pairs) + "}\n"
        key, value = rng.choice(pairs)
        q = token_ids(tok, f'\nassert LOOKUP["{key}"] == "')
        return plant(filler, length, [(token_ids(tok, block), rng.random())], q, rng, ends), value
    if task == "variable_tracking":
        names = rng.sample(WORDS, 2 * (n_hops + 1))
        chain, decoy = names[:n_hops + 1], names[n_hops + 1:]
        value, other = _number(rng, 5), _number(rng, 5)
        pieces = []
        for c, v in ((chain, value), (decoy, other)):
            depths = sorted(rng.random() for _ in c)
            pieces.append((token_ids(tok, f"\n{c[0]} = {v}\n"), depths[0]))
            pieces += [(token_ids(tok, f"\n{b} = {a}\n"), d) for a, b, d in zip(c, c[1:], depths[1:])]
        return plant(filler, length, pieces, token_ids(tok, f"\nassert {chain[-1]} == "), rng, ends), value
    raise ValueError(f"unknown retrieval task {task!r}; choose from {', '.join(TASKS)}")


def score(m: EvalModel, prompts: list[tuple[list[int], str]], batch_size: int, desc: str) -> list[bool]:
    """Whether each prompt's greedy answer starts with its answer text."""
    n_new = max(len(token_ids(m.tok, a)) for _, a in prompts) + 4  # room for a leading space or quote
    # eager decoding: a dozen tokens per batch, where compiling each new (batch, length) shape would cost more
    new = greedy(m, [p for p, _ in prompts], max_new_tokens=n_new, batch_size=batch_size, compiled=False, desc=desc)
    return [m.tok.decode(ids).strip().startswith(a) for ids, (_, a) in zip(new, prompts)]


def check_haystack(m: EvalModel, filler: list[int], lengths: list[int]) -> None:
    for n in lengths:
        check_length(m, n, "a retrieval prompt")
    if len(filler) < max(lengths):
        raise ValueError(f"the haystack has {len(filler):,} tokens; prompts of {max(lengths):,} need more text")


def retrieval(m: EvalModel, filler: list[int], lengths: list[int], depths=DEFAULT_DEPTHS, trials: int = 4,
              tasks=TASKS, tokens_per_batch: int = 131072, seed: int = 0, **task_kw) -> dict:
    """Accuracy per task and length; for niah per (length, depth) cell: {"niah": {"grid": [[acc per depth] per
    length], "lengths", "depths"}, task: {str(length): acc}, "trials"}. The same seed gives the same prompts to
    every model (the baseline answers the same questions)."""
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown retrieval task {t!r}; choose from {', '.join(TASKS)}")
    check_haystack(m, filler, lengths)
    out: dict = {"trials": trials, "lengths": list(lengths)}
    for task in tasks:
        rng = random.Random(f"{seed}-{task}")
        grid, per_len = [], {}
        for n in tqdm(lengths, desc=f"{task} {m.name}", unit="length", leave=False):
            cells = list(depths) if task == "niah" else [None]
            prompts = [make_prompt(task, m.tok, filler, n, rng, depth=d, **task_kw) for d in cells
                       for _ in range(trials)]
            hits = score(m, prompts, max(1, tokens_per_batch // n), f"{task}@{n}")
            accs = [sum(hits[i * trials:(i + 1) * trials]) / trials for i in range(len(cells))]
            grid.append(accs)
            per_len[str(n)] = sum(hits) / len(hits)
        out[task] = {"by_length": per_len}
        if task == "niah":
            out[task].update(grid=grid, depths=list(depths))
        print(f"{task} {m.name}: " + ", ".join(f"{k}: {v:.0%}" for k, v in per_len.items()))
    return out
