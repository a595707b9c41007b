"""Shared pieces of the agent tests: a tiny random agent VLM and its tokenizer."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lmforge.agents.agent_data import make_agent_dataset
from lmforge.models.vlm import VisionLanguageModel
from lmforge.tokenizer import Tokenizer
from lmforge.train.vlm_sft import VLMSection, image_processor_for, tiny_vlm
from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE
from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS


def build_agent_vlm(num_tasks: int, seed: int, pointer_size: int = 0, vision_depth: int = 1):
    """(model, tokenizer, processor, data): BPE on ``num_tasks`` tasks' agent data, a width-32
    one-layer VLM (seed 0), with a pointer head of ``pointer_size`` when > 0."""
    data = make_agent_dataset("train", num_tasks=num_tasks, seed=seed)
    texts = [ex.question + " " + ex.answer for k in data for ex in data[k]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, vision_depth=vision_depth,
                         hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    model = tiny_vlm(section, tok)
    if pointer_size:
        model = VisionLanguageModel(replace(model.config, pointer_size=pointer_size))
    return model, tok, image_processor_for(model, 128), data


def with_pointer_head(model: VisionLanguageModel, pointer_size: int = 16, seed: int = 1):
    """A copy of ``model`` with a freshly initialised pointer head (``seed``), same weights."""
    torch.manual_seed(seed)
    pointer = VisionLanguageModel(replace(model.config, pointer_size=pointer_size))
    pointer.load_state_dict(model.state_dict(), strict=False)
    return pointer


@pytest.fixture(scope="module")
def add_pointer_head():
    """`with_pointer_head`, as a fixture (test modules cannot import conftest)."""
    return with_pointer_head


@pytest.fixture(scope="module")
def agent_vlm_factory():
    return build_agent_vlm
