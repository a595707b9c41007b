"""Checkpoint manifests: each way a folder goes bad is named (file and problem)."""

from __future__ import annotations

import hashlib
import json

import pytest

from lmforge.train.manifest import (
    MANIFEST,
    CheckpointCorrupt,
    check_present,
    file_sha256,
    verify_manifest,
    write_manifest,
)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "trainer_state").mkdir()
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "trainer_state" / "state.json").write_text('{"step": 3}')
    write_manifest(tmp_path, step=3)
    return tmp_path


def test_manifest_lists_every_file_with_size_and_sha256(folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["step"] == 3 and sorted(manifest["files"]) == [
        "model.safetensors", "trainer_state/state.json"]  # fmt: skip
    data = (folder / "model.safetensors").read_bytes()
    entry = manifest["files"]["model.safetensors"]
    assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert file_sha256(folder / "model.safetensors") == entry["sha256"]
    verify_manifest(folder)  # a fresh checkpoint verifies


def test_bit_flip_is_found_only_by_the_digest(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x10
    path.write_bytes(bytes(data))
    check_present(folder)  # same size: the cheap check passes
    with pytest.raises(CheckpointCorrupt, match="model.safetensors: SHA-256 differs") as err:
        verify_manifest(folder)
    assert err.value.file == "model.safetensors" and err.value.folder == folder


def test_truncation_missing_files_and_a_deleted_folder_are_named(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointCorrupt, match="100 bytes, the manifest says 10,240"):
        check_present(folder)
    path.unlink()
    with pytest.raises(CheckpointCorrupt, match="model.safetensors: missing"):
        verify_manifest(folder)
    write_manifest(folder)
    (folder / "trainer_state" / "state.json").unlink()
    (folder / "trainer_state").rmdir()
    with pytest.raises(CheckpointCorrupt, match=r"trainer_state/ is missing \(deleted\?\)"):
        verify_manifest(folder)


def test_missing_or_damaged_manifest(folder):
    (folder / MANIFEST).write_text('{"files": ')
    with pytest.raises(CheckpointCorrupt, match="manifest.json: unreadable"):
        verify_manifest(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(CheckpointCorrupt, match="no manifest.json: the save did not finish"):
        verify_manifest(folder)
