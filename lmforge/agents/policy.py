"""Policies that act in `GUIEnv`: a vision-language model decoding through the engine with
screenshots (optionally under the action grammar), and the scripted expert as an oracle.

    policy = VLMPolicy(model, tokenizer, processor, screen=(128, 128), history=2)
    texts = policy.act([AgentContext(instruction, screenshots, previous_actions)])

A VLM sees exactly what the training data shows (`lmforge.agents.agent_data`): the last
``history`` screenshots, then the `agent_prompt` text (instruction + previous actions); it
writes ``Thought: …\\nAction: …``. All contexts of a call decode together in one engine
(continuous batching, images encoded once per request); with ``constrained`` every output
is held to `response_regex` (so it always parses, and its points lie on the screen), and
``temperature`` 0 is greedy. Oracle policies may read ``context.env`` (the live window);
model policies never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lmforge.agents.action_grammar import response_regex
from lmforge.agents.actions import format_response
from lmforge.agents.agent_data import agent_prompt
from lmforge.agents.expert import expert_step
from lmforge.infer import Engine, SamplingParams
from lmforge.infer.multimodal import ImageInputs
from lmforge.infer.structured import compile_constraint
from lmforge.vision.processor import ImageProcessor
from lmforge.vision.vlm_data import encode_prompt


@dataclass
class AgentContext:
    """What a policy sees at one step: the instruction, the screenshots so far (oldest
    first), the previous actions as text; ``env`` is for oracle policies only."""

    instruction: str
    screenshots: list[np.ndarray]
    previous: list[str] = field(default_factory=list)
    env: Any = None


class Policy(Protocol):
    def act(self, contexts: Sequence[AgentContext]) -> list[str]: ...


def agent_messages(context: AgentContext, history: int) -> tuple[list[dict], list[np.ndarray]]:
    """The user turn (last ``history`` screenshots, then the prompt) and its images — the
    layout of a trajectory example's question."""
    images = context.screenshots[-history:]
    text = agent_prompt(context.instruction, context.previous, len(images))
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}], images


class VLMPolicy:
    """A vision-language model as a policy (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        processor: ImageProcessor,
        screen: tuple[int, int] = (128, 128),
        history: int = 2,
        max_tokens: int = 160,
        temperature: float = 0.0,
        constrained: bool = True,
        seed: int = 0,
    ) -> None:
        if history < 1:
            raise ValueError(f"history={history} must be ≥ 1 screenshot")
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.screen, self.history, self.max_tokens = screen, history, max_tokens
        self.temperature, self.constrained, self.seed = temperature, constrained, seed
        self.regex = response_regex(screen)
        self.engine = Engine(model.eval(), tokenizer)
        self.calls = 0

    def params(self, index: int) -> SamplingParams:
        constraint = (
            compile_constraint(self.tokenizer, regex=self.regex) if self.constrained else None
        )
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                              seed=self.seed + 1000 * self.calls + index, constraint=constraint)  # fmt: skip

    def act(self, contexts: Sequence[AgentContext]) -> list[str]:
        """One response per context, decoded together."""
        ids = []
        for i, context in enumerate(contexts):
            messages, images = agent_messages(context, self.history)
            prompt, pixels, grid = encode_prompt(self.tokenizer, self.processor, messages, images)
            ids.append(
                self.engine.add_request(prompt, self.params(i), images=ImageInputs(pixels, grid))
            )
        self.calls += 1
        done: dict[str, str] = {}
        while len(done) < len(ids):
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out.text
        return [done[i].strip() for i in ids]


class ExpertPolicy:
    """The scripted expert behind the policy interface (an oracle: it reads the live window
    through ``context.env``): the upper bound and a check of the evaluation wiring."""

    def act(self, contexts: Sequence[AgentContext]) -> list[str]:
        out = []
        for c in contexts:
            step = expert_step(c.env.task, c.env.window)
            out.append(format_response(step.thought, step.action))
        return out


__all__ = ["AgentContext", "ExpertPolicy", "Policy", "VLMPolicy", "agent_messages"]
