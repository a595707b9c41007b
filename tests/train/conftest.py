"""Fixtures for training tests: a deterministic toy data loader that follows the batch
contract (packed rows, unshifted labels, position/document ids, ``num_loss_tokens``,
``state_dict``/``load_state_dict``), and tiny model / config factories.

Subprocess scripts (torchrun, kill-during-save) load this file by path to share the loader.
"""

from __future__ import annotations

import signal
import threading

import pytest
import torch

IGNORE = -100


@pytest.fixture(autouse=True)
def sigint_as_python_sets_it():
    """SIGINT with Python's own handler during each training test: a shell starts background
    jobs (``make test &``, ``nohup … &``) with SIGINT ignored, and the Trainer leaves an ignored
    signal ignored (`lmforge.train.interrupt`), so the tests that raise SIGINT would see nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class ToyLoader:
    """Endless packed batches of learnable toy documents (arithmetic progressions mod vocab).

    Optimizer step ``s`` consumes one *global batch* of ``global_batch`` rows, generated from
    ``(seed, s)`` alone; this rank's share (rows ``rank·n … (rank+1)·n``, ``n =
    global_batch / world``) is cut into ``accum`` consecutive micro-batches. So any split of
    the same global batch across ranks and accumulation steps sees the same rows.
    """

    def __init__(self, vocab=64, seq_len=16, global_batch=8, accum=1, seed=0, rank=0, world=1,
                 mask_prompts=True):  # fmt: skip
        assert global_batch % (world * accum) == 0
        self.vocab, self.seq_len, self.global_batch = vocab, seq_len, global_batch
        self.accum, self.seed, self.rank, self.world = accum, seed, rank, world
        self.mask_prompts = mask_prompts
        self.micro = global_batch // (world * accum)
        self.position = 0  # micro-batches handed out
        self.tokens_per_batch = self.micro * seq_len

    def global_rows(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        rows = {k: [] for k in ("input_ids", "labels", "position_ids", "document_ids")}
        for _ in range(self.global_batch):
            ids, labels, pos, docs, doc = [], [], [], [], 0
            while len(ids) < self.seq_len:
                n = int(torch.randint(3, self.seq_len, (1,), generator=g))
                start = int(torch.randint(0, self.vocab, (1,), generator=g))
                stride = int(torch.randint(1, 4, (1,), generator=g))
                prompt = int(torch.randint(0, n // 2 + 1, (1,), generator=g))
                for t in range(n):
                    tok = (start + stride * t) % self.vocab
                    masked = t == 0 or (self.mask_prompts and t < prompt)
                    ids.append(tok)
                    labels.append(IGNORE if masked else tok)
                    pos.append(t)
                    docs.append(doc)
                doc += 1
            for k, v in zip(rows, (ids, labels, pos, docs)):
                rows[k].append(v[: self.seq_len])
        return {k: torch.tensor(v) for k, v in rows.items()}

    def __iter__(self):
        while True:
            step, micro = divmod(self.position, self.accum)
            rows = self.global_rows(step)
            per_rank = self.global_batch // self.world
            lo = self.rank * per_rank + micro * self.micro
            batch = {k: v[lo : lo + self.micro] for k, v in rows.items()}
            batch["num_loss_tokens"] = (batch["labels"][:, 1:] != IGNORE).sum()
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def tiny_model(vocab=64, seed=0, **overrides):
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    kwargs = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(seed)
    return CausalLM(preset_config("tiny", **{**kwargs, **overrides}))


def tiny_config(out_dir="runs/test", **train):
    from lmforge.train.config import RunConfig

    config = RunConfig(out_dir=str(out_dir))
    config.optim.lr = 1e-2
    config.optim.warmup_steps = 2
    config.log.progress = False
    config.log.plot = False  # matplotlib costs seconds; one test turns it on
    for key, value in {"max_steps": 20, "eval_every": 0, "save_every": 0, **train}.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture
def toy_loader():
    return ToyLoader


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_config():
    return tiny_config
