"""Fixtures for the server tests: a tiny saved checkpoint (random weights + a trained
tokenizer) and a real `lmforge serve` process on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_dir(chat_model_dir) -> Path:
    """The shared ``tiny-chat`` checkpoint (tests/conftest.py)."""
    return chat_model_dir


@pytest.fixture(scope="session")
def start_server():
    """``start_server(model_dir, log_path, *flags)``: a context manager yielding the base URL
    of a real ``lmforge serve`` process (see `running_server`)."""
    return running_server


@pytest.fixture(scope="session")
def http_json():
    """``http_json(method, url, body=None, headers=None) -> (status, JSON body)``."""
    return http


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_dir: Path, log_path: Path, *extra: str):
    """Start ``python -m lmforge serve`` and yield its base URL once /health answers 200;
    kill it afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "lmforge", "serve", "--model", str(model_dir)]
    cmd += ["--port", str(port), "--log-level", "warning", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 90 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None):
    """``(status, parsed JSON body)`` of one raw request (errors included)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in req.headers:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
