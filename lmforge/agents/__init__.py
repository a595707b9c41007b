"""GUI agents, UI-TARS style: an offline, deterministic GUI environment rendered with Pillow,
the unified action language with a parser and a grammar for constrained decoding, a scripted
expert, the perception / grounding / trajectory / reflection data, metrics, policies,
evaluation episodes, agent SFT and online RL.

| module | what |
|---|---|
| `widgets` | widget tree (buttons, fields, checkboxes, radios, dropdowns, lists, panes, tabs, dialogs) with screen boxes, hit testing (modal dialog, overlays), values |
| `layout` | column layout: every widget's box from margins, row height, label column; button rows, tab pages, pane offsets, dropdown overlays, dialogs |
| `render` | deterministic Pillow screenshots of a window with themes and Pillow's bundled font |
| `task_templates` | the task templates (instruction, widgets, goal, final event, buttons from a random stream): 7 training, 3 held out, 5 training-only composed ones |
| `task_clauses` | clause tasks (training-only): a container (none, tab, pane, message) × one or two action clauses (tick, set, choose, type, change), never a held-out template's widget kinds |
| `tasks` | tasks from the templates with randomised layouts and programmatic success checks; train / held-out layouts and templates |
| `env` | gymnasium `GUIEnv` (screenshot observations, text actions) and the action executor; text render |
| `actions` | UI-TARS's unified action space as dataclasses; exact text form, formatter, parser with clear errors |
| `action_grammar` | regex of `Thought: … Action: …` (on-screen coordinates) for the engine's structured decoding |
| `thoughts` | the expert's thought sentences (templates with slots) and their regex, slots held to the instruction |
| `expert` | scripted closed-loop expert with a thought per step and its target box (optionally dragging far rows into view) |
| `agent_data` | perception, state QA, grounding, expert trajectories (last k screenshots), reflection pairs as VLM SFT examples; JSONL io |
| `random_screens` | random windows (widgets, order, labels, geometry, theme, state) for perception and grounding no layout prior answers |
| `metrics` | success rate, mean steps, grounding accuracy, invalid-action rate, per template |
| `policy` | policies in `GUIEnv`: a VLM decoding through the engine with the last k screenshots (optionally under the action grammar), the expert as an oracle |
| `rollout` | episodes side by side, recorded for the metrics (the expert's target box per step), held-out evaluation, GIFs |
| `sft` | agent SFT through the one Trainer (a chosen mix of the data kinds, tiny VLM from scratch or a qwen2_vl folder), held-out grounding and episode figures |
| `sft_config` | the agent SFT run's config (`AgentSection`, `AgentRunConfig`) and its range checks, each error naming its field |
| `grounded` | grounded clicks: a pointing action's point from the grounding question about the element its thought names (planner / grounder in one model) |
| `grounding` | held-out grounding: clicks by the pointer (with an optional zoomed second look) or by text, scored in the target box, split into list rows and the rest |
| `guidance` | expert-guided groups for RL: the scripted expert's response, written as the policy would, joins a state no sampled response got right (mixed-policy GRPO, LUFFY) |
| `glyph` | dense glyph (OCR) objective: per-token character targets from the renderer's layout, the loss wrapper, fresh-screen batches and an encoder-only glyph stage |
| `rl` | online GRPO in `GUIEnv`, groups per task (success + format reward) or per state, the failed tasks first; packed multimodal surrogate through the one Trainer |
| `rl_config` | the agent RL run's config (`AgentRLSection`, `AgentRLConfig`) and its range checks, each error naming its field |
| `rl_examples` | the examples RL trains on: each step's decoded tokens and pointer choices, and (`rl.train_grounded`) each sampled grounded click in its grounding question |
| `rl_tasks` | what RL practises on: a fresh pool's failed tasks, and start states from the scripted expert's episode (reverse curriculum) |
| `rl_objective` | the agent's GRPO objective on a packed rollout: clipped surrogate over sampled tokens and pointer choices, optional k3 KL to the SFT policy |
| `rl_screens` | a grounding stream beside agent RL's episodes: grounding bandits on fresh random windows, K pointer samples per question rewarded inside the element |
| `rl_states` | state groups beside agent RL's episode groups: a few pool tasks per rollout, each response scored for being the expert's move in its state, advantages normalised within the state |
| `rl_select` | checkpoint selection for agent RL: the policy scored greedily on fresh validation tasks of the pool's split every k steps, the best-scoring weights (the start included) exported |
| `rl_soup` | agent RL over several seeds, merged: rounds of GRPO runs with their own seeds (`jobs` > 1: side by side, one spawned process each, the same files), each round's weight average (WARP) the next one's start |
| `state_groups` | groups per state for RL: responses sampled in each state of the agent's own episode, scored by a step reward (the expert's move there, + format) |
"""

from lmforge.agents.action_grammar import action_regex, response_regex
from lmforge.agents.actions import (
    Action,
    ActionParseError,
    AgentResponse,
    format_action,
    format_response,
    parse_action,
    parse_response,
)
from lmforge.agents.agent_data import make_agent_dataset
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import expert_step
from lmforge.agents.metrics import summarize
from lmforge.agents.tasks import Task, sample_task, task_success

__all__ = [
    "Action",
    "ActionParseError",
    "AgentResponse",
    "GUIEnv",
    "Task",
    "action_regex",
    "expert_step",
    "format_action",
    "format_response",
    "make_agent_dataset",
    "parse_action",
    "parse_response",
    "response_regex",
    "sample_task",
    "summarize",
    "task_success",
]
