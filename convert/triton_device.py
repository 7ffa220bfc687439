"""Where a Triton kernel of the distillation may run: on CUDA, or on the CPU in Triton's interpreter (tests)."""

from __future__ import annotations

import os

import torch


def check_triton_device(what: str, device) -> None:
    """Raise a ValueError naming `what` where it cannot run: asked for there, a kernel is an error, not a quiet
    fallback to its reference."""
    if torch.device(device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{what} runs on CUDA, not on {device} (TRITON_INTERPRET=1 runs it on the CPU, slowly, "
                         "for tests)")
