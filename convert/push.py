"""Upload a converted folder to the Hugging Face Hub (`huggingface_hub.HfApi.upload_folder`)."""

from __future__ import annotations

from pathlib import Path

IGNORE = (".*", "**/.*", "__pycache__/*", "**/__pycache__/*", "checkpoints/*")


def files_to_upload(folder: str | Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of exactly the files `push` would upload, sorted."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a converted model folder?")
    rel = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    kept = list(filter_repo_objects(rel, ignore_patterns=list(IGNORE)))
    return sorted((r, (folder / r).stat().st_size) for r in kept)


def card_for_repo(card: str, repo_id: str) -> str:
    """The folder's model card with its usage snippet loading `repo_id` (the card names the local folder until
    the model has a repository)."""
    import re

    return re.sub(r'(from_pretrained\(")[^"]*(")', lambda m: m.group(1) + repo_id + m.group(2), card)


def check_repo_id(repo_id: str) -> None:
    """An `owner/name` Hub model id, refused with the rule it breaks."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise ValueError(f"repo id {repo_id!r} must be 'owner/name' (one '/')")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"repo id {repo_id!r} is not a valid Hub id: {err}") from err


def check_folder(folder: str | Path) -> None:
    """The folder holds a loadable Jet-Nemotron model: its config parses, and the weight files hold every tensor
    the config implies, in its shape, all finite (read one tensor at a time)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import jet_nemotron  # noqa: F401  (registers the config and model classes)

    from .source_check import check_files_finite, read_headers, safetensors_files

    folder = Path(folder)
    try:
        cfg = AutoConfig.from_pretrained(folder)
    except Exception as err:
        raise ValueError(f"{folder / 'config.json'} cannot be read as a model config: {err}") from err
    files = safetensors_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} has no weights (*.safetensors); nothing loadable to upload")
    found = read_headers(files)
    with torch.device("meta"):
        want = AutoModelForCausalLM.from_config(cfg).state_dict()
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    missing = [n for n in want if n not in found and n not in tied]
    if missing:
        raise ValueError(f"{folder}: the weights lack {len(missing)} tensor(s) its config needs, e.g. {missing[:3]}")
    for n, t in want.items():
        if n in found and found[n][0] != tuple(t.shape):
            raise ValueError(f"{folder}: tensor {n} in {found[n][1]} has shape {found[n][0]}, the config implies "
                             f"{tuple(t.shape)}")
    check_files_finite(files)


def push(folder: str | Path, repo_id: str, *, private: bool = True, revision: str | None = None,
         dry_run: bool = False, message: str = "Upload Jet-Nemotron conversion") -> list[tuple[str, int]]:
    """Validate (repo id, config, weights), then create the repo (if needed), the branch `revision` (if given)
    and upload; returns the file list. `dry_run` validates and lists, and uploads nothing."""
    check_repo_id(repo_id)
    files = files_to_upload(folder)
    check_folder(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    from huggingface_hub import CommitOperationAdd

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    # one commit; the card goes up with the repo id in its usage snippet, the local folder stays as it is
    ops = [CommitOperationAdd(name, card_for_repo((Path(folder) / name).read_text(), repo_id).encode()
                              if name == "README.md" else str(Path(folder) / name)) for name, _ in files]
    api.create_commit(repo_id, ops, commit_message=message, revision=revision)
    return files
