"""Distillation data: local text / jsonl / parquet files or a saved `datasets` folder, tokenised and packed.

Documents are tokenised, joined with the EOS token between them, and cut into rows of `seq_len` tokens (the
tail that does not fill a row is dropped). The last `eval_fraction` of the rows (at least one) is held out
for perplexity; it is taken from the end, so adding training text never moves the held-out rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")


@dataclass
class PackedData:
    train: torch.Tensor  # [N_train, seq_len] int64
    eval: torch.Tensor  # [N_eval, seq_len] int64
    num_documents: int
    num_tokens: int  # tokens before packing (the tail is dropped)
    sources: list[str]


def _iter_file(path: Path, text_field: str):
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or suffix == ".json":
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not a JSON line ({err})") from err
                if text_field not in row:
                    raise KeyError(f"{path}:{n}: no field {text_field!r} (fields: {sorted(row)}); use --text-field")
                yield row[text_field]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise KeyError(f"{path}: no column {text_field!r} (columns: {table.column_names}); use --text-field")
        yield from table.column(text_field).to_pylist()
    else:
        yield path.read_text(errors="replace")


def iter_documents(paths: list[str | Path], text_field: str = "text"):
    """Yield (source, text) for every document in the given files, folders or saved `datasets` folders."""
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"data path {p} does not exist")
        if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else next(iter(ds.values()))
            if text_field not in ds.column_names:
                raise KeyError(f"{p}: no column {text_field!r} (columns: {ds.column_names}); use --text-field")
            for t in ds[text_field]:
                yield str(p), t
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in
                           TEXT_SUFFIXES + (".jsonl", ".json", ".parquet"))
            for f in files:
                for t in _iter_file(f, text_field):
                    yield str(f), t
        else:
            for t in _iter_file(p, text_field):
                yield str(p), t


def pack_documents(texts, tokenizer, seq_len: int, eval_fraction: float = 0.05, min_train_rows: int = 1,
                   max_tokens: int | None = None, progress: bool = False) -> PackedData:
    """Tokenise, join with EOS, pack into [N, seq_len] rows and split off the held-out rows."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    n_docs, sources = 0, []
    it = texts
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(texts, desc="tokenising", unit="doc")
    for src, text in it:
        if not text or not str(text).strip():
            continue
        ids.extend(tokenizer(str(text), add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        n_docs += 1
        if src not in sources:
            sources.append(src)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if n_docs == 0:
        raise ValueError("the data has no non-empty document")
    rows = len(ids) // seq_len
    n_eval = max(1, int(round(rows * eval_fraction))) if eval_fraction > 0 else 0
    if rows - n_eval < min_train_rows:
        raise ValueError(f"the data is too short: {len(ids)} tokens make {rows} rows of {seq_len}, but training "
                         f"needs {min_train_rows} rows plus {n_eval} held out; add text or lower --seq-len")
    packed = torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
    return PackedData(packed[: rows - n_eval], packed[rows - n_eval:], n_docs, len(ids), sources)


def load_packed(paths, tokenizer, seq_len: int, text_field: str = "text", eval_fraction: float = 0.05,
                min_train_rows: int = 1, max_tokens: int | None = None, progress: bool = True) -> PackedData:
    """`iter_documents` + `pack_documents`."""
    return pack_documents(iter_documents(paths, text_field), tokenizer, seq_len, eval_fraction, min_train_rows,
                          max_tokens, progress)


def check_tokenizer_fits(tokenizer, vocab_size: int, where: str = "model") -> None:
    """Refuse a tokenizer that can produce ids the embedding table does not have."""
    n = len(tokenizer)
    if n > vocab_size:
        raise ValueError(f"tokenizer has {n} tokens but the {where} embeds only {vocab_size}; ids >= {vocab_size} "
                         "would index past the embedding table")
