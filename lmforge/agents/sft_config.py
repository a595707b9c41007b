"""The agent SFT run's configuration: the ``agent`` section (data mix, screen, evaluation,
the model from scratch or a folder) and its range checks, each error naming its field.

    config = load_config("recipes/agent-tiny.yaml", ["agent.train_tasks=300"], AgentRunConfig)
    check_agent_config(config)

`lmforge.agents.sft` trains with it; `lmforge.agents.rl` reuses `AgentSection` for its
evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.agents.agent_data import DEFAULT_KINDS, KINDS, ROW_TARGETS
from lmforge.agents.grounded import CLICK_MODES
from lmforge.agents.policy import THOUGHT_MODES, TYPINGS
from lmforge.agents.tasks import SPLITS
from lmforge.config import ConfigError
from lmforge.models.pointer_head import POINTER_CELLS
from lmforge.train.config import RunConfig
from lmforge.train.vlm_sft import VLMShape, check_vlm_shape


@dataclass
class AgentSection(VLMShape):
    """The data mix, the screen, the evaluation and (from scratch) the model: the sizes of
    `VLMShape` (``lmforge vlm sft``'s too) with 8-px patches, a 768-token vocabulary and
    ``vlm``'s initialisation (LM σ 0.1, encoder N(0, 1/fan_in)), plus the agent's own
    choices below."""

    patch_size: int = 8
    vocab_size: int = 768
    lm_init_std: float = 0.1  # as ``vlm``'s: σ 0.02 leaves a width-64 VLM on the answer prior
    vision_init: Literal["fan_in", "config"] = "fan_in"
    kinds: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    train_tasks: int = 200
    history: int = 2
    mistake_rate: float = 0.3
    screen: int = 128
    eval_split: str = "heldout"
    eval_tasks: int = 30  # episodes; 0 skips them
    eval_grounding: int = 200  # held-out-layout grounding examples; 0 skips them
    max_steps: int = 15
    max_new_tokens: int = 160
    constrained: bool = True  # decode episodes under the action grammar
    typing: str = "instruction"  # … whose type() writes spans of the instruction (or "free")
    thoughts: str = "expert"  # … and thinks in the expert's language (agents.thoughts; or "free")
    clicks: str = "grounded"  # a pointer model's clicks: from a grounding question, or "pointer"
    grounding_count: int = 0  # grounding questions per visited screen (0: every element)
    grounding_turns: int = 8  # grounding questions per chat (one image encoding)
    grounding_shift: int = 0  # grounding screenshots moved down by up to this many px
    random_screens: int = 0  # perception + grounding on this many random-widget screens
    reading_screens: int = 0  # kind reading: + this many list-heavy random screens
    zoom: int = 0  # ≥ 2: grounding also on zoom× crops; pointer eval adds a second, closer look
    zoom_crops: int = 1  # zoomed grounding chats per screen (with agent.zoom)
    question_first: bool = False  # grounding chats: the first question before the screenshot
    coordinate_tokens: bool = False  # from scratch: one token per coordinate value
    rope_theta: float = 10000.0  # from scratch: the language model's (M-)RoPE base
    merge_size: int = 2  # from scratch: patches merged per side into one image token
    pointer_size: int = 0  # > 0: clicks come from a pointer head of this width (GUI-Actor)
    pointer_weight: float = 1.0  # the pointer loss's weight against the LM loss
    pointer_cells: str = "overlap"  # the pointer's target cells: "overlap" or "centre" (in the box)
    glyph_weight: float = 0.0  # > 0: + this × the dense glyph (OCR) loss (lmforge.agents.glyph)
    glyph_slots: int = 2  # ordered glyphs predicted per image token
    glyph_steps: int = 0  # > 0: an encoder-only glyph pretraining stage of this many steps
    glyph_screens: str = "train"  # its screens: "train" (the examples') or "fresh" (new ones)
    row_screens: int = 0  # + grounding on the list rows only of this many list-heavy screens
    option_screens: int = 0  # + grounding on open lists' options of this many dropdown screens
    query_weight: float = 0.0  # > 0: + this × a train-only head reading the number at the query
    query_keys: bool = False  # with query_weight: the same head reads the row's last-digit token
    query_labels: bool = False  # with query_weight: also other kinds' labels (query_label_targets)
    row_target: str = "box"  # list-row pointer target: "box", "number" (digits), "last_digit"
    expert_drags: bool = False  # the expert drags far list rows into view (expert.drag_step)
    composed: bool = False  # the training tasks include the composed templates (task_templates)
    clauses: float = 0.0  # this share of the training tasks are clause tasks (task_clauses)
    messages: float = 0.0  # this share of the training tasks switch their message (sample_task)
    expand_blocks: int = 0  # > 0, with init_from: a zero-output LM layer after every k (LLaMA Pro)


@dataclass
class AgentRunConfig(RunConfig):
    """An agent SFT run: the training sections plus ``agent``."""

    out_dir: str = "runs/agent-tiny"
    agent: AgentSection = field(default_factory=AgentSection)


def check_agent_config(config: AgentRunConfig) -> None:
    """Range checks of the ``agent`` section (`ConfigError` naming the field)."""
    a = config.agent
    bad = [k for k in a.kinds if k not in KINDS]
    if bad or not a.kinds:
        raise ConfigError(f"agent.kinds={a.kinds}: choose from {', '.join(KINDS)}")
    if (a.eval_split not in SPLITS or a.typing not in TYPINGS or a.thoughts not in THOUGHT_MODES
            or a.clicks not in CLICK_MODES):  # fmt: skip
        raise ConfigError(f"agent.eval_split={a.eval_split!r}, agent.typing={a.typing!r}, agent."
                          f"thoughts={a.thoughts!r}, agent.clicks={a.clicks!r}: choose from "
                          f"{SPLITS}, {TYPINGS}, {THOUGHT_MODES}, {CLICK_MODES}")  # fmt: skip
    if a.merge_size < 1 or a.screen % (a.merge_size * a.patch_size):
        raise ConfigError(f"agent.screen={a.screen} must be a multiple of agent.merge_size × "
                          f"agent.patch_size = {a.merge_size} × {a.patch_size}")  # fmt: skip
    check_vlm_shape(a, "agent")
    if min(a.random_screens, a.reading_screens, a.row_screens, a.option_screens) < 0:
        raise ConfigError(f"agent.random_screens={a.random_screens}, agent.reading_screens="
                          f"{a.reading_screens}, agent.row_screens={a.row_screens} and "
                          f"agent.option_screens={a.option_screens} must be ≥ 0")  # fmt: skip
    if (
        a.train_tasks < 1
        or a.history < 1
        or not 0 <= a.mistake_rate <= 1
        or not 0 <= a.clauses <= 1
        or not 0 <= a.messages <= 1
    ):
        raise ConfigError("agent.train_tasks and agent.history must be ≥ 1, agent.mistake_rate, "
                          "agent.clauses and agent.messages in [0, 1]")  # fmt: skip
    if a.zoom == 1 or a.zoom < 0 or a.screen % max(1, a.zoom) or a.zoom_crops < 1:
        raise ConfigError(f"agent.zoom={a.zoom} must be 0 (off) or ≥ 2 dividing agent.screen, "
                          f"agent.zoom_crops={a.zoom_crops} ≥ 1")  # fmt: skip
    if a.pointer_size < 0 or a.expand_blocks < 0:
        raise ConfigError(f"agent.pointer_size={a.pointer_size} and agent.expand_blocks="
                          f"{a.expand_blocks} must be ≥ 0 (0: none)")  # fmt: skip
    if not a.pointer_weight >= 0:
        raise ConfigError(f"agent.pointer_weight={a.pointer_weight} must be ≥ 0")
    if a.pointer_cells not in POINTER_CELLS:
        raise ConfigError(f"agent.pointer_cells={a.pointer_cells!r}: choose one of {POINTER_CELLS}")
    if not a.query_weight >= 0 or (a.query_weight > 0 and a.pointer_size == 0):
        raise ConfigError(f"agent.query_weight={a.query_weight} must be ≥ 0 (> 0 needs "
                          "agent.pointer_size > 0: it trains the pointer's query)")  # fmt: skip
    if a.query_keys and (a.query_weight == 0 or a.row_target == "box"):
        raise ConfigError("agent.query_keys needs agent.query_weight > 0 and agent.row_target "
                          f"number or last_digit (got {a.query_weight}, {a.row_target!r})")  # fmt: skip
    if a.query_labels and a.query_weight == 0:
        raise ConfigError("agent.query_labels needs agent.query_weight > 0")
    if a.row_target not in ROW_TARGETS:
        raise ConfigError(f"agent.row_target={a.row_target!r}: choose one of {ROW_TARGETS}")
    if a.glyph_screens not in ("train", "fresh"):
        raise ConfigError(f"agent.glyph_screens={a.glyph_screens!r}: choose train or fresh")
    if not a.glyph_weight >= 0 or a.glyph_steps < 0 or a.glyph_slots < 1:
        raise ConfigError(f"agent.glyph_weight={a.glyph_weight} and agent.glyph_steps="
                          f"{a.glyph_steps} must be ≥ 0, agent.glyph_slots={a.glyph_slots} ≥ 1")  # fmt: skip


def uses_glyphs(a: AgentSection) -> bool:
    """Whether the run trains the glyph head (jointly or in a pretraining stage)."""
    return a.glyph_weight > 0 or a.glyph_steps > 0


__all__ = [
    "AgentRunConfig",
    "AgentSection",
    "check_agent_config",
    "uses_glyphs",
]
