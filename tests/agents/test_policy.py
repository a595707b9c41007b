"""Policies: a random tiny VLM decoding through the engine with screenshots writes only
parseable, on-screen responses under the grammar; its prompt is the training layout; the
expert oracle answers like the expert."""

from __future__ import annotations

import pytest
import torch

from lmforge.agents.actions import parse_response
from lmforge.agents.agent_data import make_agent_dataset
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import expert_step
from lmforge.agents.policy import AgentContext, ExpertPolicy, VLMPolicy, agent_messages
from lmforge.agents.tasks import sample_task
from lmforge.tokenizer import Tokenizer
from lmforge.train.vlm_sft import VLMSection, image_processor_for, tiny_vlm
from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE
from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS


@pytest.fixture(scope="module")
def vlm():
    data = make_agent_dataset("train", num_tasks=4, seed=1)
    texts = [ex.question + " " + ex.answer for k in data for ex in data[k]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, hidden_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    model = tiny_vlm(section, tok)
    return model, tok, image_processor_for(model, 128), data


def contexts(n: int) -> list[AgentContext]:
    out = []
    for seed in range(n):
        env = GUIEnv()
        obs, info = env.reset(options={"task": sample_task(seed, "heldout")})
        out.append(AgentContext(info["instruction"], [obs, obs], ["click(1,2)"], env))
    return out


def test_prompt_has_the_training_layout(vlm):
    *_, data = vlm
    ex = next(e for e in data["trajectory"] if len(e.images) == 2)
    c = AgentContext("x", list(ex.images), [])
    messages, images = agent_messages(c, history=2)
    assert len(images) == 2 and messages[0]["content"][:2] == [{"type": "image"}] * 2
    c = AgentContext(ex.question.split("\n")[0].removeprefix("Task: "), [ex.images[0]] * 5, [])
    assert len(agent_messages(c, history=3)[1]) == 3


def test_constrained_vlm_policy_only_writes_valid_actions(vlm):
    model, tok, proc, _ = vlm
    policy = VLMPolicy(model, tok, proc, screen=(128, 128), history=2, temperature=1.0, seed=3)
    texts = policy.act(contexts(6))
    assert len(texts) == 6
    for text in texts:
        parse_response(text, (128, 128))
    first, second = (VLMPolicy(model, tok, proc, temperature=0.0) for _ in range(2))
    assert first.act(contexts(2)) == second.act(contexts(2))  # greedy is reproducible
    with pytest.raises(ValueError, match="history=0"):
        VLMPolicy(model, tok, proc, history=0)


def test_expert_policy_answers_as_the_expert():
    cs = contexts(3)
    for c, text in zip(cs, ExpertPolicy().act(cs), strict=True):
        step = expert_step(c.env.task, c.env.window)
        assert parse_response(text).action == step.action


def test_long_histories_get_the_context_room_left_not_a_crash(vlm):
    model, tok, proc, _ = vlm
    policy = VLMPolicy(model, tok, proc, history=2, max_tokens=160, temperature=1.0, seed=5,
                       constrained=False)  # fmt: skip
    limit = policy.engine.max_len
    assert policy.params(0, limit - 40).max_tokens == 40
    assert policy.params(0, 10).max_tokens == 160
    with pytest.raises(ValueError, match="fills the model's context"):
        policy.params(0, limit)
    long = [AgentContext(c.instruction, c.screenshots, ["type('" + "abc " * n + "')"] * 2,
                         c.env) for c, n in zip(contexts(2), (110, 120))]  # fmt: skip
    samples = policy.sample(long)
    assert all(limit - 160 < len(s.prompt_ids) < limit for s in samples)  # less room than asked
    for sample in samples:
        assert len(sample.prompt_ids) + len(sample.token_ids) <= limit
