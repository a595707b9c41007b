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


@pytest.fixture(scope="session")
def vlm_model_dir(tmp_path_factory) -> Path:
    """An HF ``qwen2_vl`` folder named ``tiny-vlm``: a from-scratch tiny VLM (random, sharp
    logits), the VQA tokenizer with Qwen2-VL's chat template, and a
    ``preprocessor_config.json`` whose budget keeps images ≤ 32 × 32 pixels (≤ 16 tokens)."""
    from lmforge.models.hf import save_model
    from lmforge.train.vlm_sft import VLMSection, tiny_vlm
    from lmforge.vision.vlm_data import train_vqa_tokenizer

    tok = train_vqa_tokenizer(["colour", "shape"], vocab_size=320)
    section = VLMSection(
        vocab_size=320, hidden_size=32, num_heads=2, num_kv_heads=1, vision_hidden=32,
        vision_heads=2, vision_depth=1, patch_size=4,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tiny_vlm(section, tok)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    folder = tmp_path_factory.mktemp("vlm-serve") / "tiny-vlm"
    save_model(model, folder, tokenizer=tok)
    processor = {"patch_size": 4, "temporal_patch_size": 2, "merge_size": 2,
                 "min_pixels": 64, "max_pixels": 1024}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="session")
def vlm_server(vlm_model_dir, tmp_path_factory):
    """A server for ``tiny-vlm`` (no API key) allowing 24 vision tokens per request."""
    log = tmp_path_factory.mktemp("vlm-server-log") / "serve.log"
    with running_server(vlm_model_dir, log, "--max-image-tokens", "24") as url:
        yield url


def png_data_url(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    """A ``data:image/png;base64,…`` URL of a solid-colour image with a lighter square."""
    import base64
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle([2, 2, size[0] // 2, size[1] // 2], fill=(250, 250, 250))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def data_url():
    """``data_url((w, h), (r, g, b))``: a PNG data URL (`png_data_url`)."""
    return png_data_url
