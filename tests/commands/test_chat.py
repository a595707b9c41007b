"""`lmforge chat` driven through stdin (a real process), and its argument errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
