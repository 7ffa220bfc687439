"""Loading the source checkpoint and writing the output folder atomically.

`load_source` accepts a local folder, a Hub id (when online) or a GGUF file (transformers dequantises it)
and refuses architectures the converter does not handle before loading any weights. `write_folder` saves into
`<out>.tmp-<pid>` next to the target and renames it only once everything (weights, config, modeling code,
tokenizer, generation config, card) is written; on any error the temporary folder is removed.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .qwen_to_jet import SourceDims


def load_source(source: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer-or-None) of a Qwen2 / Qwen2.5 / Qwen3 checkpoint; the model in `dtype`, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    path = Path(source)
    if gguf_file is None and path.is_file() and path.suffix == ".gguf":
        source, gguf_file = str(path.parent), path.name
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if not path.exists() and ("/" not in source or source.startswith((".", "/"))):
        raise FileNotFoundError(f"source {source} is neither a local folder/file nor a Hub id (owner/name)")
    cfg = AutoConfig.from_pretrained(source, **kwargs)
    SourceDims.from_config(cfg)  # unsupported architecture -> clear error before loading weights
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).eval()
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as err:  # a bare weights folder is fine; the caller decides whether it needs one
        print(f"note: no tokenizer loaded from {source} ({type(err).__name__}: {err})")
        tok = None
    return model, tok


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder; on success it replaces `out`, on error it is deleted and `out` untouched."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_folder(out: str | Path, model, tokenizer=None, generation_config=None, card: str | None = None,
                 extra_files: dict[str, str] | None = None, overwrite: bool = False,
                 max_shard_size: str = "2GB", copy_files: dict[str, str | Path] | None = None,
                 layout: str = "transformers") -> Path:
    """save_pretrained (safetensors, sharded above `max_shard_size`) + tokenizer + generation config + card.

    `layout="official"` writes the config and tensors as the official release does (`official_layout.py`)."""
    from .data import check_tokenizer_fits
    from .official_layout import check_layout, check_representable, save_official

    if check_layout(layout) == "official":
        check_representable(model.config)  # before any output

    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model.config.vocab_size, "converted model")
    with atomic_folder(out, overwrite) as tmp:
        if layout == "official":
            save_official(model, tmp, max_shard_size=max_shard_size)
        else:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for name, path in (copy_files or {}).items():
            shutil.copyfile(path, tmp / name)
    return Path(out)
