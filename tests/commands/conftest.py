"""Fixtures for command tests: tiny checkpoints on disk, and ``run`` (a command in-process:
exit status, stdout, stderr)."""

from __future__ import annotations

import pytest
import torch

from lmforge.cli import main
from lmforge.data.tasks import synthetic_corpus
from lmforge.models.hf import save_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.tokenizer import Tokenizer

VOCAB = 320


@pytest.fixture
def run(capsys):
    """``run(*argv) -> (exit status, stdout, stderr)`` of ``lmforge argv`` in-process."""

    def run_command(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run_command


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(synthetic_corpus(300, seed=0), vocab_size=VOCAB)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny fp32 llama checkpoint with its tokenizer; returns (folder, model)."""
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=VOCAB, **ids)).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    save_model(model, folder, tokenizer=tokenizer)
    return folder, model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, checkpoint):
    """A LoRA adapter (random non-zero weights, so it changes the logits) for the checkpoint
    fixture, in PEFT format, recording that checkpoint as its base; returns the folder."""
    import lmforge
    from lmforge.peft import apply_lora, save_adapter

    folder, _ = checkpoint
    model = apply_lora(lmforge.load_model(folder), r=4, alpha=8, target_modules="all-linear")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    out = tmp_path_factory.mktemp("adapter")
    save_adapter(model, out, base_model_name_or_path=str(folder))
    return out


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, checkpoint):
    """``add(repo_id) -> snapshot folder``: a fake Hugging Face cache (``HF_HUB_CACHE``)
    holding the checkpoint fixture as Hub model ``repo_id`` (refs/main → a snapshot whose
    files link to blobs, as ``huggingface-cli download`` writes them)."""
    folder, _ = checkpoint
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    commit = "0123456789abcdef0123456789abcdef01234567"

    def add(repo_id: str = "Org/Tiny"):
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "blobs").mkdir()
        for file in folder.iterdir():
            blob = repo / "blobs" / f"blob-{file.name}"
            blob.write_bytes(file.read_bytes())
            (snapshot / file.name).symlink_to(blob)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        return snapshot

    return add
