"""Loading the source checkpoint and writing the output folder atomically.

`load_source` accepts a local folder, a Hub id (when online) or a GGUF file (transformers dequantises it)
and refuses architectures the converter does not handle before loading any weights; a local folder's tensors
are checked by name and shape from the safetensors headers first, and every loaded tensor must be finite
(`source_check.py`). `write_folder` saves into `.<out>.tmp-<pid>` next to the target, reads back what it wrote
(every tensor present, right shape, finite; the config loads) and renames it only then; on any error the
temporary folder is removed. Temporary folders of processes that no longer run (a `kill -9`) are removed by the
next write to the same target. `refuse_overlap` keeps a command from writing over its own input.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .qwen_to_jet import SourceDims, source_shapes
from .source_check import (check_files_finite, check_finite, check_loading_info, check_safetensors_files, read_headers,
                           safetensors_files)


def load_source_config(source: str, **kwargs):
    """AutoConfig of a source, with a broken or missing config.json named."""
    from transformers import AutoConfig

    path = Path(source)
    if path.is_dir() and not (path / "config.json").is_file() and not kwargs.get("gguf_file"):
        raise FileNotFoundError(f"source folder {path} has no config.json; is it a model folder?")
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except Exception as err:
        if path.is_dir():  # not a Hub lookup problem: the local config itself is bad (JSON, a zero head count...)
            raise ValueError(f"{path / 'config.json'} cannot be read as a model config: {err}") from err
        raise


def load_source(source: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer-or-None) of a Qwen2 / Qwen2.5 / Qwen3 checkpoint; the model in `dtype`, eval mode.

    Refused before the weights load: an unsupported architecture; for a local folder, any missing, unexpected or
    misshaped tensor and unreadable weight files. Refused after: anything transformers reports it initialised at
    random, and any NaN / Inf tensor.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    path = Path(source)
    if gguf_file is None and path.is_file() and path.suffix == ".gguf":
        source, gguf_file = str(path.parent), path.name
        path = Path(source)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        if path.is_dir() and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file {path / gguf_file} does not exist")
    if not path.exists() and ("/" not in source or source.startswith((".", "/"))):
        raise FileNotFoundError(f"source {source} is neither a local folder/file nor a Hub id (owner/name)")
    cfg = load_source_config(source, **kwargs)
    src = SourceDims.from_config(cfg)  # unsupported architecture -> clear error before loading weights
    if path.is_dir() and not gguf_file:
        checked = check_safetensors_files(path, source_shapes(src),
                                          optional=["lm_head.weight"] if src.tie_word_embeddings else [])
        if not checked and not any(path.glob("*.bin")):
            raise FileNotFoundError(f"source folder {path} has no weights (*.safetensors or *.bin)")
    # a local GGUF's tensors: dequantised in torch (gguf_source), bit for bit transformers' values; the 1.5B
    # teacher's 339 tensors took 46 s on a 2-core CPU against transformers' 54 s, and move to the GPU where there
    # is one. A GGUF's metadata (its whole vocabulary, field by field, ~14 s a parse there) is still parsed 3 times:
    # the config above, the tensors' reader, the tokenizer
    if gguf_file and path.is_dir():
        model = _load_gguf(path / gguf_file, cfg, dtype)
    else:
        model, info = AutoModelForCausalLM.from_pretrained(source, config=cfg, dtype=dtype, output_loading_info=True,
                                                           ignore_mismatched_sizes=True, **kwargs)
        check_loading_info(info, source)
    check_finite(model.state_dict().items(), f"source {source}")
    model.eval()
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as err:  # a bare weights folder is fine; the caller decides whether it needs one
        print(f"note: no tokenizer loaded from {source} ({type(err).__name__}: {err})")
        tok = None
    return model, tok


def load_tokenizer(source: str | Path):
    """The tokenizer of a model folder, a Hub id, or a local .gguf file (its vocabulary parsed, no tensor read), as
    `load_source` loads it."""
    from transformers import AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf" and path.is_file():
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(source))


def _load_gguf(file: Path, cfg, dtype: torch.dtype):
    """The model of `cfg` (read from the GGUF's metadata by transformers) with the file's tensors dequantised by
    `gguf_source` (on the GPU when there is one), the same values as transformers' own GGUF loading (tested)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from .gguf_source import gguf_tensors

    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) are made for real
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.tie_weights()  # as from_pretrained does (not inside the context): lm_head is the embedding if tied
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    names = {n: t.shape for n, t in model.state_dict().items()}
    tensors, report = gguf_tensors(file, names, tied, dtype=dtype)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise ValueError(f"{file}: tensors missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report["tensors"].items()))
    print(f"{file.name}: {len(tensors)} tensors ({kinds}) dequantised on {report['device']} in "
          f"{report['seconds']:.1f} s")
    return model


def save_dequantised(model, tokenizer, folder: str | Path) -> None:
    """Save a model loaded from a GGUF (dequantised) as a plain folder with its tokenizer, written to FOLDER.tmp and
    renamed. A model transformers itself loaded from a GGUF (a Hub id) is still marked GGUF-quantised, and
    transformers refuses to save it though its tensors are plain: the marks go first."""
    model.hf_quantizer, model.config.quantization_config, model.is_quantized = None, None, False
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)


def refuse_overlap(out: str | Path, inputs: dict[str, str | Path | None], what: str = "output") -> None:
    """Refuse an output that is, contains or lies inside one of the local `inputs` ({role: path}).

    Replacing `out` would delete an input inside it; writing into an input's folder mixes the two.
    """
    o = Path(out).resolve()
    for role, p in inputs.items():
        if p is None or not Path(p).exists():
            continue
        i = Path(p).resolve()
        if o == i or o in i.parents or i in o.parents:
            raise ValueError(f"{what} {out} overlaps the {role} {p}: a command never writes over its own input; "
                             "choose another output folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove `.<name>.tmp-<pid>` / `.<name>.old-<pid>` beside `out` whose process is gone; returns them."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        _remove(p)
        removed.append(p)
    if removed:
        print(f"removed {len(removed)} temporary folder(s) left by processes that no longer run: "
              f"{[p.name for p in removed]}")
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder; on success it replaces `out`, on error it is deleted and `out` untouched."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
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
        _remove(old)  # a file replaced by --overwrite too, which rmtree left behind
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
        verify_folder(tmp, model, names=layout == "transformers")
    return Path(out)


def verify_folder(folder: Path, model, names: bool = True) -> None:
    """Read back a just-written folder: every tensor finite, the config loads, and (`names`: our layout, whose
    names are the model's) every tensor of `model` present with its shape.

    A tensor may be absent when it shares storage with a saved one (tied embeddings).
    """
    from transformers import AutoConfig

    files = safetensors_files(folder)
    if not files:
        raise RuntimeError(f"{folder}: no safetensors file was written")
    found = read_headers(files)
    saved_ptrs = set()
    want = model.state_dict() if names else {}
    for n, t in want.items():
        if n in found:
            saved_ptrs.add(t.data_ptr())
    for n, t in want.items():
        if n not in found and t.data_ptr() not in saved_ptrs:
            raise RuntimeError(f"{folder}: tensor {n} was not written")
        if n in found and found[n][0] != tuple(t.shape):
            raise RuntimeError(f"{folder}: tensor {n} was written with shape {found[n][0]}, the model has "
                               f"{tuple(t.shape)}")
    check_files_finite(files, lambda f: f"written file {f.name}")
    AutoConfig.from_pretrained(folder)
