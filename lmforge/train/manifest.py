"""Checkpoint manifests: a SHA-256 and a size per file, written last, verified on resume.

    write_manifest(folder)        # after every other file of the checkpoint is on disk
    verify_manifest(folder)       # CheckpointCorrupt naming the bad file, or None

``manifest.json`` lists every file of a checkpoint folder (relative path → size, sha256). It
is written after all of them, so a checkpoint is complete exactly when its manifest exists
and every file it lists is present with that size and digest. `verify_manifest` tells
apart the ways a checkpoint goes bad — a missing file (or a deleted ``trainer_state/``), a
truncated file (size), flipped bits or a damaged header (digest), a missing or unreadable
manifest (a save that never finished) — and names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lmforge.io import atomic_write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class CheckpointCorrupt(ValueError):
    """A checkpoint that fails verification; ``file`` is the bad file (relative), or None."""

    def __init__(self, folder: Path, problem: str, file: str | None = None) -> None:
        self.folder, self.problem, self.file = Path(folder), problem, file
        where = f"{file}: " if file else ""
        super().__init__(f"{self.folder}: {where}{problem}")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` (relative, sorted), the manifest excluded."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(folder: str | os.PathLike, step: int | None = None) -> Path:
    """Hash every file of ``folder`` and write ``manifest.json`` (atomically); return it."""
    folder = Path(folder)
    files = {
        rel: {"size": (folder / rel).stat().st_size, "sha256": file_sha256(folder / rel)}
        for rel in checkpoint_files(folder)
    }
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return folder / MANIFEST


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed manifest; `CheckpointCorrupt` when it is missing or unreadable."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointCorrupt(
            folder, f"no {MANIFEST}: the save did not finish (or an older lmforge wrote it)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and "sha256" in v
            for v in files.values()
        ):
            raise ValueError("bad 'files' entry")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorrupt(folder, f"unreadable ({exc})", MANIFEST) from exc
    return manifest


def _missing_problem(rel: str, folder: Path) -> CheckpointCorrupt:
    top = rel.split("/", 1)[0]
    if "/" in rel and not (folder / top).is_dir():
        return CheckpointCorrupt(folder, f"the folder {top}/ is missing (deleted?)", rel)
    return CheckpointCorrupt(folder, "missing", rel)


def check_present(folder: str | os.PathLike) -> None:
    """The cheap check: the manifest reads and lists files present with their sizes."""
    folder = Path(folder)
    for rel, entry in read_manifest(folder)["files"].items():
        path = folder / rel
        if not path.is_file():
            raise _missing_problem(rel, folder)
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointCorrupt(
                folder, f"{size:,} bytes, the manifest says {entry['size']:,} (truncated?)", rel
            )


def verify_manifest(folder: str | os.PathLike) -> None:
    """The full check: `check_present`, then every file's SHA-256 against the manifest."""
    folder = Path(folder)
    check_present(folder)
    for rel, entry in read_manifest(folder)["files"].items():
        if file_sha256(folder / rel) != entry["sha256"]:
            raise CheckpointCorrupt(
                folder, "SHA-256 differs from the manifest (bits changed on disk)", rel
            )


__all__ = [
    "MANIFEST",
    "CheckpointCorrupt",
    "check_present",
    "checkpoint_files",
    "file_sha256",
    "read_manifest",
    "verify_manifest",
    "write_manifest",
]
