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


def card_for_repo(card: str, repo_id: str) -> str:
    """The folder's model card with its usage snippet loading `repo_id` (the card names the local folder until
    the model has a repository)."""
    import re

    return re.sub(r'(from_pretrained\(")[^"]*(")', lambda m: m.group(1) + repo_id + m.group(2), card)


def push(folder: str | Path, repo_id: str, private: bool = True, revision: str | None = None,
         dry_run: bool = False, message: str = "Upload Jet-Nemotron conversion") -> list[tuple[str, int]]:
    """Create the repo (if needed), the branch `revision` (if given) and upload; returns the file list."""
    files = files_to_upload(folder)
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
