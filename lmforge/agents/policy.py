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

`VLMPolicy.sample` returns what produced each response (`PolicySample`: the prompt's token
ids and image inputs, the sampled token ids, their log-probs as the engine computed them),
so online RL trains on exactly the tokens that were sampled instead of re-tokenizing text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lmforge.agents.action_grammar import response_regex
from lmforge.agents.actions import format_response
from lmforge.agents.agent_data import agent_prompt
from lmforge.agents.expert import expert_step
from lmforge.infer import Engine, SamplingParams
from lmforge.infer.multimodal import ImageInputs
from lmforge.infer.structured import compile_constraint
from lmforge.vision.processor import IMAGE_PAD, VISION_END, VISION_START, ImageProcessor
from lmforge.vision.vlm_data import encode_prompt


@dataclass
class AgentContext:
    """What a policy sees at one step: the instruction, the screenshots so far (oldest
    first), the previous actions as text; ``env`` is for oracle policies only."""

    instruction: str
    screenshots: list[np.ndarray]
    previous: list[str] = field(default_factory=list)
    env: Any = None


@dataclass
class PolicySample:
    """One decoded response and what produced it: the prompt's token ids and image inputs,
    the sampled ``token_ids`` (ending with the stop token when one ended the response, unless
    it was a vision token — `VLMPolicy` stops on those, as they cannot be trained on) and
    ``logprobs``, each token's log-probability under the sampling model's raw (untempered,
    unconstrained) next-token distribution as the engine computed it — None where the
    engine does not score a token (the stop token) or when log-probs were not asked for."""

    text: str
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float | None]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


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
        logprobs: bool = False,
    ) -> None:
        if history < 1:
            raise ValueError(f"history={history} must be ≥ 1 screenshot")
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.screen, self.history, self.max_tokens = screen, history, max_tokens
        self.temperature, self.constrained, self.seed = temperature, constrained, seed
        self.logprobs = logprobs  # score each sampled token (`sample`'s ``logprobs``)
        # a sampled vision token ends the response and is not kept: in a training input it
        # would be an image placeholder with no image
        vision = (tokenizer.token_to_id(t) for t in (VISION_START, IMAGE_PAD, VISION_END))
        self.vision_stops = tuple(i for i in vision if i is not None)
        self.regex = response_regex(screen)
        self.engine = Engine(model.eval(), tokenizer)
        self.calls = 0

    def params(self, index: int, prompt_length: int = 0) -> SamplingParams:
        """Request ``index``'s sampling: at most ``max_tokens``, and never past the model's
        context (a long history of earlier responses leaves less room; a cut response is an
        invalid action, as any unparseable one)."""
        constraint = (
            compile_constraint(self.tokenizer, regex=self.regex) if self.constrained else None
        )
        room = self.engine.max_len - prompt_length
        if room < 1:
            raise ValueError(
                f"the agent's prompt ({prompt_length} tokens) fills the model's context "
                f"({self.engine.max_len}); use fewer screenshots of history"
            )
        return SamplingParams(max_tokens=min(self.max_tokens, room), temperature=self.temperature,
                              seed=self.seed + 1000 * self.calls + index, constraint=constraint,
                              logprobs=0 if self.logprobs else None,
                              stop_token_ids=self.vision_stops)  # fmt: skip

    def act(self, contexts: Sequence[AgentContext]) -> list[str]:
        """One response per context, decoded together."""
        return [s.text.strip() for s in self.sample(contexts)]

    def sample(self, contexts: Sequence[AgentContext]) -> list[PolicySample]:
        """One `PolicySample` per context, decoded together."""
        requests = {}
        for i, context in enumerate(contexts):
            messages, images = agent_messages(context, self.history)
            prompt, pixels, grid = encode_prompt(self.tokenizer, self.processor, messages, images)
            params = self.params(i, len(prompt))
            rid = self.engine.add_request(prompt, params, images=ImageInputs(pixels, grid))
            requests[rid] = (prompt, pixels, grid)
        self.calls += 1
        scored: dict[str, list[float | None]] = {rid: [] for rid in requests}
        done: dict[str, PolicySample] = {}
        while len(done) < len(requests):
            for out in self.engine.step():
                scored[out.request_id] += [lp.logprob for lp in out.logprobs or []]
                if not out.finished:
                    continue
                ids, logprobs = list(out.token_ids), scored[out.request_id]
                logprobs = logprobs if len(logprobs) == len(ids) else [None] * len(ids)
                stop = out.stop_reason
                if (
                    out.finish_reason == "stop"
                    and isinstance(stop, int)
                    and stop not in self.vision_stops
                ):
                    ids, logprobs = ids + [stop], logprobs + [None]
                prompt, pixels, grid = requests[out.request_id]
                done[out.request_id] = PolicySample(
                    out.text, list(prompt), ids, logprobs, pixels, grid
                )
        return [done[rid] for rid in requests]


class ExpertPolicy:
    """The scripted expert behind the policy interface (an oracle: it reads the live window
    through ``context.env``): the upper bound and a check of the evaluation wiring."""

    def act(self, contexts: Sequence[AgentContext]) -> list[str]:
        out = []
        for c in contexts:
            step = expert_step(c.env.task, c.env.window)
            out.append(format_response(step.thought, step.action))
        return out


__all__ = ["AgentContext", "ExpertPolicy", "Policy", "PolicySample", "VLMPolicy", "agent_messages"]
