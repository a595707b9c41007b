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
CHAT_MODEL_LEN = 256


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


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """An HF-format folder named ``tiny-chat``: the ``tiny`` preset (random, seed 0, sharp
    prompt-dependent logits) + a byte-level BPE tokenizer with a chat template."""
    tok = Tokenizer.train(synthetic_corpus(300, seed=0), vocab_size=VOCAB)
    config = preset_config(
        "tiny",
        vocab_size=tok.vocab_size,
        max_position_embeddings=CHAT_MODEL_LEN,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CausalLM(config)
        with torch.no_grad():  # sharp, prompt-dependent logits (the default init is ~uniform)
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    folder = tmp_path_factory.mktemp("serve") / "tiny-chat"
    save_model(model, folder, tokenizer=tok)
    return folder
