"""What makes two distillation runs the same run, so `--resume` never continues another one.

A run's identity is a flat-ish JSON dict written into every checkpoint's `progress.json`:

    {"format": 1,
     "stage1": {steps, batch_size, lr, warmup_steps, seed, ...}, "stage2": {...},   # every result-changing field
     "seq_len": 2048, "data": "<data fingerprint>", "teacher": "<config hash>", "student": "<config hash>",
     "config_hash": "<hash of all of the above but data>"}

Fields that change only speed or bookkeeping (micro_batch, kl_chunk, gradient checkpointing, logging and saving
cadence) are left out, so a run may resume on another number of processes or with another save interval.

The data fingerprint hashes the tokenised corpus's identity (`corpus_fingerprint` below: its manifest's settings,
file fingerprints and counts, the mixing weights, the held-out split) plus the token cap and held-out rows; the
retrieval rows and the corpus offset (`start_tokens`) are their own fields. `describe_difference` names every
field that differs, except a stage's field that the checkpoint lacks and this run holds at its declared default: a
field added after the checkpoint was written, whose default is what the version before it did (an opt-in such as
`kl_focus` is added so), so a run resumes across such an upgrade.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict

FORMAT = 1
# DistillConfig fields that change neither the batches nor the arithmetic (beyond summation order); and
# time_budget_s, whose step count is the machine's (each checkpoint holds the count it chose, which a resume keeps)
NOT_IDENTITY = ("micro_batch", "kl_chunk", "gradient_checkpointing", "save_every", "keep_checkpoints", "log_every",
                "eval_batch", "history", "compile", "peak_tflops", "fused_kl", "projections_as_one",
                "kl_kernel", "fused_adam", "teacher_kernels",
                "mse_kernel", "time_budget_s")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fields(cfg) -> dict:
    """The result-changing fields of one resolved DistillConfig."""
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_IDENTITY}


def config_fingerprint(config) -> str:
    """Hash of a model config's architecture fields (not its path, dtype or transformers version)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    skip = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "auto_map",
            "_commit_hash", "output_attentions", "output_hidden_states", "use_cache")
    return _hash({k: v for k, v in d.items() if k not in skip})


def corpus_fingerprint(corpus_identity: dict, **options) -> str:
    """Hash of the data a run reads: the corpus's identity (`corpus.Corpus.identity`: every source's settings,
    held-out split, file fingerprint and token counts, the mixing weights) and `options` (token caps, rows)."""
    return _hash({"corpus": corpus_identity, "options": options})


def run_identity(stages: list, seq_len: int, data_fingerprint: str, teacher_config=None, student_config=None,
                 **extra) -> dict:
    """The identity of a run of resolved `stages` (DistillConfig) on data `data_fingerprint`."""
    ident = {f"stage{c.stage}": stage_fields(c) for c in stages}
    ident["seq_len"] = seq_len
    if teacher_config is not None:
        ident["teacher"] = config_fingerprint(teacher_config)
    if student_config is not None:
        ident["student"] = config_fingerprint(student_config)
    ident.update(extra)
    ident["config_hash"] = _hash(ident)
    ident["data"] = data_fingerprint
    ident["format"] = FORMAT
    return ident


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _added_at_default(key: str, value) -> bool:
    """Whether flat `key` ("stage2.kl_focus", "this_stage.lr") is a DistillConfig field that `value` holds at its
    declared default."""
    from .distill_config import DistillConfig

    head, _, name = key.partition(".")
    f = DistillConfig.__dataclass_fields__.get(name)
    return ((head.startswith("stage") or head == "this_stage") and f is not None and f.default is not MISSING
            and f.default == value)


def describe_difference(saved: dict | None, current: dict) -> str:
    """'' when equal, else 'stage1.lr 0.001 -> 0.002; data 1a2b.. -> 3c4d..' (config_hash left out; a stage field
    the saved identity lacks, here at its default, is no difference: module docstring)."""
    if not saved:
        return "the checkpoint records no run identity (written by an older version)"
    a, b = _flat(saved), _flat(current)
    diffs = [f"{k} {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in sorted(set(a) | set(b))
             if k != "config_hash" and a.get(k) != b.get(k) and not (k not in a and _added_at_default(k, b[k]))]
    return "; ".join(diffs)
