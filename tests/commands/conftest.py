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
