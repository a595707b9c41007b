"""`lmforge.infer.checks`: the shared input checks and set-up (their messages are also
checked through `generate`, `beam_search`, `speculative_generate` and the `Engine`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lmforge.infer.checks import (
    check_prompt_tokens,
    check_single_prompt,
    default_eos,
    default_pad,
    eos_ids,
    eval_mode,
    is_int,
    make_generator,
    pad_id,
)

CONFIG = SimpleNamespace(vocab_size=10, max_position_embeddings=8, eos_token_id=2, pad_token_id=0)
CPU = torch.device("cpu")


def test_is_int_excludes_bools_and_floats():
    assert is_int(3) and not is_int(True) and not is_int(3.0)


def test_model_defaults_prefer_the_generation_config():
    model = SimpleNamespace(config=CONFIG)
    assert (default_eos(model), default_pad(model)) == (2, 0)
    model.generation_config = {"eos_token_id": [4, 5]}
    assert (default_eos(model), default_pad(model)) == ([4, 5], 0)


def test_eos_and_pad_ids():
    assert eos_ids(None, 10) is None and eos_ids([], 10) is None
    assert eos_ids(3, 10) == [3] and eos_ids(torch.tensor([3, 4]), 10) == [3, 4]
    with pytest.raises(ValueError, match=r"eos_token_id=10 must be a token id in \[0, 10\)"):
        eos_ids([1, 10], 10)
    assert pad_id(None, None, [7, 8], 10) == 7  # HF's fallback: the first eos id
    assert pad_id(None, 1, [7], 10) == 1 and pad_id(4, 1, [7], 10) == 4
    with pytest.raises(ValueError, match="model.config.pad_token_id=-1"):
        pad_id(None, -1, None, 10)


def test_check_single_prompt():
    out = check_single_prompt(torch.tensor([[1, 2, 3]], dtype=torch.int32), CONFIG, 5, CPU)
    assert out.dtype == torch.long and out.tolist() == [1, 2, 3]
    for bad, error, match in [
        ([1, 2], TypeError, "torch.Tensor"),
        (torch.zeros(2, 3, dtype=torch.long), ValueError, "batch size 1"),
        (torch.zeros(0, dtype=torch.long), ValueError, "T ≥ 1"),
        (torch.zeros(3), TypeError, "integer token ids"),
        (torch.tensor([1, 10]), ValueError, r"outside \[0, 10\)"),
        (torch.tensor([1, 2, 3, 4]), ValueError, "max_position_embeddings=8"),
    ]:
        with pytest.raises(error, match=match):
            check_single_prompt(bad, CONFIG, 5, CPU)


def test_check_prompt_tokens():
    assert check_prompt_tokens((1, 2), 10) == [1, 2]
    with pytest.raises(ValueError, match="empty"):
        check_prompt_tokens([], 10)
    with pytest.raises(ValueError, match=r"contains \[10, True\] outside"):
        check_prompt_tokens([1, 10, True], 10)


def test_make_generator():
    assert make_generator(None, None, CPU) is None
    g = torch.Generator()
    assert make_generator(g, None, CPU) is g
    a, b = make_generator(None, 3, CPU), torch.Generator().manual_seed(3)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    with pytest.raises(ValueError, match="not both"):
        make_generator(g, 3, CPU)
    with pytest.raises(ValueError, match="seed=1.5"):
        make_generator(None, 1.5, CPU)


def test_eval_mode_restores_each_module_and_accepts_none():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training
    with eval_mode(None):
        pass
