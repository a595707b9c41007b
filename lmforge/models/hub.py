"""Hugging Face Hub ids (``Qwen/Qwen2.5-0.5B``) resolved through the local Hugging Face cache;
lmforge never downloads at run time.

    folder = resolve_model_path("Qwen/Qwen2.5-0.5B")   # …/models--Qwen--Qwen2.5-0.5B/snapshots/<rev>
    folder = resolve_model_path("runs/sft/model")      # a local folder is returned as it is

The cache is the one ``huggingface-cli download`` fills (``huggingface_hub``'s layout):
``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub``; a model ``Org/Name`` lives in ``models--Org--Name/``, with
``refs/<revision>`` holding a commit hash and ``snapshots/<commit>/`` the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from lmforge.models.hf import CheckpointError

# ``Org/Name`` or ``Org/Name@revision``: one slash, HF's allowed characters, no leading dot.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelNotFoundError(CheckpointError):
    """``--model`` is neither a local folder nor a Hub id in the local cache."""


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face Hub cache folder, found as ``huggingface_hub`` finds it."""
    env = os.environ if environ is None else environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path("~/.cache")
    return base.expanduser() / "huggingface" / "hub"


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub model id (``Org/Name[@revision]``)."""
    return bool(HUB_ID.match(name))


def cached_snapshot(repo_id: str, revision: str = "main", cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of model ``repo_id`` at ``revision`` (a branch, a tag or
    a commit hash) holding a ``config.json``, or None when the cache does not have it."""
    cache = hub_cache_dir() if cache is None else Path(cache)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    folder = snapshots / commit
    if (folder / "config.json").is_file():
        return folder
    if revision != "main" or ref.is_file():  # a named revision that is not (fully) there
        return None
    # No refs/main (a cache copied without refs): the newest complete snapshot.
    found = [f for f in snapshots.iterdir() if (f / "config.json").is_file()]
    return max(found, key=lambda f: f.stat().st_mtime) if found else None


def resolve_model_path(name: str | os.PathLike, cache: Path | None = None) -> Path:
    """``name`` as a local folder: itself when it exists or is not shaped like a Hub id,
    else the Hub id's snapshot in the local cache; `ModelNotFoundError` (saying how to
    download it) when the cache does not have it. Nothing is downloaded."""
    path = Path(name)
    text = str(name)
    if path.exists() or not is_hub_id(text):
        return path
    repo_id, _, revision = text.partition("@")
    cache = hub_cache_dir() if cache is None else Path(cache)
    folder = cached_snapshot(repo_id, revision or "main", cache)
    if folder is None:
        rev = f" --revision {revision}" if revision else ""
        raise ModelNotFoundError(
            f"{text}: no such directory, and not in the local Hugging Face cache ({cache}); "
            f"if it is a Hub model, download it with `huggingface-cli download {repo_id}{rev}` "
            "(lmforge never downloads at run time; HF_HUB_CACHE / HF_HOME choose the cache)"
        )
    return folder


def hub_id_of(path: str | os.PathLike) -> str | None:
    """``Org/Name`` when ``path`` is a snapshot folder of the Hugging Face cache
    (``…/models--Org--Name/snapshots/<rev>``), else None."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        org_name = parts[-3].removeprefix("models--").split("--", 1)
        if len(org_name) == 2 and all(org_name):
            return "/".join(org_name)
    return None


__all__ = [
    "ModelNotFoundError",
    "cached_snapshot",
    "hub_cache_dir",
    "hub_id_of",
    "is_hub_id",
    "resolve_model_path",
]
