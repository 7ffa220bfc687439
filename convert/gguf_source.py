"""A GGUF checkpoint's tensors as a transformers state dict, dequantised by `gguf_dequant` (on a GPU when there is
one), for `export.load_source`.

transformers reads the config and the tokenizer from the GGUF's metadata, and that part is kept. Only the tensors
take this path, which replaces its per-tensor NumPy dequantisation. The names follow `gguf`'s own map between
llama.cpp's tensor names and transformers' (`gguf.get_tensor_name_map`), for the architectures `export` accepts
(Qwen2, Qwen3). A model tensor the file lacks, a file tensor no model tensor claims, and a size that does not match are
refused with the tensor named.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .gguf_dequant import dequantize


def gguf_tensors(path: str | Path, names: dict[str, torch.Size], tied: bool, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of GGUF file `path` under transformers' names.

    names: the model's state-dict names and shapes; tied: lm_head shares the embedding (its `output.weight`, when
    the file has one, is then not read, as transformers does). Dequantised on `device` (default: CUDA if present),
    returned on the CPU in `dtype`. Also returns a report: tensors per type and path ("torch" or "gguf-numpy"),
    seconds.
    """
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"reading {path} needs the gguf package: pip install 'jet-nemotron[gguf]' ({err})") from err

    t0 = time.perf_counter()
    reader = gguf.GGUFReader(str(path))
    arch_name = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None:
        raise ValueError(f"{path}: GGUF architecture {arch_name!r} is unknown to the gguf package")
    blocks = 1 + max((int(n.split(".")[2]) for n in names if n.startswith("model.layers.")), default=-1)
    name_map = gguf.get_tensor_name_map(arch, blocks)
    by_file = {t.name: t for t in reader.tensors}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out, used, paths = {}, set(), Counter()
    for name, shape in names.items():
        if tied and name == "lm_head.weight":
            continue
        file_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if file_name is None or file_name not in by_file:
            raise KeyError(f"{path}: no tensor for the model's {name} (looked for {file_name})")
        t = by_file[file_name]
        kind = t.tensor_type.name
        # a copy of the file's bytes: the reader's arrays map the file read-only, and an F32 tensor's result would
        # otherwise be those very bytes
        x = dequantize(torch.from_numpy(np.array(t.data)).to(device), kind)
        if x is None:
            x = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))
            paths[f"{kind} (gguf-numpy)"] += 1
        else:
            paths[f"{kind} (torch)"] += 1
        if x.numel() != shape.numel():
            raise ValueError(f"{path}: tensor {file_name} holds {x.numel()} values; the model's {name} needs "
                             f"{tuple(shape)}")
        out[name] = x.reshape(shape).to("cpu", dtype)
        used.add(file_name)
    unread = sorted(set(by_file) - used - ({"output.weight"} if tied else set()))
    if unread:
        raise ValueError(f"{path}: tensors no model tensor claims: {unread[:5]}{' ...' if len(unread) > 5 else ''}")
    return out, {"tensors": dict(paths), "device": str(device), "seconds": time.perf_counter() - t0}
