"""Checks of a source checkpoint against the architecture its config describes, before anything is converted.

transformers initialises a tensor the checkpoint lacks at random and only logs a report, so a source missing
`mlp.up_proj` would become a model with random MLP weights. Here every tensor is checked by name and shape:

    check_safetensors_files(folder, shapes)   local *.safetensors headers (no tensor data read): unreadable or
                                              truncated files, missing, unexpected and misshaped tensors
    check_loading_info(info, where)           transformers' own loading report (Hub ids, GGUF files)
    check_finite(named_tensors, where)        NaN / Inf in any floating tensor, one tensor at a time

Each raises one error naming the file, the tensor and its layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

# buffers some older checkpoints carry; the model recomputes them
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def layer_hint(name: str) -> str:
    """' (layer N)' for a per-layer tensor name, else ''."""
    parts = name.split(".")
    return f" (layer {parts[2]})" if len(parts) > 2 and parts[1] == "layers" else ""


def _shown(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(f"{x}{layer_hint(x)}" for x in names[:n]) + more


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a local folder: those its index names, else every *.safetensors; [] when none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index ({err})") from err
        files = [folder / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} names shard(s) {absent} that are not in {folder}")
        return files
    return sorted(folder.glob("*.safetensors"))


def read_headers(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, file name)} from the safetensors headers; a file that cannot be read is named."""
    from safetensors import safe_open

    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    if k in found:
                        raise ValueError(f"tensor {k} is in both {found[k][1]} and {f.name}")
                    found[k] = (tuple(h.get_slice(k).get_shape()), f.name)
        except ValueError:
            raise
        except Exception as err:  # SafetensorError: truncated or not a safetensors file
            raise ValueError(f"weight file {f} cannot be read (truncated or not safetensors?): {err}") from err
    return found


def check_safetensors_files(folder: str | Path, shapes: dict[str, tuple[int, ...]],
                            optional: Iterable[str] = ()) -> bool:
    """Compare a local folder's safetensors headers with `shapes` (every tensor the converter reads).

    `optional` names tensors that may be there or not (a tied lm_head). Returns False when the folder has no
    safetensors files (nothing to check here; the loading report is checked instead).
    """
    folder = Path(folder)
    files = safetensors_files(folder)
    if not files:
        return False
    found = read_headers(files)
    missing = [n for n in shapes if n not in found]
    if missing:
        raise ValueError(f"source {folder} is missing {len(missing)} tensor(s): {_shown(missing)}")
    optional = set(optional)
    extra = [n for n in found if n not in shapes and n not in optional and not n.endswith(_IGNORED_SUFFIXES)]
    if extra:
        raise ValueError(f"source {folder} has {len(extra)} tensor(s) its architecture does not use: {_shown(extra)} "
                         f"(in {found[extra[0]][1]}); is the config the one these weights belong to?")
    for n, want in shapes.items():
        got, fname = found[n]
        if got != tuple(want):
            raise ValueError(f"source {folder}: tensor {n}{layer_hint(n)} in {fname} has shape {got}, "
                             f"the config implies {tuple(want)}")
    return True


def check_loading_info(info: dict, where: str) -> None:
    """Refuse what transformers would have initialised at random (missing / misshaped) or dropped (unexpected)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"source {where} is missing {len(missing)} tensor(s): {_shown(missing)}")
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        n, got, want = mismatched[0]
        raise ValueError(f"source {where}: tensor {n}{layer_hint(n)} has shape {tuple(got)}, the config implies "
                         f"{tuple(want)}" + (f" ({len(mismatched) - 1} more)" if len(mismatched) > 1 else ""))
    extra = sorted(k for k in info.get("unexpected_keys") or [] if not k.endswith(_IGNORED_SUFFIXES))
    if extra:
        raise ValueError(f"source {where} has {len(extra)} tensor(s) its architecture does not use: {_shown(extra)}")


@torch.no_grad()
def check_files_finite(files, label=lambda f: str(f)) -> None:
    """`check_finite` over every tensor of the given safetensors files, one at a time (`label(file)` names it)."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as h:
            check_finite(((k, h.get_tensor(k)) for k in h.keys()), label(f))


def check_finite(named_tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Raise naming the first floating tensor holding NaN or Inf (and how many of its values are)."""
    for name, t in named_tensors:
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise ValueError(f"{where}: tensor {name}{layer_hint(name)} has {bad} non-finite value(s) ({kind} "
                             f"among them) of {t.numel()}")
