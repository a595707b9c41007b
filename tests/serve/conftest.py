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
import torch

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


@pytest.fixture(scope="session")
def lora_model_dir(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A ``tiny-long`` checkpoint (the ``tiny-chat`` recipe with 1024 positions, room for
    tool definitions in the prompt) and two random LoRA adapters for it, ``alpha``/``beta``."""
    from lmforge.data.tasks.corpus import synthetic_corpus
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.peft import apply_lora, save_adapter
    from lmforge.peft.lora import lora_layers
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(synthetic_corpus(300, seed=0), vocab_size=320)
    config = preset_config(
        "tiny", vocab_size=tok.vocab_size, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("lora-serve")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CausalLM(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
        save_model(model, root / "tiny-long", tokenizer=tok)
        adapters = {}
        for k, name in enumerate(("alpha", "beta")):
            apply_lora(model, r=4, alpha=8, target_modules=("q_proj", "v_proj"), adapter_name=name)
            gen = torch.Generator().manual_seed(10 + k)
            with torch.no_grad():
                for layer in lora_layers(model).values():
                    if name in layer.lora_B:
                        w = layer.lora_B[name].weight
                        w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
            adapters[name] = save_adapter(model, root / name, adapter_name=name)
    return root / "tiny-long", adapters


@pytest.fixture(scope="session")
def lora_server(lora_model_dir, tmp_path_factory):
    """A server (no API key, loopback) for ``tiny-long`` with ``--lora alpha=… beta=…``."""
    folder, adapters = lora_model_dir
    log = tmp_path_factory.mktemp("lora-server-log") / "serve.log"
    loras = [f"{name}={path}" for name, path in adapters.items()]
    with running_server(folder, log, "--lora", *loras) as url:
        yield url
