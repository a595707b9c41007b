"""`lmforge.models.hub`: Hub ids resolved through the local Hugging Face cache (checked against
``huggingface_hub``'s own cache lookup), never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmforge.models.hub import (
    ModelNotFoundError,
    cached_snapshot,
    hub_cache_dir,
    hub_id_of,
    is_hub_id,
    resolve_model_path,
)

COMMIT = "a" * 40
OLD = "b" * 40


def fake_repo(cache: Path, repo_id: str, commits=(COMMIT,), main: str | None = COMMIT) -> Path:
    """``models--Org--Name`` with one snapshot per commit (config.json a link to a blob)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    for commit in commits:
        blob = repo / "blobs" / f"cfg-{commit}"
        blob.write_text('{"model_type": "llama"}')
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").symlink_to(blob)
    if main is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)
    return repo


def test_cache_dir_follows_huggingface_hub_precedence(tmp_path):
    home = str(Path("~").expanduser())
    assert hub_cache_dir({}) == Path(home) / ".cache" / "huggingface" / "hub"
    assert hub_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert hub_cache_dir({"XDG_CACHE_HOME": "/x", "HF_HOME": "/h"}) == Path("/h/hub")
    assert hub_cache_dir({"HF_HOME": "/h", "HF_HUB_CACHE": "/c"}) == Path("/c")
    assert hub_cache_dir({"HUGGINGFACE_HUB_CACHE": "/legacy"}) == Path("/legacy")


def test_is_hub_id():
    for name in ("Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "org/name@v1.0"):
        assert is_hub_id(name), name
    for name in ("ckpt/", "runs/sft/model", "/abs/path", "./a/b", "gpt2", "a/b/c", "../x/y"):
        assert not is_hub_id(name), name


def test_snapshot_matches_huggingface_hubs_lookup(tmp_path):
    from huggingface_hub import try_to_load_from_cache

    fake_repo(tmp_path, "Org/Name", commits=(COMMIT, OLD))
    ours = cached_snapshot("Org/Name", cache=tmp_path)
    theirs = try_to_load_from_cache("Org/Name", "config.json", cache_dir=str(tmp_path))
    assert ours == tmp_path / "models--Org--Name" / "snapshots" / COMMIT
    assert ours / "config.json" == Path(theirs)
    old = cached_snapshot("Org/Name", OLD, cache=tmp_path)  # a commit as the revision
    assert Path(try_to_load_from_cache("Org/Name", "config.json", cache_dir=str(tmp_path),
                                       revision=OLD)) == old / "config.json"  # fmt: skip
    assert cached_snapshot("Org/Name", "v9", cache=tmp_path) is None
    assert cached_snapshot("Org/Other", cache=tmp_path) is None


def test_snapshot_without_refs_is_the_newest_complete_one(tmp_path):
    repo = fake_repo(tmp_path, "Org/Name", commits=(OLD, COMMIT), main=None)
    os.utime(repo / "snapshots" / OLD, (1, 1))
    (repo / "snapshots" / ("c" * 40)).mkdir()  # an interrupted download: no config.json
    assert cached_snapshot("Org/Name", cache=tmp_path) == repo / "snapshots" / COMMIT


def test_resolve_model_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    repo = fake_repo(tmp_path / "cache", "Org/Name")
    assert resolve_model_path("Org/Name") == repo / "snapshots" / COMMIT
    assert resolve_model_path(f"Org/Name@{COMMIT}") == repo / "snapshots" / COMMIT
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Org" / "Name").mkdir(parents=True)  # a local folder wins over the cache
    assert resolve_model_path("Org/Name") == Path("Org/Name")
    assert resolve_model_path("runs/sft/model") == Path("runs/sft/model")  # not an id: as is
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("Qwen/Qwen2.5-0.5B@v2")
    message = str(err.value)
    assert "download it with `huggingface-cli download Qwen/Qwen2.5-0.5B --revision v2`" in message
    assert str(tmp_path / "cache") in message and "never downloads" in message
    assert isinstance(err.value, ValueError)  # a one-line command error


def test_hub_id_of():
    assert hub_id_of(f"/c/models--Qwen--Qwen2.5-0.5B/snapshots/{COMMIT}") == "Qwen/Qwen2.5-0.5B"
    assert hub_id_of(f"/c/models--a--b--c/snapshots/{COMMIT}") == "a/b--c"
    assert hub_id_of("/runs/sft/model") is None
    assert hub_id_of("/c/models--solo/snapshots/x") is None
