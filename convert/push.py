"""Upload a converted folder to the Hugging Face Hub (`huggingface_hub.HfApi.upload_folder`)."""

from __future__ import annotations

from pathlib import Path

IGNORE = (".*", "**/.*", "__pycache__/*", "**/__pycache__/*", "checkpoints/*")


def files_to_upload(folder: str | Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of exactly the files `push` would upload, sorted."""
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a converted model folder?")
    rel = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    kept = list(filter_repo_objects(rel, ignore_patterns=list(IGNORE)))
    return sorted((r, (folder / r).stat().st_size) for r in kept)


def push(folder: str | Path, repo_id: str, private: bool = True, revision: str | None = None,
         dry_run: bool = False, message: str = "Upload Jet-Nemotron conversion") -> list[tuple[str, int]]:
    """Create the repo (if needed), the branch `revision` (if given) and upload; returns the file list."""
    files = files_to_upload(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, commit_message=message,
                      ignore_patterns=list(IGNORE))
    return files
