"""Fault tests of the server (issue 12): a request cannot stall the others, and every bad
request is a 4xx in OpenAI's shape — lone surrogates, absurd values, wrong types, a bad
grammar, a foreign Host header (DNS rebinding) — and the API schema is private by default."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model_dir: Path, log_path: Path, *extra: str):
    port = free_port()
    cmd = [sys.executable, "-m", "lmforge", "serve", "--model", str(model_dir), "--device",
           "cpu", "--port", str(port), "--log-level", "warning", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(OSError):
                if request("GET", port, "/health")[0] == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def request(method: str, port: int, path: str, body: bytes | dict | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:  # fmt: skip
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                       **(headers or {})})  # fmt: skip
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def port(chat_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("faults") / "serve.log"
    with serving(chat_model_dir, log) as p:  # no API key: the Host check is on
        yield p


def chat_body(content, **kw) -> dict:
    return {"model": "tiny-chat", "messages": [{"role": "user", "content": content}], **kw}


# ---------------------------------------------------------------------- item 1: no stall
def test_oversized_requests_do_not_stall_the_server(port):
    huge = json.dumps(chat_body("word " * 780_000, max_tokens=4)).encode()  # 3.9 MB
    assert 3_800_000 < len(huge) < 4 << 20  # under the default body limit: it gets parsed
    results: list[tuple[int, dict]] = []

    def big() -> None:
        results.append(request("POST", port, "/v1/chat/completions", huge, timeout=120))

    threads = [threading.Thread(target=big) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)  # the four are uploading / being refused
    latencies = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert request("GET", port, "/health")[0] == 200
        status, out = request("POST", port, "/v1/completions",
                              {"model": "tiny-chat", "prompt": "hi", "max_tokens": 8})  # fmt: skip
        assert status == 200, out
        latencies.append(time.perf_counter() - t0)
    for t in threads:
        t.join(120)
    assert max(latencies) < 1.0, latencies
    assert [s for s, _ in results] == [400] * 4
    assert all(o["error"]["code"] == "context_length_exceeded" for _, o in results)
    assert "characters" in results[0][1]["error"]["message"]


def test_message_count_is_bounded_before_tokenizing(port):
    many = {"model": "tiny-chat", "messages": [{"role": "user", "content": ""}] * 300}
    status, out = request("POST", port, "/v1/chat/completions", many)
    assert status == 400 and out["error"]["param"] == "messages", out
    long_ids = {"model": "tiny-chat", "prompt": [5] * 100_000}
    status, out = request("POST", port, "/v1/completions", long_ids)
    assert status == 400 and out["error"]["code"] == "context_length_exceeded", out


# ---------------------------------------------------------------------- item 6: 4xx
SURROGATE = "a\ud800b"  # json.dumps writes the escape "\ud800": valid JSON, invalid text
BAD = [
    ("/v1/chat/completions", chat_body(SURROGATE), "messages.0.content"),
    ("/v1/chat/completions", chat_body([{"type": "text", "text": SURROGATE}]),
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {**chat_body("hi"), "model": SURROGATE}, "model"),
    ("/v1/chat/completions", chat_body("hi", stop=[SURROGATE]), "stop"),
    ("/v1/completions", {"model": "tiny-chat", "prompt": SURROGATE}, "prompt"),
    ("/v1/completions", {"model": "tiny-chat", "prompt": ["ok", SURROGATE]}, "prompt.1"),
    ("/v1/chat/completions", chat_body("hi", repetition_penalty=1e308), "repetition_penalty"),
    ("/v1/chat/completions", chat_body("hi", top_k=10**12), "top_k"),
    ("/v1/chat/completions", chat_body("hi", seed=-1), "seed"),
    ("/v1/chat/completions", chat_body("hi", stop="x" * 100_000), "stop"),
    ("/v1/chat/completions", chat_body("hi", stream="yes"), "stream"),
    ("/v1/chat/completions", chat_body("hi", max_tokens="5"), "max_tokens"),
    ("/v1/chat/completions", chat_body("hi", temperature="hot"), "temperature"),
    ("/v1/completions", {"model": "tiny-chat", "prompt": "x", "echo": 1}, "echo"),
    ("/v1/chat/completions", chat_body("hi", tools=[{"type": "function", "function": {
        "name": "bad name!"}}]), "tools.0.function.name"),
]  # fmt: skip


@pytest.mark.parametrize("path, body, param", BAD, ids=[b[2] for b in BAD])
def test_bad_values_are_4xx_naming_the_field(port, path, body, param):
    status, out = request("POST", port, path, body)
    assert status == 400, (status, out)
    assert out["error"]["type"] == "invalid_request_error"
    assert param in out["error"]["message"], out


def test_invalid_grammar_is_reported_as_grammar(port):
    body = chat_body("hi", guided_grammar="root ::= (unclosed", max_tokens=4)
    status, out = request("POST", port, "/v1/chat/completions", body)
    assert status == 400 and out["error"]["param"] == "guided_grammar", out
    assert out["error"]["message"].startswith("invalid guided_grammar"), out
    status, out = request("POST", port, "/v1/chat/completions",
                          chat_body("hi", guided_regex="(", max_tokens=4))  # fmt: skip
    assert status == 400 and out["error"]["param"] == "guided_regex", out


def test_host_header_is_checked_without_an_api_key(port):
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends its own
    name in Host; a key-less loopback server refuses it, and answers its own names."""
    for host in ("evil.example", f"evil.example:{port}", "192.168.1.5"):
        status, out = request("GET", port, "/v1/models", headers={"Host": host})
        assert status == 403 and out["error"]["code"] == "host_not_allowed", (host, out)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert request("GET", port, "/v1/models", headers={"Host": host})[0] == 200, host


def test_allowed_hosts_rule():
    from lmforge.serve.errors import allowed_hosts_for, host_name

    assert allowed_hosts_for("127.0.0.1", None) == ["127.0.0.1", "::1", "localhost"]
    assert "::1" in allowed_hosts_for("::1", None)
    assert allowed_hosts_for("127.0.0.1", "key") is None  # the key protects it
    assert allowed_hosts_for("0.0.0.0", None) is None  # exposed on purpose
    assert allowed_hosts_for("::", None) is None
    lan = allowed_hosts_for("192.168.1.10", None, ["box.lan"])
    assert "192.168.1.10" in lan and "box.lan" in lan and "evil.example" not in lan
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost"


def test_api_schema_only_with_docs(port, chat_model_dir):
    assert request("GET", port, "/openapi.json")[0] == 404
    assert request("GET", port, "/docs")[0] == 404
    from fastapi.testclient import TestClient

    from lmforge.serve import AsyncEngine, ServerLimits, create_app
    from lmforge.serve.loading import load_engine

    engine, tok, _, _ = load_engine(chat_model_dir, device="cpu", max_num_seqs=2)
    app = create_app(AsyncEngine(engine), tok, "tiny-chat", ServerLimits(256, 16), docs=True)
    with TestClient(app) as client:
        assert client.get("/openapi.json").json()["info"]["title"] == "lmforge"
        assert client.get("/docs").status_code == 200
