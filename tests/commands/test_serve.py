"""`lmforge serve` argument errors (the server itself: tests/serve/)."""

from __future__ import annotations

import socket


def test_serve_and_chat_argument_errors(tmp_path, run):
    code, _, err = run("serve", "--model", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in err
    code, _, err = run("chat", "--model", str(tmp_path), "--temperature", "-1")
    assert code == 2 and "--temperature" in err
    code, _, err = run("serve", "--model", str(tmp_path), "--max-model-len", "0")
    assert code == 2 and "--max-model-len must be positive" in err
    code, _, err = run("serve", "--model", str(tmp_path), "--port", "70000")
    assert code == 2 and "--port must be in 0..65535" in err


def test_serve_refuses_a_busy_port(chat_model_dir, run):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, _, err = run("serve", "--model", str(chat_model_dir), "--port", str(port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err
