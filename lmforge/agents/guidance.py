"""Expert-guided groups for online RL: where none of a state's sampled responses is right, the
scripted expert's response joins the group as an off-policy sample.

    sample = expert_sample(policy, context, expert_step(task, window))
    groups, runs = play_state_groups(policy, tasks, group_size=8, guide=True)

GRPO learns only from groups whose rewards differ: in a state where all ``G`` responses miss
the expert's move (42 % of the visited states of the SFT agent in session 15's diagnostics),
every advantage is 0 and the state teaches nothing. Mixed-policy GRPO (LUFFY, Yan et al.
2025, "Learning to Reason under Off-Policy Guidance") puts an off-policy demonstration in such
a group: with rewards r = (0, …, 0, 1 + f) the demonstration's advantage is large and
positive, the policy's own responses slightly negative, and the update is still the clipped
surrogate of GRPO on the same states the policy reached (the on-policy states of DAgger, Ross
et al. 2011). Here the demonstration is `lmforge.agents.expert.expert_step`'s move in that
state, written exactly as the policy would write it:

* a text policy: ``Thought: …\\nAction: …`` (`format_response`) tokenized, then the stop token;
* a pointer policy (GUI-Actor): the text up to the coordinate action's ``(`` (the query), then
  the pointer's choice — the image token whose centre lies in the expert's target box nearest
  the expert's point — its centre spliced as ``x,y``, then ``)`` (a scroll: ``,`` and the
  direction, which the language model is trained on), then the end-of-turn token. The
  splicing is the policy's own (`VLMPolicy.splice_point`), with the expert's box as the
  chooser in place of the pointer head's sample.

The demonstration was not sampled by the engine, so it has no old log-probs: its tokens carry
None (`PolicySample.logprobs`) and the surrogate uses the current log-prob as π_old (ratio 1,
the plain policy gradient A·∇log π, LUFFY's off-policy term without its shaping); its pointer
choice stores the current pointer log-prob, so its ratio is 1 as well.
"""

from __future__ import annotations

from functools import partial

import torch

from lmforge.agents.actions import Drag, Scroll, action_point, format_response
from lmforge.agents.agent_data import pointer_prefix
from lmforge.agents.expert import ExpertStep
from lmforge.agents.policy import (
    AgentContext,
    Pointing,
    PolicySample,
    VLMPolicy,
    agent_messages,
)
from lmforge.agents.widgets import box_contains
from lmforge.models.pointer_head import to_pixels, token_centre
from lmforge.vision.vlm_data import encode_prompt


def box_token(
    box: tuple[int, int, int, int], point: tuple[int, int], grid: tuple[int, int],
    screen: tuple[int, int],
) -> tuple[int, tuple[int, int]] | None:  # fmt: skip
    """The token of a row-major ``grid`` over the ``screen`` whose centre (in pixels) lies in
    ``box`` nearest ``point``, and that centre; None when no token's centre is in the box."""
    best = None
    for k in range(grid[0] * grid[1]):
        x, y = to_pixels(token_centre(k, grid), screen)
        if box_contains(box, x, y):
            d = (x - point[0]) ** 2 + (y - point[1]) ** 2
            if best is None or d < best[0]:
                best = (d, k, (x, y))
    return None if best is None else (best[1], best[2])


def expert_sample(
    policy: VLMPolicy, context: AgentContext, step: ExpertStep
) -> PolicySample | None:
    """The expert's ``step`` in ``context`` as a `PolicySample` of ``policy`` (see the module
    docstring), or None where the policy could not have written it: a pointed move whose box
    holds no image token's centre (a drag: its thumb, or its drop range shifted by where
    the first point was written)."""
    messages, images = agent_messages(context, policy.history)
    prompt, pixels, grid = encode_prompt(policy.tokenizer, policy.processor, messages, images)
    encode, end = policy.tokenizer.encode, policy.end_of_turn
    text = format_response(step.thought, step.action)
    point = action_point(step.action)
    if not policy.pointer or point is None:
        ids = encode(text) + ([] if end is None else [end])
        return PolicySample(text, list(prompt), ids, [None] * len(ids), pixels, grid)
    drag = isinstance(step.action, Drag)
    if step.target_box is None or (drag and step.drop_box is None):
        return None
    hit = pointer_prefix(text)
    if hit is None:  # pragma: no cover - every pointed action has a query
        return None
    head = encode(text[: hit[1]])
    p = Pointing(hit[0], head, [None] * len(head), [True] * len(head))
    targets = [(step.target_box, point)]
    if drag:  # the release: the drop range moved with the first point as written (below)
        targets.append((step.drop_box, (step.action.x2, step.action.y2)))
    for n, (box, aim) in enumerate(targets):
        if n == 1:  # relative to the first point: the release moves the thumb by Δy
            dy = p.pointers[0].point[1] - point[1]
            box, aim = (box[0], box[1] + dy, box[2], box[3] + dy), (aim[0], aim[1] + dy)
        more = drag and n == 0
        suffix = "," if more or isinstance(step.action, Scroll) else ")"
        expert = partial(_in_box, box=box, aim=aim, screen=policy.screen)
        if not policy.splice_point(p, prompt, pixels, grid, suffix, expert):
            return None
    if isinstance(step.action, Scroll):
        direction = encode(f"{step.action.direction})")
        p.ids, p.sampled = p.ids + direction, p.sampled + [True] * len(direction)
    if end is not None:
        p.ids, p.sampled = p.ids + [end], p.sampled + [False]
    written = policy.tokenizer.decode(p.ids, skip_special_tokens=True)
    return PolicySample(written, list(prompt), p.ids, [None] * len(p.ids), pixels, grid,
                        p.sampled, p.pointers)  # fmt: skip


def _in_box(
    logits: torch.Tensor, grid: tuple[int, int], box: tuple[int, int, int, int],
    aim: tuple[int, int], screen: tuple[int, int],
) -> tuple[int, tuple[int, int]] | None:  # fmt: skip
    """`VLMPolicy.splice_point`'s chooser for the expert: `box_token` (the logits unused)."""
    return box_token(box, aim, grid, screen)


__all__ = ["box_token", "expert_sample"]
