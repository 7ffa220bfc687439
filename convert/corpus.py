"""Distillation corpus at scale: local sources tokenised in parallel into cached uint32 memory maps.

A source is a folder (every .py/.txt/.md/.rst/.jsonl/.json/.parquet under it, e.g. a whole site-packages), a
single file, or a saved `datasets` folder. Building one source:
  1. list its units with (size, mtime_ns): the files of a folder; the rows of a single jsonl/parquet file or of
     a saved dataset (there a row is the only unit there is);
  2. split them: a unit is held out when its path matches a `held_out` pattern ("pandas" matches the folder
     pandas/ and everything under it; globs like "*/tests/*" work), or, with no patterns, when a hash of its
     path falls in the `eval_fraction`. Held-out text is never trained on;
  3. visit the units in a fixed pseudo-random order (a hash of the path), so a `max_tokens` budget samples
     the whole source rather than its alphabetically first packages; tokenise in worker processes, a batch
     of files per task (one `encode_batch` call), each document followed by EOS;
  4. write `train.bin` / `eval.bin` (raw uint32 tokens), `*_docs.npy` (int64 document offsets [D + 1]) and
     `manifest.json` (source, every unit's size and mtime, tokenizer hash, counts) into a folder under
     `cache_dir` named by a hash of everything that decides the tokens, written to a temporary name and
     renamed when complete.
A later build with the same settings finds the folder, re-lists the source (a stat per file, no reading) and
reuses it only if every unit's size and mtime still match; otherwise it says what changed and rebuilds
(`on_stale="rebuild"`) or stops with that message (`on_stale="error"`). A cache is never silently reused.

Training rows (`MixtureSampler`) are fixed windows of `seq_len` tokens of the train stream (documents joined
by EOS, the tail that does not fill a window dropped). Each source walks a fresh seeded permutation of its
windows per epoch, so no token repeats before that source is exhausted; sources are mixed by weight (and
generated retrieval rows can be one of them). The rows of a step are a pure function of (seed, step), which
makes a resumed or multi-process run see exactly the batches of one uninterrupted run.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1
TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")  # one document per row (a .json file is read as JSON lines)
FOLDER_ROW_SUFFIXES = (".jsonl", ".parquet")  # inside folders .json files are configs and schemas, not corpora


def default_cache_dir() -> Path:
    """$JET_NEMOTRON_CACHE/corpus, else $XDG_CACHE_HOME (or ~/.cache)/jet-nemotron/corpus."""
    if os.environ.get("JET_NEMOTRON_CACHE"):
        return Path(os.environ["JET_NEMOTRON_CACHE"]) / "corpus"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jet-nemotron" / "corpus"


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def tokenizer_hash(tok) -> str:
    """A hash of everything that decides the ids: the backend's JSON (vocab, merges, normaliser, added tokens)."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    return _hash(f"{type(tok).__name__}|{tok.eos_token_id}|{body}")


# -- listing and splitting ---------------------------------------------------------------------------------------

def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists())


def _stat(p: Path | str) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_size, st.st_mtime_ns


def list_units(source: Path, text_field: str) -> tuple[str, list[dict] | None, list[list]]:
    """(kind, units, fingerprint) of a source.

    kind "files": units are the files of a folder (or the one text file), {"rel", "path"}; "rows": units are
    the rows of one jsonl/parquet file or saved dataset, {"rel": "row <i>", "row": i}, listed by `row_units`
    only when building (counting them means reading the data). The fingerprint lists (relative path, size,
    mtime_ns) of every file the tokens depend on.
    """
    if not source.exists():
        raise FileNotFoundError(f"data path {source} does not exist")
    if _is_saved_dataset(source) or (source.is_file() and source.suffix.lower() in ROW_SUFFIXES):
        files = sorted(f for f in source.rglob("*") if f.is_file()) if source.is_dir() else [source]
        fp = [[str(f.relative_to(source)) if source.is_dir() else f.name, *_stat(f)] for f in files]
        return "rows", None, fp
    if source.is_file():
        return "files", [{"rel": source.name, "path": str(source)}], [[source.name, *_stat(source)]]
    units, fp = [], []
    top = str(source)
    # strings and os.stat, not pathlib: a rerun lists every file again (a site-packages holds 100,000), and
    # pathlib's parsing was most of a cached corpus's start (2.5 s of the stdlib's 2.8 s on 2 cores)
    for root, dirs, names in os.walk(top, followlinks=False):
        dirs.sort()
        prefix = os.path.relpath(root, top)
        prefix = "" if prefix == "." else prefix + os.sep
        for name in sorted(names):
            if not name.lower().endswith(TEXT_SUFFIXES + FOLDER_ROW_SUFFIXES):
                continue
            f = os.path.join(root, name)
            try:
                size, mtime = _stat(f)
            except OSError:  # a dangling link
                continue
            units.append({"rel": prefix + name, "path": f})
            fp.append([prefix + name, size, mtime])
    if not units:
        raise ValueError(f"data path {source} holds no {'/'.join(TEXT_SUFFIXES + FOLDER_ROW_SUFFIXES)} files")
    return "files", units, fp


def row_units(source: Path, text_field: str) -> list[dict]:
    return [{"rel": f"row {i}", "row": i} for i in range(len(_row_texts(source, text_field, None)))]


@functools.lru_cache(maxsize=4)
def _row_table(source: str, text_field: str) -> list:
    """All texts of a single jsonl/parquet file or saved dataset (cached: listed, then read in batches)."""
    from .data import _iter_file

    p = Path(source)
    if _is_saved_dataset(p):
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        if text_field not in ds.column_names:
            raise KeyError(f"{p}: no column {text_field!r} (columns: {ds.column_names}); use --text-field")
        return list(ds[text_field])
    return list(_iter_file(p, text_field))


def _row_texts(source: Path, text_field: str, rows: list[int] | None) -> list:
    table = _row_table(str(source), text_field)
    return table if rows is None else [table[i] for i in rows]


def is_held_out(rel: str, patterns: list[str], eval_fraction: float) -> bool:
    """Patterns: a bare name holds out that folder (or file) at any depth-0 path; globs match the whole path."""
    if patterns:
        for pat in patterns:
            if any(c in pat for c in "*?["):
                if fnmatch.fnmatch(rel, pat):
                    return True
            elif rel == pat or rel.startswith(pat.rstrip("/") + "/"):
                return True
        return False
    return int(_hash("eval|" + rel), 16) / 16 ** 16 < eval_fraction


def visiting_order(units: list[dict]) -> list[dict]:
    """A fixed pseudo-random visiting order (a hash of the path): a token budget samples the whole source."""
    return sorted(units, key=lambda u: _hash("order|" + u["rel"]))


# -- tokenising --------------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(tok_json: str | None, tok_pickled: bytes | None, eos: int, text_field: str, max_file_bytes: int):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process; the pool is the parallelism
    if tok_json is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tok_json)
        fast = getattr(backend, "encode_batch_fast", backend.encode_batch)  # ids only, no offsets
        encode = lambda texts: [e.ids for e in fast(texts, add_special_tokens=False)]  # noqa: E731
    else:
        import pickle

        tok = pickle.loads(tok_pickled)
        encode = lambda texts: tok(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    _WORKER.update(encode=encode, eos=eos, text_field=text_field, max_file_bytes=max_file_bytes)


def _read_texts(task: tuple) -> tuple[list[str], list[str]]:
    """(texts, skipped) of a task. Skipped, by name: files over max_file_bytes (vendored data, minified
    bundles), binary files with a text suffix, unreadable files, and row files of a folder that are not JSON lines
    / parquet with the text field (a single-file source is strict instead: see `_row_table`)."""
    kind, payload = task
    if kind == "texts":
        return [str(t) for t in payload if t is not None], []
    from .data import _iter_file

    texts, skipped = [], []
    for path in payload:
        p = Path(path)
        try:
            if p.stat().st_size > _WORKER["max_file_bytes"]:
                skipped.append(f"{path} (over {_WORKER['max_file_bytes']} bytes)")
            elif p.suffix.lower() in ROW_SUFFIXES:
                texts.extend(str(t) for t in _iter_file(p, _WORKER["text_field"]) if t is not None)
            else:
                t = p.read_text(errors="replace")
                if "\x00" in t:
                    skipped.append(f"{path} (binary)")
                else:
                    texts.append(t)
        except (OSError, ValueError, KeyError) as err:
            skipped.append(f"{path} ({type(err).__name__}: {str(err)[:80]})")
    return texts, skipped


def _tokenise_task(task: tuple) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """(tokens uint32 [T], document lengths int64 [D], skipped files, CPU seconds) of one task; every document
    ends with EOS."""
    c0 = time.process_time()
    texts, skipped = _read_texts(task)
    texts = [t for t in texts if t.strip()]
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64), skipped, time.process_time() - c0
    ids = _WORKER["encode"](texts)
    eos = [_WORKER["eos"]]
    lens = np.fromiter((len(x) + 1 for x in ids), np.int64, len(ids))
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable((x, eos) for x in ids))
    return np.fromiter(flat, np.uint32, int(lens.sum())), lens, skipped, time.process_time() - c0


def _tasks(kind: str, source: Path, units: list[dict], text_field: str, bytes_per_task: int, fp: dict):
    """Group units into tokenising tasks of about `bytes_per_task` bytes (files) or 256 rows."""
    if kind == "rows":
        for i in range(0, len(units), 256):
            yield ("texts", _row_texts(source, text_field, [u["row"] for u in units[i : i + 256]]))
        return
    batch, size = [], 0
    for u in units:
        batch.append(u["path"])
        size += fp[u["rel"]][0]
        if size >= bytes_per_task or len(batch) >= 512:
            yield ("files", batch)
            batch, size = [], 0
    if batch:
        yield ("files", batch)


def _write_split(path: Path, results, budget: int | None, bar) -> dict:
    """Append task results to path.bin, whole documents up to `budget` tokens; write path_docs.npy."""
    n_tok, lens_all, skipped, cpu = 0, [], [], 0.0
    with open(path.with_suffix(".bin"), "wb") as f:
        for toks, lens, skip, sec in results:
            skipped += skip
            cpu += sec
            full = budget is not None and n_tok + len(toks) > budget
            if full:  # keep the documents that still fit, then stop
                lens = lens[: int(np.searchsorted(np.cumsum(lens), budget - n_tok, side="right"))]
                toks = toks[: int(lens.sum())]
            toks.tofile(f)
            n_tok += len(toks)
            lens_all.append(lens)
            bar.update(len(toks))
            if full:
                break
    lens = np.concatenate(lens_all) if lens_all else np.zeros(0, np.int64)
    np.save(path.parent / f"{path.name}_docs.npy", np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
    return {"tokens": n_tok, "documents": int(len(lens)), "skipped_files": len(skipped),
            "skipped_examples": skipped[:5], "cpu_seconds": cpu}


# -- one source --------------------------------------------------------------------------------------------------

@dataclass
class SourceCorpus:
    """One tokenised source: train / eval token streams as read-only memory maps (uint32 [T])."""

    name: str
    folder: Path
    manifest: dict
    train: np.ndarray
    eval: np.ndarray
    cache_hit: bool


def _open(folder: Path, manifest: dict, name: str, hit: bool) -> SourceCorpus:
    def mm(split):
        n = manifest["counts"][split]["tokens"]
        path = folder / f"{split}.bin"
        if path.stat().st_size != 4 * n:
            raise ValueError(f"corpus cache {path} holds {path.stat().st_size} bytes, its manifest says {4 * n}")
        return np.memmap(path, np.uint32, "r", shape=(n,)) if n else np.zeros(0, np.uint32)

    return SourceCorpus(name, folder, manifest, mm("train"), mm("eval"), hit)


def _describe_change(old: list, new: list) -> str:
    o, n = {r[0]: tuple(r[1:]) for r in old}, {r[0]: tuple(r[1:]) for r in new}
    changed = [k for k in o if k in n and o[k] != n[k]]
    added, removed = [k for k in n if k not in o], [k for k in o if k not in n]
    parts = []
    for what, names in (("changed", changed), ("added", added), ("removed", removed)):
        if names:
            parts.append(f"{len(names)} file(s) {what} (e.g. {names[0]})")
    return ", ".join(parts) or "the file list differs"


def build_source(source: str | Path, tokenizer, cache_dir: str | Path | None = None, text_field: str = "text",
                 held_out: list[str] | None = None, eval_fraction: float = 0.05, max_tokens: int | None = None,
                 max_eval_tokens: int | None = 4_000_000, workers: int | None = None,
                 max_file_bytes: int = 4 << 20, on_stale: str = "rebuild", progress: bool = True) -> SourceCorpus:
    """Tokenise one source into the cache (or open its cached tokenisation); see the module docstring."""
    from tqdm.auto import tqdm

    if on_stale not in ("rebuild", "error"):
        raise ValueError(f"on_stale must be 'rebuild' or 'error', got {on_stale!r}")
    source = Path(source).resolve()
    held_out = list(held_out or [])
    kind, units, fingerprint = list_units(source, text_field)
    settings = {"version": FORMAT_VERSION, "source": str(source), "kind": kind, "text_field": text_field,
                "tokenizer": tokenizer_hash(tokenizer), "eos": tokenizer.eos_token_id, "held_out": held_out,
                "eval_fraction": eval_fraction if not held_out else None, "max_tokens": max_tokens,
                "max_eval_tokens": max_eval_tokens, "max_file_bytes": max_file_bytes,
                "suffixes": list(TEXT_SUFFIXES + FOLDER_ROW_SUFFIXES)}
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / f"{source.name}-{_hash(json.dumps(settings, sort_keys=True))}"
    name = source.name
    if (folder / "manifest.json").exists():
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["fingerprint"] == fingerprint:
            return _open(folder, manifest, name, hit=True)
        why = (f"corpus cache {folder} is stale: {source} changed since it was tokenised "
               f"({_describe_change(manifest['fingerprint'], fingerprint)})")
        if on_stale == "error":
            raise ValueError(why + "; delete the folder or rebuild (on_stale='rebuild')")
        print(why + "; rebuilding")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to put between documents")

    t0 = time.perf_counter()
    units = units if units is not None else row_units(source, text_field)
    held = [is_held_out(u["rel"], held_out, eval_fraction) for u in units]
    if held_out and not any(held):
        raise ValueError(f"--held-out {held_out} matches nothing in {source} (first entries: "
                         f"{[u['rel'] for u in units[:3]]})")
    if not held_out and eval_fraction > 0 and not any(held) and len(units) > 1:
        # too few units for the fraction to pick one: hold out the unit whose hash comes closest
        held[min(range(len(units)), key=lambda i: _hash("eval|" + units[i]["rel"]))] = True
    splits = {"eval": visiting_order([u for u, h in zip(units, held) if h]),
              "train": visiting_order([u for u, h in zip(units, held) if not h])}
    fp = {r[0]: r[1:] for r in fingerprint}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        print("corpus: the tokenizer has no fast (Rust) backend; tokenising with its Python __call__ (slow)")
    import pickle

    init = (backend.to_str() if backend is not None else None, None if backend is not None else pickle.dumps(
        tokenizer), tokenizer.eos_token_id, text_field, max_file_bytes)
    workers = workers or os.cpu_count() or 1
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    counts = {}
    pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(
        workers, _init_worker, init) if workers > 1 else None
    try:
        if pool is None:
            _init_worker(*init)
        for split, budget in (("eval", max_eval_tokens), ("train", max_tokens)):
            tasks = _tasks(kind, source, splits[split], text_field, 1 << 20, fp)
            results = pool.imap(_tokenise_task, tasks) if pool else map(_tokenise_task, tasks)
            with tqdm(total=budget, desc=f"tokenising {name} ({split})", unit="tok", unit_scale=True,
                      disable=not progress, dynamic_ncols=True) as bar:
                counts[split] = _write_split(tmp / split, results, budget, bar)
            counts[split]["units"] = len(splits[split])
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.perf_counter() - t0
    manifest = {"settings": settings, "fingerprint": fingerprint, "counts": counts, "seconds": seconds,
                "held_out_units": [u["rel"] for u in splits["eval"]][:50], "workers": workers}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    n = counts["train"]["tokens"] + counts["eval"]["tokens"]
    cpu = counts["train"]["cpu_seconds"] + counts["eval"]["cpu_seconds"]
    skipped = counts["train"]["skipped_files"] + counts["eval"]["skipped_files"]
    examples = (counts["train"]["skipped_examples"] + counts["eval"]["skipped_examples"])[:2]
    print(f"corpus {name}: {counts['train']['tokens']:,} train + {counts['eval']['tokens']:,} held-out tokens "
          f"from {len(units):,} {'rows' if kind == 'rows' else 'files'} in {seconds:.1f} s "
          f"({n / max(seconds, 1e-9) / 1e6:.2f} M tok/s with {workers} processes; "
          f"{n / max(cpu, 1e-9) / 1e6:.2f} M tok per worker CPU-second) -> {folder}"
          + (f"; skipped {skipped} files, e.g. {examples}" if skipped else ""))
    return _open(folder, manifest, name, hit=False)


# -- sampling ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


class WindowStream:
    """Fixed windows [seq_len] of a token stream; draw k is window perm_epoch[k % n] of epoch k // n."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, name: str = "text"):
        self.tokens, self.seq_len, self.seed, self.name = tokens, seq_len, seed, name
        self.n = len(tokens) // seq_len

    def draw(self, k: int) -> np.ndarray:
        epoch, pos = divmod(k, self.n)
        w = int(_permutation(self.n, self.seed * 1_000_003 + epoch)[pos])
        return np.asarray(self.tokens[w * self.seq_len : (w + 1) * self.seq_len], dtype=np.int64)


class MixtureSampler:
    """Batches [B, seq_len] (int64) from weighted streams, a pure function of (seed, step).

    Global row g (counted from 0 at step 0 plus `row_offset`) falls in cycle g // C (C = `cycle` rows); each cycle holds a fixed count of rows of each stream
    (weights rounded by largest remainder, at least one for a positive weight), in a seeded order. The j-th row
    of stream s overall is its draw j, so each stream repeats nothing before its windows run out.
    """

    def __init__(self, streams: list, weights: list[float], seq_len: int, seed: int = 0, cycle: int = 1000,
                 row_offset: int = 0):
        if len(streams) != len(weights) or not streams:
            raise ValueError(f"{len(streams)} streams but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mixing weights must be >= 0 and not all zero, got {weights}")
        for s in streams:
            if getattr(s, "n", 1) < 1:
                raise ValueError(f"the data is too short: source {s.name} has {len(s.tokens)} training tokens, "
                                 f"less than one row of {seq_len}; add text or lower --seq-len")
        self.streams, self.seq_len, self.seed, self.row_offset = streams, seq_len, seed, row_offset
        w = np.asarray(weights, float) / sum(weights)
        counts = np.floor(w * cycle).astype(int)
        counts[(w > 0) & (counts == 0)] = 1
        rest = cycle - counts.sum()
        for i in np.argsort(-(w * cycle - np.floor(w * cycle)))[: max(0, rest)]:
            counts[i] += 1
        self.counts = counts
        self.cycle = int(counts.sum())
        self.weights = (counts / self.cycle).tolist()  # the ratios actually served

    @functools.lru_cache(maxsize=4)
    def _cycle(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream of each position, rank of the position among its stream's) for cycle c."""
        which = np.repeat(np.arange(len(self.counts)), self.counts)
        which = which[np.random.default_rng(self.seed * 7_919 + c + 1).permutation(self.cycle)]
        rank = np.zeros(self.cycle, np.int64)
        for s in range(len(self.counts)):
            idx = np.flatnonzero(which == s)
            rank[idx] = np.arange(len(idx))
        return which, rank

    def locate(self, g: int) -> tuple[int, int]:
        """(stream index, draw) of global row g."""
        c, pos = divmod(g, self.cycle)
        which, rank = self._cycle(c)
        s = int(which[pos])
        return s, c * int(self.counts[s]) + int(rank[pos])

    def row(self, g: int) -> np.ndarray:
        s, k = self.locate(g)
        return self.streams[s].draw(k)

    def batch(self, step: int, batch_size: int, ahead: int = 3) -> torch.Tensor:
        """Rows [batch_size, seq_len] (int64) of optimizer step `step` (global rows after `row_offset`). Streams
        that draw in workers (`row_workers.AheadStream`) are first asked for their rows of this step and the
        `ahead` steps after it."""
        g = self.row_offset + step * batch_size
        if any(hasattr(st, "request") for st in self.streams):
            wanted: dict[int, list[int]] = {}
            for i in range(g, g + (1 + ahead) * batch_size):
                s, k = self.locate(i)
                wanted.setdefault(s, []).append(k)
            for s, ks in wanted.items():
                if hasattr(self.streams[s], "request"):
                    self.streams[s].request(ks)
        return torch.from_numpy(np.stack([self.row(g + i) for i in range(batch_size)]))

    def start(self) -> None:
        """Start any stream's worker processes (`row_workers.AheadStream.start`)."""
        for st in self.streams:
            if hasattr(st, "start"):
                st.start()

    def close(self) -> None:
        """Stop any stream's worker processes."""
        for st in self.streams:
            if hasattr(st, "close"):
                st.close()

    def epochs_at(self, rows: int) -> dict[str, float]:
        """Passes over each finite stream after `rows` global rows (for the run's summary)."""
        return {s.name: rows * w / s.n for s, w in zip(self.streams, self.weights) if getattr(s, "n", None)}


# -- the whole corpus --------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    sources: list[SourceCorpus]
    weights: list[float]

    @property
    def train_tokens(self) -> int:
        return sum(len(s.train) for s in self.sources)

    @property
    def eval_tokens(self) -> int:
        return sum(len(s.eval) for s in self.sources)

    def sampler(self, seq_len: int, seed: int = 0, extra: list | None = None, row_offset: int = 0) -> MixtureSampler:
        """Train rows of `seq_len`; `extra` = [(stream, weight)] (e.g. generated retrieval rows) join the mix."""
        streams = [WindowStream(s.train, seq_len, seed * 31 + i, s.name) for i, s in enumerate(self.sources)]
        weights = list(self.weights)
        for stream, w in extra or []:
            streams.append(stream)
            weights.append(w)
        return MixtureSampler(streams, weights, seq_len, seed, row_offset=row_offset)

    def eval_rows(self, seq_len: int, max_rows: int = 64) -> torch.Tensor:
        """Held-out rows [N, seq_len] (int64), evenly spread over the held-out windows of every source."""
        per = [(s, len(s.eval) // seq_len) for s in self.sources]
        total = sum(n for _, n in per)
        if total == 0:
            raise ValueError(f"the held-out text ({self.eval_tokens} tokens) is shorter than one row of {seq_len}; "
                             "hold out more files (--held-out / --eval-fraction) or lower --seq-len")
        pick = np.unique(np.linspace(0, total - 1, min(max_rows, total)).round().astype(np.int64))
        rows, base = [], 0
        for s, n in per:
            for w in pick[(pick >= base) & (pick < base + n)] - base:
                rows.append(np.asarray(s.eval[w * seq_len : (w + 1) * seq_len], dtype=np.int64))
            base += n
        return torch.from_numpy(np.stack(rows))

    def hold_out_tail(self, seq_len: int, fraction: float) -> int:
        """When the held-out files hold less than one row (a corpus of one text file cannot be split by files):
        move the last `fraction` of the largest source's train windows (at least one row) to its held-out
        stream, views of the same maps. Returns the tokens moved; the caller says so."""
        s = max(self.sources, key=lambda x: len(x.train))
        n = max(1, round(len(s.train) // seq_len * fraction)) * seq_len
        if len(s.train) - n < seq_len:
            raise ValueError(f"the data is too short: {len(s.train)} tokens of {s.name} cannot give both a "
                             f"training row and a held-out row of {seq_len}; add text or lower --seq-len")
        cut = len(s.train) - n
        s.eval = np.concatenate([s.eval, s.train[cut:]]) if len(s.eval) else s.train[cut:]
        s.train = s.train[:cut]
        return n

    def describe(self) -> str:
        parts = [f"{s.name} {len(s.train) / 1e6:.2f} M train / {len(s.eval) / 1e6:.2f} M held-out tokens "
                 f"(weight {w:g}{', cached' if s.cache_hit else ''})" for s, w in zip(self.sources, self.weights)]
        return "; ".join(parts)

    def identity(self) -> dict:
        """What decides the token streams, for the run identity: every source's settings (tokenizer hash,
        held-out rule, caps), its file fingerprint and token counts after any `hold_out_tail`, and the weights.
        Unlike `manifest` it leaves out timings, so rebuilding the same files gives the same identity."""
        return {"sources": [{"settings": s.manifest["settings"], "files": s.manifest["fingerprint"],
                             "train_tokens": len(s.train), "eval_tokens": len(s.eval)} for s in self.sources],
                "weights": self.weights}

    def manifest(self) -> dict:
        """What the run trained on, for distillation.json and a resume check."""
        return {"sources": [{"folder": str(s.folder), **s.manifest["settings"], "counts": s.manifest["counts"]}
                            for s in self.sources], "weights": self.weights}


def build_corpus(paths: list[str | Path], tokenizer, weights: list[float] | None = None,
                 max_tokens: int | None = None, **kwargs) -> Corpus:
    """`build_source` for each path; `max_tokens` is shared out by weight (each source's cap is its share)."""
    if not paths:
        raise ValueError("no data sources given (--data)")
    weights = list(weights) if weights else [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"{len(paths)} --data sources but {len(weights)} --data-weight values")
    if any(w <= 0 for w in weights):
        raise ValueError(f"--data-weight values must be > 0, got {weights}")
    total = sum(weights)
    sources = [build_source(p, tokenizer, max_tokens=None if max_tokens is None else
                            max(1, round(max_tokens * w / total)), **kwargs) for p, w in zip(paths, weights)]
    for s in sources:
        if len(s.train) + len(s.eval) == 0:
            raise ValueError(f"the data has no non-empty document: {s.manifest['settings']['source']} holds no "
                             "text to tokenise")
    return Corpus(sources, weights)
