"""Shared fixtures: tiny random Hugging Face reference models for parity tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny models run fastest single-threaded (thread overhead dominates on 2 cores).
torch.set_num_threads(1)

# Without a GPU the Triton kernel tests (tests/nn/test_flash_attention_triton.py) run under
# Triton's interpreter. Triton reads the variable when it is first imported, and other
# libraries import it early (xgrammar does), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def torch_threads():
    """``torch_threads(n)`` sets torch's intra-op thread count for the rest of the test; the
    count from before is restored at teardown (tests run single-threaded, see above)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# Tiny, every-option-on configurations per family (HF config kwargs).
TINY_BASE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def make_hf_model(model_type: str, seed: int = 0, std: float = 0.2, **overrides):
    """A random `transformers` causal LM of ``model_type`` with weights ~ N(0, std²)
    (norm gains ~ 1 + N(0, std²)), so logits are far from uniform and bugs show."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {**TINY_BASE, **overrides}
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + std * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_hf_kwargs():
    """The tiny HF config kwargs the parity tests use (a fresh copy per test)."""
    return lambda: dict(TINY_BASE)


@pytest.fixture(scope="session")
def hf_model_factory():
    """``factory(model_type, seed=0, std=0.2, **config_overrides) -> transformers model``."""
    return make_hf_model


def save_tiny_policy(folder, texts: list[str], with_bos: bool) -> None:
    """A tiny random ``CausalLM`` (hidden 32, seed 0) and a 300-id BPE tokenizer trained on
    ``texts``, saved in HF format into ``folder``."""
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(texts, vocab_size=300)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if with_bos:
        ids["bos_token_id"] = tok.bos_token_id
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64, **ids)
    save_model(CausalLM(cfg), folder, tokenizer=tok)


@pytest.fixture(scope="session")
def preference_model_dir(tmp_path_factory):
    """A tiny policy whose tokenizer knows the synthetic chats (DPO / RM runs)."""
    from lmforge.data.tasks.chat import synthetic_chats

    out = tmp_path_factory.mktemp("base") / "model"
    save_tiny_policy(out, [m["content"] for c in synthetic_chats(200, 0) for m in c], True)
    return out


@pytest.fixture(scope="session")
def r1_model_dir(tmp_path_factory):
    """A tiny policy whose tokenizer knows R1-formatted arithmetic (GRPO runs)."""
    from lmforge.data.tasks.arithmetic import arithmetic_problems

    texts = [f"{p.prompt} <think>{p.question}</think><answer>{p.answer}</answer>"
             for p in arithmetic_problems(100, 0)]  # fmt: skip
    out = tmp_path_factory.mktemp("init") / "model"
    save_tiny_policy(out, texts, False)
    return out


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """An HF-format folder named ``tiny-chat`` (the served model id): the ``tiny`` preset
    with 256 positions (random, seed 0, sharp prompt-dependent logits) + a byte-level BPE
    tokenizer with a chat template, trained on lmforge's synthetic corpus."""
    from lmforge.data.tasks.corpus import synthetic_corpus
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train(synthetic_corpus(300, seed=0), vocab_size=320)
    config = preset_config(
        "tiny",
        vocab_size=tok.vocab_size,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CausalLM(config)
        with torch.no_grad():  # sharp, prompt-dependent logits (the default init is ~uniform)
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    folder = tmp_path_factory.mktemp("serve") / "tiny-chat"
    save_model(model, folder, tokenizer=tok)
    return folder


def launch_torchrun(script: Path, args: list[str], timeout: float = 300, cwd=None) -> None:
    """Run ``script`` on two gloo ranks (``torchrun --standalone --nproc_per_node 2``, one
    thread each) and assert it exits cleanly; skips without gloo or torchrun. The ranks get
    their own process group, so a hang kills torchrun *and* its workers."""
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo not available")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"{torchrun} not found")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), *args]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-4000:]


@pytest.fixture(scope="session")
def torchrun():
    """``torchrun(script, args, timeout=300)``: `launch_torchrun`."""
    return launch_torchrun


def _greedy_by_forward(model, prompt: list[int], steps: int) -> list[int]:
    """The ``steps`` greedy tokens after ``prompt`` by the model's own forward, one token at a
    time over the whole sequence (no cache): the reference the engine's fast paths must meet."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="session")
def greedy_by_forward():
    """`_greedy_by_forward`: ``(model, prompt, steps) -> new token ids``."""
    return _greedy_by_forward
