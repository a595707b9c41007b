"""Policies that act in `GUIEnv`: a vision-language model decoding through the engine with
screenshots (optionally under the action grammar), and the scripted expert as an oracle.

    policy = VLMPolicy(model, tokenizer, processor, screen=(128, 128), history=2)
    texts = policy.act([AgentContext(instruction, screenshots, previous_actions)])

A VLM sees exactly what the training data shows (`lmforge.agents.agent_data`): the last
``history`` screenshots, then the `agent_prompt` text (instruction, previous actions, the last
thought); it
writes ``Thought: …\\nAction: …``. All contexts of a call decode together in one engine
(continuous batching, images encoded once per request); with ``constrained`` every output
is held to `response_regex` (so it always parses, and its points lie on the screen), and
``temperature`` 0 is greedy; with ``typing="instruction"`` the grammar also holds ``type``
to the spans of the context's instruction (`lmforge.agents.action_grammar.instruction_spans`),
with ``thoughts="expert"`` the thought to the expert's sentences (`lmforge.agents.thoughts`).
These — and grounded clicks, ``clicks="grounded"`` — are the defaults, as in the agent
configs and `lmforge agent`'s options; ``typing="free"``, ``thoughts="free"``,
``clicks="pointer"`` decode as the SFT data's plain grammar (`response_regex`) and point in
the episode's own context.
Oracle policies may read ``context.env`` (the live window); model policies never do.
This file is long because a pointer policy's decode → point → splice loop (the engine's
requests, the responses stopped at a query, their pointer choices, grounded clicks) is one
piece of state that RL trains on token-exactly; split, that state would cross modules.

`VLMPolicy.sample` returns what produced each response (`PolicySample`: the prompt's token
ids and image inputs, the sampled token ids, their log-probs as the engine computed them),
so online RL trains on exactly the tokens that were sampled instead of re-tokenizing text.

A model with a pointer head (`lmforge.models.pointer_head`, GUI-Actor) *points* instead of
writing coordinates (``pointer``, by default whenever the model has a head):

    (a) the engine decodes the response as above, but the policy ends a request as soon as its
        text reaches a coordinate action's ``\nAction: click(`` (also ``left_double(``,
        ``right_single(``, ``drag(``, ``scroll(``; `POINTING_ACTIONS`). The kept ids end with
        the sampled token that ends with ``(`` — the pointer's query; if a sampled token ran
        past the ``(`` (e.g. ``((``), it is dropped and the text up to the ``(`` re-encoded;
    (b) one forward over prompt + those ids gives the pointer distribution over the current
        screenshot's (the last image's) tokens at the query (`VisionLanguageModel.point`);
    (c) greedy (``temperature`` 0, or ``greedy_pointer``) clicks at `pointer_point` (the
        region readout) in screen pixels; sampling draws token k from p^(1/T) (renormalised)
        and clicks its centre; with ``clicks="grounded"`` a click whose thought names an
        element (`lmforge.agents.grounded`) is pointed from the grounding question about
        that element on the current screenshot instead — greedily, or with
        ``sample_grounded`` sampled as above and recorded (`GroundedChoice`) so that RL
        trains the grounder on the episode's outcome too;
    (d) ``x,y`` is spliced in, then ``)`` — or, for a drag, ``,`` and a second point from the
        token ending with that ``,``; for a scroll, ``,`` and the direction decoded by the
        engine under a small grammar (``(up|down|left|right)\\)``); then the end-of-turn token.

The response always parses when the text reached the coordinate action, and under the
grammar it matches `response_regex`. `PolicySample.pointers` records each choice (query
position, image, token k, log p_k under the untempered pointer softmax) and
`PolicySample.sampled` flags the spliced tokens (coordinates, punctuation, re-encoded text,
end of turn) as not sampled, so RL trains the language model on the sampled tokens only and
the pointer head on its choices (`lmforge.agents.rl`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Protocol

import numpy as np
import torch

from lmforge.agents.action_grammar import instruction_spans, response_regex
from lmforge.agents.actions import SCROLL_DIRECTIONS, format_response
from lmforge.agents.agent_data import agent_prompt, pointer_prefix
from lmforge.agents.expert import expert_step
from lmforge.agents.grounded import CLICK_MODES, grounding_query, response_target
from lmforge.agents.thoughts import thought_regex
from lmforge.infer import Engine, SamplingParams
from lmforge.infer.multimodal import ImageInputs
from lmforge.infer.structured import compile_constraint
from lmforge.models.pointer_head import pointer_point, to_pixels, token_centre
from lmforge.vision.processor import IMAGE_PAD, VISION_END, VISION_START, ImageProcessor
from lmforge.vision.vlm_data import encode_prompt


@dataclass
class AgentContext:
    """What a policy sees at one step: the instruction, the screenshots so far (oldest
    first), the previous actions as text and the previous responses' thoughts (the prompt
    shows the last); ``env`` is for oracle policies only."""

    instruction: str
    screenshots: list[np.ndarray]
    previous: list[str] = field(default_factory=list)
    env: Any = None
    thoughts: list[str] = field(default_factory=list)  # the previous responses' thoughts


@dataclass(frozen=True)
class PointerChoice:
    """One pointed coordinate pair: the query token's ``position`` in ``prompt_ids +
    token_ids`` (the token ending with ``(``, or a drag's ``,``), the ``image`` pointed into
    (index into the sample's images), the chosen image token ``index`` (row-major on
    ``grid`` = (rows, cols)), its ``logprob`` under the untempered pointer softmax, and the
    pixel ``point`` written."""

    position: int
    image: int
    index: int
    logprob: float
    grid: tuple[int, int]
    point: tuple[int, int]


@dataclass(frozen=True)
class GroundedChoice:
    """A grounded click's sampled point (``sample_grounded``): the grounding question's token
    ids and image inputs (`lmforge.agents.grounded.grounding_query`) and the `PointerChoice`
    at its last token (``position`` = len(ids) − 1, ``image`` 0) — the example RL trains the
    pointer on, in the context the point was chosen in."""

    ids: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    choice: PointerChoice
    # with ``ground_samples`` = K: K − 1 more points drawn from the same distribution, each
    # ``(k, log p(k), (x, y))`` — the choice and these are one group of the grounding bandit
    # (`lmforge.agents.rl_examples.grounding_bandit`); none were clicked
    alternatives: tuple[tuple[int, float, tuple[int, int]], ...] = ()


@lru_cache(maxsize=512)
def request_regex(screen: tuple[int, int], instruction: str, typing: str, thoughts: str) -> str:
    """`response_regex` for ``instruction`` (cached: asked every step), ``type`` / the thought
    held to its spans as ``typing`` / ``thoughts`` say (`thought_regex`)."""
    spans = instruction_spans(instruction)
    typed = spans if typing == "instruction" else None
    return response_regex(screen, typed, thought_regex(spans) if thoughts == "expert" else None)


@dataclass
class PolicySample:
    """One decoded response and what produced it: the prompt's token ids and image inputs,
    the sampled ``token_ids`` (ending with the stop token when one ended the response, unless
    it was a vision token — `VLMPolicy` stops on those, as they cannot be trained on) and
    ``logprobs``, each token's log-probability under the sampling model's raw (untempered,
    unconstrained) next-token distribution as the engine computed it — None where the
    engine does not score a token (the stop token, spliced tokens) or when log-probs were
    not asked for. A pointer policy's responses also hold ``pointers`` (`PointerChoice`, in
    order) and ``sampled``: per token, whether the language model sampled it (False for the
    spliced coordinates and the rest of the action the policy wrote itself); None → all;
    with ``sample_grounded``, ``grounded``: the sampled grounded click (`GroundedChoice`)."""

    text: str
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float | None]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    sampled: list[bool] | None = None
    pointers: list[PointerChoice] = field(default_factory=list)
    grounded: list[GroundedChoice] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sampled is None:
            self.sampled = [True] * len(self.token_ids)
        if len(self.sampled) != len(self.token_ids):
            raise ValueError(f"{len(self.sampled)} sampled flags for {len(self.token_ids)} tokens")


class Policy(Protocol):
    def act(self, contexts: Sequence[AgentContext]) -> list[str]: ...


def agent_messages(context: AgentContext, history: int) -> tuple[list[dict], list[np.ndarray]]:
    """The user turn (last ``history`` screenshots, then the prompt) and its images — the
    layout of a trajectory example's question."""
    images = context.screenshots[-history:]
    text = agent_prompt(context.instruction, context.previous, len(images), context.thoughts)
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}], images


# tokens a pointer policy keeps free after the response for what it splices in (coordinates,
# a scroll's direction, the end of turn, text re-encoded up to the query)
POINTER_ROOM = 32
DIRECTION_REGEX = "(" + "|".join(SCROLL_DIRECTIONS) + r")\)"
END_OF_TURN = "<|im_end|>"
TYPINGS = ("free", "instruction")  # what a constrained policy's type() may write
THOUGHT_MODES = ("free", "expert")  # … and its thoughts (`lmforge.agents.thoughts`)


@dataclass
class Pointing:
    """A response stopped at a coordinate action's query: what it has so far (the ids, their
    log-probs and sampled flags, the pointer choices made); `VLMPolicy.splice_point` adds
    to it."""

    name: str
    ids: list[int]
    logprobs: list[float | None]
    sampled: list[bool]
    pointers: list[PointerChoice] = field(default_factory=list)
    grounded: list[GroundedChoice] = field(default_factory=list)


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
        pointer: bool | None = None,
        typing: str = "instruction",
        thoughts: str = "expert",
        greedy_pointer: bool = False,
        clicks: str = "grounded",
        sample_grounded: bool = False,
        ground_samples: int = 0,
        ground_temperature: float = 0.0,
    ) -> None:
        if history < 1:
            raise ValueError(f"history={history} must be ≥ 1 screenshot")
        has_head = getattr(model, "pointer_head", None) is not None
        if typing not in TYPINGS:
            raise ValueError(f"typing={typing!r}: choose from {list(TYPINGS)}")
        if thoughts not in THOUGHT_MODES:
            raise ValueError(f"thoughts={thoughts!r}: choose from {list(THOUGHT_MODES)}")
        if pointer and not has_head:
            raise ValueError("pointer=True needs a model with a pointer head (pointer_size > 0)")
        if clicks not in CLICK_MODES:
            raise ValueError(f"clicks={clicks!r}: choose from {list(CLICK_MODES)}")
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.screen, self.history, self.max_tokens = screen, history, max_tokens
        self.temperature, self.constrained, self.seed = temperature, constrained, seed
        self.logprobs = logprobs  # score each sampled token (`sample`'s ``logprobs``)
        self.pointer = has_head if pointer is None else pointer  # clicks by pointing
        # a sampled vision token ends the response and is not kept: in a training input it
        # would be an image placeholder with no image
        vision = (tokenizer.token_to_id(t) for t in (VISION_START, IMAGE_PAD, VISION_END))
        self.vision_stops = tuple(i for i in vision if i is not None)
        self.end_of_turn = tokenizer.token_to_id(END_OF_TURN)
        self.typing = typing  # "instruction": type() writes a span of the instruction
        self.thoughts = thoughts  # "expert": thoughts in the expert's language (thoughts.py)
        self.greedy_pointer = greedy_pointer  # point greedily, unrecorded: RL trains text only
        self.clicks = clicks  # "grounded": pointed clicks from the thought's grounding question
        # … sampled (at temperature > 0, unless greedy_pointer) and recorded for RL
        self.sample_grounded = sample_grounded
        # … and with ground_samples = K ≥ 2, K − 1 more points drawn and recorded beside it
        self.ground_samples = ground_samples
        # … drawn at this temperature (0: ``temperature``): an exploring bandit
        self.ground_temperature = ground_temperature
        self.regex = response_regex(screen)
        self.engine = Engine(model.eval(), tokenizer)
        self.calls = 0

    def params(self, index: int, prompt_length: int = 0, instruction: str = "") -> SamplingParams:
        """Request ``index``'s sampling: at most ``max_tokens``, and never past the model's
        context (a long history of earlier responses leaves less room; a cut response is an
        invalid action, as any unparseable one); a pointer policy keeps `POINTER_ROOM`
        tokens free for what it splices in. Constrained with ``typing="instruction"``,
        ``type`` may write only `instruction_spans` of ``instruction``; with
        ``thoughts="expert"`` the thought is one of the expert's sentences whose instruction
        slots copy those spans (`lmforge.agents.thoughts.thought_regex`)."""
        constraint = None
        if self.constrained:
            regex = self.regex
            if self.typing == "instruction" or self.thoughts == "expert":
                regex = request_regex(self.screen, instruction, self.typing, self.thoughts)
            constraint = compile_constraint(self.tokenizer, regex=regex)
        room = self.engine.max_len - prompt_length - (POINTER_ROOM if self.pointer else 0)
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
        """One `PolicySample` per context, decoded together (a pointer policy: phase (a)
        together, then the points per response — see the module docstring)."""
        requests, shots = {}, {}
        for i, context in enumerate(contexts):
            messages, images = agent_messages(context, self.history)
            prompt, pixels, grid = encode_prompt(self.tokenizer, self.processor, messages, images)
            params = self.params(i, len(prompt), context.instruction)
            rid = self.engine.add_request(prompt, params, images=ImageInputs(pixels, grid))
            requests[rid] = (prompt, pixels, grid, params.seed)
            shots[rid] = context.screenshots[-1]
        self.calls += 1
        scored: dict[str, list[float | None]] = {rid: [] for rid in requests}
        streamed: dict[str, list[int]] = {rid: [] for rid in requests}
        done: dict[str, PolicySample] = {}
        pointing: dict[str, Pointing] = {}
        while len(done) + len(pointing) < len(requests):
            for out in self.engine.step():
                rid = out.request_id
                if rid not in requests or rid in done or rid in pointing:
                    continue  # an aborted request's last report
                scored[rid] += [lp.logprob for lp in out.logprobs or []]
                if self.pointer:
                    hit = self._reached_query(streamed[rid], scored[rid], out.new_token_ids)
                    if hit is not None:
                        if not out.finished:
                            self.engine.abort(rid)
                        pointing[rid] = hit
                        continue
                if not out.finished:
                    continue
                ids, logprobs = list(out.token_ids), scored[rid]
                logprobs = logprobs if len(logprobs) == len(ids) else [None] * len(ids)
                stop = out.stop_reason
                if (
                    out.finish_reason == "stop"
                    and isinstance(stop, int)
                    and stop not in self.vision_stops
                ):
                    ids, logprobs = ids + [stop], logprobs + [None]
                prompt, pixels, grid, _ = requests[rid]
                done[rid] = PolicySample(out.text, list(prompt), ids, logprobs, pixels, grid)
        while self.engine.has_unfinished():  # collect the aborted requests' reports
            self.engine.step()
        if pointing:
            done.update(self._finish_pointing(pointing, requests, shots))
        return [done[rid] for rid in requests]

    # ------------------------------------------------------------------ pointing
    def _reached_query(
        self, ids: list[int], logprobs: list[float | None], new: Sequence[int]
    ) -> Pointing | None:
        """Extend ``ids`` by the ``new`` tokens one at a time; at the first whose text
        reaches a coordinate action's ``(`` (`pointer_prefix`), the response so far, ending
        with the query token: the sampled ids — or, if the last one ran past the ``(``, the
        ids before it and the text up to the ``(`` re-encoded (flagged not sampled)."""
        decode = self.tokenizer.decode
        for t in new:
            ids.append(t)
            if "(" not in decode([t]):
                continue
            text = decode(ids, skip_special_tokens=True)
            hit = pointer_prefix(text)
            if hit is None:
                continue
            name, end = hit
            n = len(ids)
            scores = list(logprobs[:n]) if len(logprobs) >= n else [None] * n
            if len(text) == end:  # the sampled token ends with the "("
                return Pointing(name, list(ids), scores, [True] * n)
            head = decode(ids[:-1], skip_special_tokens=True)
            extra = self.tokenizer.encode(text[len(head) : end])
            kept = ids[:-1] + extra
            if not extra or decode(kept, skip_special_tokens=True) != text[:end]:
                kept = self.tokenizer.encode(text[:end])  # (odd byte sequences) all re-encoded
                return Pointing(name, kept, [None] * len(kept), [False] * len(kept))
            return Pointing(name, kept, scores[: n - 1] + [None] * len(extra),
                             [True] * (n - 1) + [False] * len(extra))  # fmt: skip
        return None

    @torch.no_grad()
    def pointer_logits(
        self, ids: list[int], pixels: torch.Tensor, grid: torch.Tensor, image: int
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The pointer head's logits ``[N]`` over image ``image``'s tokens from the last of
        ``ids`` (`VisionLanguageModel.point` on the model's device) and the image's grid."""
        device = next(self.model.parameters()).device
        logits, grids = self.model.point(torch.tensor([ids], device=device), pixels.to(device),
                                         grid.to(device), [image])  # fmt: skip
        return logits[0], grids[0]

    def choose_point(
        self,
        logits: torch.Tensor,
        grid: tuple[int, int],
        generator: torch.Generator | None,
        greedy: bool = False,
    ) -> tuple[int, tuple[int, int]]:
        """Token k and the pixel click: greedy (``greedy``, ``temperature`` 0 or
        ``greedy_pointer``) — the argmax and `pointer_point`'s region readout; sampling —
        k ~ softmax(logits / T) and its token's centre."""
        if greedy or self.temperature == 0 or self.greedy_pointer:
            k = int(logits.argmax())
            point = pointer_point(logits.softmax(-1), grid)
        else:
            weights = (logits / self.temperature).softmax(-1).cpu()
            k = int(torch.multinomial(weights, 1, generator=generator))
            point = token_centre(k, grid)
        return k, to_pixels(point, self.screen)

    def splice_point(
        self, p: Pointing, prompt: list[int], pixels: torch.Tensor, grid: torch.Tensor,
        suffix: str, choose: Callable[[torch.Tensor, tuple[int, int]],
                                      tuple[int, tuple[int, int]] | None], record: bool = True,
        query: tuple[list[int], torch.Tensor, torch.Tensor] | None = None,
    ) -> bool:  # fmt: skip
        """Point from ``p``'s last token into the current screenshot (the last image):
        ``choose(logits, grid)`` picks the token k and the pixel point (the policy's own
        `choose_point`, or a forced choice such as the expert's box in
        `lmforge.agents.guidance`); the choice is recorded with its current log-prob and
        ``x,y`` + ``suffix`` spliced (flagged not sampled; with ``record`` False the choice
        is not recorded). False (nothing added) when ``choose`` returns None. ``query``: point
        from another prompt's last token into its last image instead (a grounded click,
        `grounded_query`; recorded in ``p.grounded`` as a `GroundedChoice`)."""
        full = prompt + p.ids
        source = query or (full, pixels, grid)
        image = source[2].shape[0] - 1
        logits, cells = self.pointer_logits(*source, image)
        chosen = choose(logits, cells)
        if chosen is None:
            return False
        k, (x, y) = chosen
        if record and query is not None:
            p.grounded.append(self.grounded_choice(query, logits, cells, k, (x, y)))
        elif record:
            logprob = float(logits.log_softmax(-1)[k])
            p.pointers.append(PointerChoice(len(source[0]) - 1, image, k, logprob, cells, (x, y)))
        extra = self.tokenizer.encode(f"{x},{y}{suffix}")
        p.ids += extra
        p.logprobs += [None] * len(extra)
        p.sampled += [False] * len(extra)
        return True

    def grounded_choice(
        self, query: tuple[list[int], torch.Tensor, torch.Tensor], logits: torch.Tensor,
        grid: tuple[int, int], k: int, point: tuple[int, int],
        generator: torch.Generator | None = None,
    ) -> GroundedChoice:  # fmt: skip
        """The record of a grounded click: token ``k`` (pixel ``point``) chosen from the pointer
        ``logits`` at the last of the grounding question ``query``'s ids into its last image, its
        untempered log-prob, and `more_points` drawn beside it (by ``generator`` when given)."""
        ids, pixels, image_grid = query
        logprob = float(logits.log_softmax(-1)[k])
        choice = PointerChoice(len(ids) - 1, image_grid.shape[0] - 1, k, logprob, grid, point)
        extra = self.more_points(logits, grid, k, generator)
        return GroundedChoice(list(ids), pixels, image_grid, choice, extra)

    def more_points(
        self, logits: torch.Tensor, grid: tuple[int, int], k: int,
        generator: torch.Generator | None = None,
    ) -> tuple[tuple[int, float, tuple[int, int]], ...]:  # fmt: skip
        """``ground_samples`` − 1 more tokens drawn as `choose_point` samples (softmax(logits /
        T), T = ``ground_temperature`` if set, else ``temperature``; by ``generator``, else one
        seeded by the chosen ``k`` and the call count, so a rollout repeats), each with its
        untempered log-prob and pixel point; none without ``ground_samples``."""
        if self.ground_samples < 2 or self.temperature <= 0:
            return ()
        if generator is None:
            seed = self.seed * 1_000_003 + self.calls * 4099 + k
            generator = torch.Generator().manual_seed(seed)
        t = self.ground_temperature or self.temperature
        weights = (logits / t).softmax(-1).cpu()
        drawn = torch.multinomial(weights, self.ground_samples - 1, True, generator=generator)
        logp = logits.log_softmax(-1)
        return tuple((int(j), float(logp[j]), to_pixels(token_centre(int(j), grid), self.screen))
                     for j in drawn)  # fmt: skip

    def grounded_query(
        self, p: Pointing, screenshot: np.ndarray
    ) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
        """With ``clicks="grounded"``, the grounding question about the element ``p``'s thought
        names, on ``screenshot`` (`lmforge.agents.grounded`); else, or for a thought naming
        none, None (the click is pointed from the response's own context)."""
        text = self.tokenizer.decode(p.ids, skip_special_tokens=True)
        target = response_target(text) if self.clicks == "grounded" else None
        return target and grounding_query(self.tokenizer, self.processor, *target, screenshot)

    def _finish_pointing(
        self, pointing: dict[str, Pointing], requests: dict[str, tuple], shots: dict
    ) -> dict[str, PolicySample]:
        """Phases (b)–(d) of the module docstring for the responses stopped at a query."""
        scrolls = []
        for rid, p in pointing.items():
            prompt, pixels, grid, seed = requests[rid]
            generator = torch.Generator().manual_seed(int(seed or 0) + 7)
            own = partial(self.choose_point, generator=generator)
            keep = not self.greedy_pointer
            if p.name == "drag":
                self.splice_point(p, prompt, pixels, grid, ",", own, keep)  # point 2's query
                self.splice_point(p, prompt, pixels, grid, ")", own, keep)
            elif p.name == "scroll":
                self.splice_point(p, prompt, pixels, grid, ",", own, keep)
                scrolls.append(rid)
            elif (query := self.grounded_query(p, shots[rid])) is not None:
                sample = self.sample_grounded and keep and self.temperature > 0
                ground = own if sample else partial(self.choose_point, generator=None, greedy=True)
                self.splice_point(p, prompt, pixels, grid, ")", ground, sample, query)
            else:
                self.splice_point(p, prompt, pixels, grid, ")", own, keep)
        if scrolls:  # the direction, decoded under its own small grammar
            prompts, params, images = [], [], []
            for rid in scrolls:
                prompt, pixels, grid, seed = requests[rid]
                prompts.append(prompt + pointing[rid].ids)
                room = self.engine.max_len - len(prompts[-1])
                constraint = compile_constraint(self.tokenizer, regex=DIRECTION_REGEX)
                params.append(SamplingParams(max_tokens=max(1, min(8, room)),
                                             temperature=self.temperature,
                                             seed=None if seed is None else seed + 11,
                                             constraint=constraint,
                                             logprobs=0 if self.logprobs else None,
                                             stop_token_ids=self.vision_stops))  # fmt: skip
                images.append(ImageInputs(pixels, grid))
            outs = self.engine.generate(prompts, params, images)
            for rid, out in zip(scrolls, outs, strict=True):
                p, n = pointing[rid], len(out.token_ids)
                scores = [lp.logprob for lp in out.logprobs or []]
                p.ids += list(out.token_ids)
                p.logprobs += scores if len(scores) == n else [None] * n
                p.sampled += [True] * n
        done = {}
        for rid, p in pointing.items():
            if self.end_of_turn is not None:
                p.ids.append(self.end_of_turn)
                p.logprobs.append(None)
                p.sampled.append(False)
            prompt, pixels, grid, _ = requests[rid]
            text = self.tokenizer.decode(p.ids, skip_special_tokens=True)
            done[rid] = PolicySample(text, list(prompt), p.ids, p.logprobs, pixels, grid,
                                     p.sampled, p.pointers, p.grounded)  # fmt: skip
        return done


class ExpertPolicy:
    """The scripted expert behind the policy interface (an oracle: it reads the live window
    through ``context.env``): the upper bound and a check of the evaluation wiring."""

    def act(self, contexts: Sequence[AgentContext]) -> list[str]:
        out = []
        for c in contexts:
            step = expert_step(c.env.task, c.env.window)
            out.append(format_response(step.thought, step.action))
        return out


__all__ = [
    "AgentContext",
    "ExpertPolicy",
    "GroundedChoice",
    "PointerChoice",
    "Pointing",
    "Policy",
    "PolicySample",
    "THOUGHT_MODES",
    "TYPINGS",
    "VLMPolicy",
    "agent_messages",
    "request_regex",
]
