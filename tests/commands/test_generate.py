"""`lmforge generate`: greedy output equals the library's, seeded sampling reproduces, chat
formatting, and the sampling settings' precedence."""

from __future__ import annotations

import argparse
import json

import torch

from lmforge.commands.generate import sampling_settings
from lmforge.infer.generate import generate


def test_generate_greedy_matches_the_library(checkpoint, tokenizer, run):
    folder, model = checkpoint
    code, out, err = run(
        "generate", "--model", str(folder), "--prompt", "12 + 7 =",
        "--greedy", "--max-new-tokens", "12",
    )  # fmt: skip
    assert code == 0, err
    ids = tokenizer.encode("12 + 7 =", add_special_tokens=True)
    stop = tokenizer.stop_token_ids
    expected = generate(model, torch.tensor([ids]), max_new_tokens=12, eos_token_id=stop)
    assert out == tokenizer.decode(expected[0, len(ids) :], skip_special_tokens=True) + "\n"


def test_generate_sampling_is_reproducible_with_a_seed_and_chat_works(checkpoint, run):
    folder, _ = checkpoint
    argv = ["generate", "--model", str(folder), "--prompt", "Once upon a time"]
    argv += ["--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "3"]
    first, second = run(*argv), run(*argv)
    assert first[0] == 0 and first == second
    code, out, err = run(*argv, "--chat", "--max-new-tokens", "8")
    assert code == 0, err


def test_generate_reports_a_too_long_request(checkpoint, run):
    folder, _ = checkpoint
    code, _, err = run(
        "generate", "--model", str(folder), "--prompt", "hi", "--max-new-tokens", "5000"
    )
    assert code == 2 and "max_position_embeddings" in err and "Traceback" not in err


def test_sampling_settings_flags_then_generation_config_then_defaults(tmp_path):
    def flags(**kw):
        return argparse.Namespace(**{"temperature": None, "top_k": None, "top_p": None,
                                     "greedy": False, **kw})  # fmt: skip

    assert sampling_settings(flags(), tmp_path) == {
        "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0
    }  # fmt: skip
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "temperature": 0.6, "top_p": 0.9})
    )
    assert sampling_settings(flags(), tmp_path) == {
        "do_sample": False, "temperature": 0.6, "top_k": 0, "top_p": 0.9
    }  # fmt: skip
    given = sampling_settings(flags(top_k=5), tmp_path)  # a flag turns sampling on
    assert given == {"do_sample": True, "temperature": 0.6, "top_k": 5, "top_p": 0.9}
    assert sampling_settings(flags(greedy=True, top_k=5), tmp_path) == {"do_sample": False}


def test_generate_with_an_adapter_matches_the_library(checkpoint, adapter, tokenizer, run):
    """--adapter applies the LoRA adapter (greedy output = the library's on base + adapter,
    and differs from the base's); without --model the adapter's recorded base is used."""
    import lmforge
    from lmforge.peft import load_adapter

    folder, model = checkpoint
    prompt = ["--prompt", "12 + 7 =", "--greedy", "--max-new-tokens", "12"]
    code, out, err = run("generate", "--model", str(folder), "--adapter", str(adapter), *prompt)
    assert code == 0, err
    adapted = load_adapter(lmforge.load_model(folder), adapter).eval()
    ids = tokenizer.encode("12 + 7 =", add_special_tokens=True)
    stop = tokenizer.stop_token_ids
    expected = generate(adapted, torch.tensor([ids]), max_new_tokens=12, eos_token_id=stop)
    assert out == tokenizer.decode(expected[0, len(ids) :], skip_special_tokens=True) + "\n"
    base = generate(model, torch.tensor([ids]), max_new_tokens=12, eos_token_id=stop)
    assert not torch.equal(base, expected)  # the adapter changes the answer
    assert run("generate", "--adapter", str(adapter), *prompt)[1] == out  # recorded base
    code, _, err = run("generate", "--model", str(folder), "--adapter", str(folder), *prompt)
    assert code == 2 and "not an adapter folder" in err


def test_generate_a_cached_hub_id(hf_cache, run):
    hf_cache("Org/Tiny")
    code, out, err = run("generate", "--model", "Org/Tiny", "--prompt", "hi", "--greedy",
                         "--max-new-tokens", "3")  # fmt: skip
    assert code == 0, err
    code, _, err = run("generate", "--model", "Org/Nope", "--prompt", "hi")
    assert code == 2 and "download it with `huggingface-cli download Org/Nope`" in err
