"""`lmforge chat` driven through stdin (a real process), and its argument errors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import build_parser
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.serve.terminal_chat import ChatSettings

REPO = Path(__file__).resolve().parents[2]


def greedy_reply(model, tok, messages, max_tokens=8) -> str:
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0, stop_token_ids=tuple(tok.stop_token_ids)
    )
    return Engine(model, tok).generate([ids], params)[0].text


def test_chat_subprocess_streams_multi_turn_and_resets(chat_model_dir):
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    model_dir = chat_model_dir
    cmd = [sys.executable, "-m", "lmforge", "chat", "--model", str(model_dir)]
    cmd += ["--temperature", "0", "--max-tokens", "8"]
    proc = subprocess.run(
        cmd, input=b"hello\nand then?\n/reset\nhello\n/exit\nnever read\n", capture_output=True,
        cwd=REPO, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stdout = proc.stdout.decode()  # bytes: the model may well print "\r", kept as is
    replies = re.findall(r"assistant> (.*?)\nyou> ", stdout, flags=re.DOTALL)
    assert len(replies) == 3 and "(conversation reset)" in stdout
    assert "never read" not in stdout
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    first = greedy_reply(model, tok, [{"role": "user", "content": "hello"}])
    assert replies[0] == first and replies[2] == replies[0]  # /reset forgot
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "and then?"}]  # fmt: skip
    second = greedy_reply(model, tok, history)
    assert replies[1] == second  # the second turn saw the first


def test_chat_argument_errors(chat_model_dir, tmp_path, run):
    code, _, err = run("chat", "--model", str(tmp_path), "--temperature", "-1")
    assert code == 2 and "--temperature" in err
    code, _, err = run("chat", "--model", str(chat_model_dir), "--top-p", "0")
    assert code == 2 and "--top-p must be in (0, 1]" in err
    code, _, err = run("chat", "--model", str(chat_model_dir), "--max-tokens", "0")
    assert code == 2 and "--max-tokens must be positive" in err
    code, _, err = run("chat", "--model", str(tmp_path / "nope"))
    assert code == 2 and "lmforge chat: error:" in err and "no such directory" in err


def test_chat_settings_defaults_are_the_command_line_defaults():
    args = build_parser().parse_args(["chat", "--model", "m"])
    defaults = ChatSettings()
    for field in ("system", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                  "seed"):  # fmt: skip
        assert getattr(args, field) == getattr(defaults, field), field


@pytest.fixture(scope="module")
def chat_adapter(chat_model_dir, tmp_path_factory):
    """A random (non-zero) LoRA adapter for ``chat_model_dir`` recording it as its base."""
    import torch

    from lmforge.models.hf import load_model
    from lmforge.peft import apply_lora, save_adapter

    model = apply_lora(load_model(chat_model_dir), r=2, alpha=4, target_modules="all-linear")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    out = tmp_path_factory.mktemp("chat-adapter")
    save_adapter(model, out, base_model_name_or_path=str(chat_model_dir))
    return out


def chat_replies(run, monkeypatch, lines: str, *argv: str) -> tuple[list[str], str]:
    """``lmforge chat argv`` in-process (greedy, 6 tokens) reading ``lines``: its replies."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code, out, err = run("chat", *argv, "--temperature", "0", "--max-tokens", "6")
    assert code == 0, err
    return re.findall(r"assistant> (.*?)\nyou> ", out, flags=re.DOTALL), out


def test_chat_takes_a_hub_id_an_adapters_base_and_switchable_loras(
    chat_model_dir, chat_adapter, tmp_path, monkeypatch, run
):
    """``--model Org/Name`` (the local HF cache), ``--adapter`` alone (its recorded base,
    merged), and ``--lora NAME=DIR`` with ``/lora NAME`` / ``/lora`` switching per turn: each
    reply is the library's greedy reply of the model it names."""
    import shutil

    from lmforge.models.hf import load_model
    from lmforge.peft.merging import load_merged
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(chat_model_dir)
    hello = [{"role": "user", "content": "hello"}]
    base = greedy_reply(load_model(chat_model_dir).eval(), tok, hello, 6)
    adapted = greedy_reply(load_merged(chat_model_dir, chat_adapter).eval(), tok, hello, 6)
    assert base != adapted  # the adapter changes the answer

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(chat_model_dir, cache / "models--Org--Chat" / "snapshots" / commit)
    (cache / "models--Org--Chat" / "refs").mkdir()
    (cache / "models--Org--Chat" / "refs" / "main").write_text(commit)
    replies, _ = chat_replies(run, monkeypatch, "hello\n", "--model", "Org/Chat")
    assert replies == [base]

    replies, _ = chat_replies(run, monkeypatch, "hello\n", "--adapter", str(chat_adapter))
    assert replies == [adapted]

    lines = "hello\n/reset\n/lora\nhello\n/reset\n/lora nope\n/lora sql\nhello\n/exit\n"
    replies, out = chat_replies(run, monkeypatch, lines, "--model", str(chat_model_dir),
                                "--lora", f"sql={chat_adapter}")  # fmt: skip
    assert replies == [adapted, base, adapted]  # the first adapter answers at start
    assert "(no LoRA adapter 'nope'; adapters: sql)" in out
    code, _, err = run("chat", "--temperature", "0")
    assert code == 2 and "name the model" in err


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    """A tiny random ``qwen2_vl`` folder (VQA tokenizer, Qwen2-VL chat template) whose
    processor keeps images at ≤ 32 × 32 pixels."""
    import json

    import torch

    from lmforge.models.hf import save_model
    from lmforge.train.vlm_sft import VLMSection, tiny_vlm
    from lmforge.vision.vlm_data import train_vqa_tokenizer

    tok = train_vqa_tokenizer(["colour"], vocab_size=320)
    section = VLMSection(vocab_size=320, hidden_size=32, num_heads=2, num_kv_heads=1,
                         vision_hidden=32, vision_heads=2, vision_depth=1)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = tiny_vlm(section, tok)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    folder = tmp_path_factory.mktemp("chat-vlm") / "vlm"
    save_model(model, folder, tokenizer=tok)
    (folder / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 64,
                                                                 "max_pixels": 1024}))  # fmt: skip
    return folder


def test_chat_image_goes_with_the_first_turn(vlm_dir, chat_model_dir, tmp_path, monkeypatch, run):
    """``--image FILE``: every reply equals the engine's greedy reply to the conversation
    with the image in the first user turn (encoded as `lmforge.vision.vlm_data` does);
    /reset starts over with the image again; bad images and text models are clear errors."""
    from PIL import Image

    from lmforge.infer.multimodal import ImageInputs
    from lmforge.models.hf import load_model
    from lmforge.serve.images import image_processor_for
    from lmforge.tokenizer import load_tokenizer
    from lmforge.vision.vlm_data import encode_prompt

    red, green = tmp_path / "red.png", tmp_path / "green.jpg"
    Image.new("RGB", (16, 16), (220, 20, 20)).save(red)
    Image.new("RGB", (24, 16), (20, 220, 20)).save(green)
    model, tok = load_model(vlm_dir).eval(), load_tokenizer(vlm_dir)
    processor = image_processor_for(model, vlm_dir)

    def expected(turns: list[str], files: list) -> list[str]:
        replies, messages = [], []
        for k, text in enumerate(turns):
            content = [{"type": "image"} for _ in files] if k == 0 else []
            messages.append({"role": "user", "content": [*content, {"type": "text", "text": text}]})
            ids, pv, grid = encode_prompt(tok, processor, messages, files)
            params = SamplingParams(max_tokens=6, temperature=0,
                                    stop_token_ids=tuple(tok.stop_token_ids))  # fmt: skip
            engine = Engine(model, tok)
            replies.append(engine.generate([ids], params, images=[ImageInputs(pv, grid)])[0].text)
            messages.append({"role": "assistant", "content": replies[-1]})
        return replies

    turns = ["What colour is it?", "And the shape?"]
    want = expected(turns, [red])
    lines = f"{turns[0]}\n{turns[1]}\n/reset\n{turns[0]}\n/exit\n"
    replies, _ = chat_replies(run, monkeypatch, lines, "--model", str(vlm_dir), "--image", str(red))
    assert replies == [*want, want[0]]
    two = expected(turns[:1], [red, green])
    replies, _ = chat_replies(run, monkeypatch, turns[0] + "\n", "--model", str(vlm_dir),
                              "--image", str(red), "--image", str(green))  # fmt: skip
    assert replies == two and two[0] != want[0]  # the second image changes the answer

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    code, _, err = run("chat", "--model", str(vlm_dir), "--image", str(broken))
    assert code == 2 and "not a readable image" in err and "broken.png" in err
    code, _, err = run("chat", "--model", str(vlm_dir), "--image", str(tmp_path / "none.png"))
    assert code == 2 and "no such image file" in err
    code, _, err = run("chat", "--model", str(chat_model_dir), "--image", str(red))
    assert code == 2 and "not a vision-language model" in err
