"""The stamp every benchmark writes into its result: which commit, on which card, when.

A result file holds `"stamp": [{"commit", "card", "date", "versions", ...}, ...]`, one entry per run it was made
from (a file merged from several device calls lists each). History lives in git: a new run replaces the file.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> str:
    """HEAD of this checkout, with "+dirty" when tracked files differ from it. A device machine gets a copy of the
    files without .git: there the caller says it with JET_NEMOTRON_COMMIT, and an unnamed one is "unknown"."""
    if os.environ.get("JET_NEMOTRON_COMMIT"):  # said by the caller: a device copy's own .git can be stale
        return os.environ["JET_NEMOTRON_COMMIT"]
    head = _git("rev-parse", "HEAD")
    if head is None:
        return "unknown (no git checkout and JET_NEMOTRON_COMMIT unset)"
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def versions() -> dict[str, str]:
    """torch, transformers and triton as this process imports them ("absent" for one not installed): a number
    means little without the library versions that produced it (transformers 5.x changed generate()'s cache).
    The module's own `__version__`, not the package metadata's, so torch keeps its build tag (2.15.0+cu132)."""
    import importlib

    out = {}
    for name in ("torch", "transformers", "triton"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            out[name] = "absent"
    return out


def stamp(**extra) -> dict:
    """{"commit", "card", "date", "versions"} of this run plus `extra`; card is the GPU's name, or "cpu" without
    CUDA."""
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"commit": commit(), "card": card, "date": date, "versions": versions(), **extra}


# how a text result's first line begins (`stamp_line`): a text that begins so is stamped already
STAMP_LINE_START = "stamp: commit "


def stamp_line(st: dict) -> str:
    """A text result's first line, from a stamp: its commit, card and date."""
    return f"{STAMP_LINE_START}{st['commit']}, card {st['card']}, date {st['date']}"
