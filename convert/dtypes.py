"""The dtypes a converted folder may be saved in, and the one default the CLI and the library share."""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "bfloat16"  # the official release's dtype: half of fp32's bytes


def torch_dtype(name: str):
    """torch dtype of `name`; anything else is refused with the allowed names."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not supported; allowed: {list(DTYPES)}")
    return getattr(torch, name)
