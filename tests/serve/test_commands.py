"""`lmforge chat` (driven through stdin) and `lmforge serve` argument errors."""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from lmforge.cli import main
from lmforge.infer.engine import Engine, SamplingParams
from lmforge.serve.commands import chat_loop

REPO = Path(__file__).resolve().parents[2]


def chat_args(**kw) -> argparse.Namespace:
    base = dict(system=None, max_tokens=8, temperature=0.0, top_p=1.0, top_k=0,
                repetition_penalty=1.0, seed=None)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def greedy_reply(model, tok, messages, max_tokens=8) -> str:
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0, stop_token_ids=tuple(tok.stop_token_ids)
    )
    return Engine(model, tok).generate([ids], params)[0].text


def test_chat_subprocess_streams_multi_turn_and_resets(model_dir):
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

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


class _Recorder(Engine):
    def add_request(self, prompt_token_ids, params, request_id=None):
        self.prompts = [*getattr(self, "prompts", []), list(prompt_token_ids)]
        self.params = params
        return super().add_request(prompt_token_ids, params, request_id)


def test_chat_loop_history_system_and_context(model_dir):
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    engine = _Recorder(model, tok)
    out = io.StringIO()
    args = chat_args(system="Be brief.", seed=5, temperature=0.8, top_k=20)
    chat_loop(engine, tok, 256, args, io.StringIO("one\n\ntwo\n"), out)
    first, second = (tok.decode(p) for p in engine.prompts)
    assert first.startswith("<|bos|><|im_start|>system\nBe brief.<|im_end|>")
    assert second.startswith(first) and second.endswith(
        "<|im_start|>user\ntwo<|im_end|>\n<|im_start|>assistant\n"
    )
    assert engine.params.seed == 6 and engine.params.top_k == 20  # seed advances per turn
    # A context that fits one exchange only: the oldest turn is dropped.
    engine2 = _Recorder(model, tok)
    out2 = io.StringIO()
    chat_loop(engine2, tok, 40, chat_args(max_tokens=8), io.StringIO("alpha\nbeta\n"), out2)
    assert "dropped the oldest turn" in out2.getvalue()
    assert "alpha" not in tok.decode(engine2.prompts[1])
    out3 = io.StringIO()
    chat_loop(engine2, tok, 40, chat_args(), io.StringIO("word " * 60 + "\n"), out3)
    assert "message too long" in out3.getvalue()


def test_serve_and_chat_argument_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["chat", "--model", str(tmp_path), "--temperature", "-1"]) == 2
    assert "--temperature" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-model-len", "0"]) == 2
    assert "--max-model-len must be positive" in capsys.readouterr().err


def test_serve_refuses_a_busy_port(model_dir, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
