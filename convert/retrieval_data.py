"""Long-range retrieval rows generated on the fly, with real corpus text as the haystack.

Three kinds of documents, each ended by EOS and packed whole into rows of `seq_len` (lengths log-uniform in
[min_len, seq_len], as `convert.evaluation.passkey_rows`, so one row holds many short examples or one long one):
  passkey  `convert.evaluation.passkey_prompt(answered=True)`: `PASSKEY = <5 digits>` at a random depth of the
           haystack, `assert PASSKEY == <key>` at the end (the format the passkey evaluation asks);
  kv       key-value lookup: `n_pairs` assignments `<name> = '<6 hex>'` at random depths, one name asked at the
           end: `assert <name> == '<value>'`. Names come from a fixed word list, so a question is only
           answerable from the context, not from the name. A document too short for `n_pairs` holds half as
           many (down to one; below that it becomes a passkey document).
  table    associative recall in one block: a dict literal `REGISTRY = {'<name>': '<6 hex>', ...}` of `n_pairs`
           entries at a random depth, then `assert REGISTRY['<name>'] == '<value>'` for one of them. The pairs
           sit side by side, so the answer must be found by its key among near-identical lines (the kind of
           lookup the eval's `kv` task asks, in another surface form: word keys, one quote style, another
           name). Fewer pairs in a short document, as for kv.
Row k of a stream is a pure function of (seed, k): `RetrievalStream.draw(k)` builds it from its own RNG and a
haystack window at an RNG-chosen offset of the train tokens, so resumed and multi-process runs see the same rows.
"""

from __future__ import annotations

import random

import numpy as np

from .evaluation import passkey_prompt, token_ids

KV_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "jasper",
            "kepler", "lumen", "maple", "nectar", "onyx", "pixel", "quartz", "raven", "sierra", "tango",
            "umber", "velvet", "willow", "xenon", "yonder", "zephyr")
KV_NAMES = [f"{a}_{b}" for a in KV_WORDS for b in KV_WORDS if a != b]  # 650 variable names, built once
KV_QUESTION = "\nassert {name} == '"


def kv_prompt(tok, filler_ids: list[int], length: int, rng: random.Random, n_pairs: int = 8,
              answered: bool = False) -> tuple[list[int], str]:
    """One key-value question of `length` ids (fewer if the filler is shorter) and its answer (value + "'").

    `n_pairs` assignments `\\n<name> = '<value>'\\n` at random depths of a filler window, then `assert <name> ==
    '` for one of them; with `answered` the answer's tokens follow inside the `length`.
    """
    names = rng.sample(KV_NAMES, n_pairs)
    values = [f"{rng.getrandbits(24):06x}" for _ in names]
    needles = [token_ids(tok, f"\n{n} = '{v}'\n") for n, v in zip(names, values)]
    ask = rng.randrange(n_pairs)
    answer = values[ask] + "'"
    tail = token_ids(tok, KV_QUESTION.format(name=names[ask])) + (token_ids(tok, answer) if answered else [])
    return _plant(filler_ids, length, needles, tail, rng, f"a key-value document with {n_pairs} pairs"), answer


def _plant(filler_ids: list[int], length: int, pieces: list[list[int]], tail: list[int], rng: random.Random,
           what: str) -> list[int]:
    """`pieces` at sorted random depths of a filler window as long as `length` leaves, then `tail`."""
    n_fill = length - sum(map(len, pieces)) - len(tail)
    if n_fill < 0:
        raise ValueError(f"{what} needs more than {length} tokens")
    start = rng.randint(0, max(0, len(filler_ids) - n_fill - 1))
    fill = list(filler_ids[start:start + n_fill])
    depths = sorted(rng.randint(0, len(fill)) for _ in pieces)
    out, prev = [], 0
    for d, piece in zip(depths, pieces):
        out += fill[prev:d] + piece
        prev = d
    return out + fill[prev:] + tail


TABLE_QUESTION = "\nassert REGISTRY['{name}'] == '"


def table_prompt(tok, filler_ids: list[int], length: int, rng: random.Random, n_pairs: int = 16,
                 answered: bool = False) -> tuple[list[int], str]:
    """One table-lookup question of `length` ids (fewer if the filler is shorter) and its answer (value + "'").

    A block `\nREGISTRY = {\n    '<name>': '<value>',\n ...}\n` of `n_pairs` entries at a random depth of a filler
    window, then `assert REGISTRY['<name>'] == '` for one of them; with `answered` the answer's tokens follow.
    """
    names = rng.sample(KV_NAMES, n_pairs)
    values = [f"{rng.getrandbits(24):06x}" for _ in names]
    block = token_ids(tok, "\nREGISTRY = {\n" + "".join(f"    '{n}': '{v}',\n" for n, v in zip(names, values))
                      + "}\n")
    ask = rng.randrange(n_pairs)
    answer = values[ask] + "'"
    tail = token_ids(tok, TABLE_QUESTION.format(name=names[ask])) + (token_ids(tok, answer) if answered else [])
    return _plant(filler_ids, length, [block], tail, rng, f"a table of {n_pairs} pairs"), answer


KINDS = ("passkey", "kv", "table")
DEFAULT_KINDS = ("passkey", "kv")  # what a run mixes in unless told: `table` is opt-in until measured
_PAIRED = {"kv": kv_prompt, "table": table_prompt}  # documents of n pairs, halved until one fits


class RetrievalStream:
    """Rows [seq_len] of back-to-back retrieval documents (see the module docstring); infinite, no `n`."""

    def __init__(self, tokenizer, haystack: np.ndarray, seq_len: int, kinds=DEFAULT_KINDS, seed: int = 0,
                 min_len: int = 64, n_pairs: int = 8, name: str = "retrieval", table_pairs: int = 16):
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"retrieval kinds must be among {', '.join(KINDS)}; got {list(kinds)}")
        if len(haystack) <= 2 * seq_len:
            raise ValueError(f"the haystack has {len(haystack)} tokens; retrieval rows of {seq_len} need more "
                             f"than {2 * seq_len}")
        self.tok, self.haystack, self.seq_len, self.kinds = tokenizer, haystack, seq_len, tuple(kinds)
        self.seed, self.min_len, self.name = seed, min(min_len, seq_len), name
        self.pairs = {"kv": n_pairs, "table": table_pairs}  # pairs a document starts from
        self.eos = tokenizer.eos_token_id

    def draw(self, k: int) -> np.ndarray:
        """Row k [seq_len] (int64)."""
        rng = random.Random(self.seed * 1_000_003 + k)
        # one haystack window per row, drawn at random from the train stream, EOS between files removed
        at = rng.randrange(len(self.haystack) - 2 * self.seq_len)
        filler = np.asarray(self.haystack[at : at + 2 * self.seq_len])
        filler = filler[filler != self.eos].tolist()
        row: list[int] = []
        while len(row) < self.seq_len:
            room = self.seq_len - len(row)
            n = min(room, round(self.min_len * (self.seq_len / self.min_len) ** rng.random()))
            if room - n < self.min_len:  # too little would be left for another document: this one fills the row
                n = room
            kind = rng.choice(self.kinds)
            doc = None
            if kind in _PAIRED:  # a short document holds fewer pairs; too short for one pair: a passkey instead
                pairs = self.pairs[kind]
                while doc is None and pairs >= 1:
                    try:
                        doc = _PAIRED[kind](self.tok, filler, n - 1, rng, pairs, answered=True)[0]
                    except ValueError:
                        pairs //= 2
            if doc is None:
                doc = passkey_prompt(self.tok, filler, n - 1, rng, answered=True)[0]
            row += doc + [self.eos]
        return np.asarray(row[: self.seq_len], dtype=np.int64)
