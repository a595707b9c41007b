"""`lmforge agent sft / rl / eval / run`: a GUI agent (`lmforge.agents`) — supervised
fine-tuning of a VLM on the agent data (`lmforge.agents.sft.train_agent_sft`), online GRPO
in the environment (`lmforge.agents.rl.train_agent_rl`; with ``--seeds`` a soup of such runs,
`lmforge.agents.rl_soup`), held-out evaluation
(`lmforge.agents.rollout.evaluate_agent`), one recorded episode.

lmforge agent sft --config recipes/agent-tiny.yaml
lmforge agent sft --config recipes/agent-pointer.yaml     # grounding by a pointer head
lmforge agent rl --model runs/agent-tiny/model rl.group_size=4
lmforge agent rl --model runs/agent-tiny/model --seeds 3 --rounds 2   # WARP: merged seeds
lmforge agent rl --model runs/agent-tiny/model --seeds 3 --jobs 3     # … members side by side
lmforge agent eval --model runs/agent-tiny/model --tasks heldout --episodes 50
lmforge agent eval --model runs/agent-pointer/model --grounding 200  # + held-out grounding
lmforge agent run --model runs/agent-tiny/model --task list_open --gif episode.gif
lmforge agent run --model runs/agent-tiny/model --task "Tick Remember me, then press Sign in"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from lmforge.agents.grounded import CLICK_MODES
from lmforge.agents.grounding import grounding_eval
from lmforge.agents.policy import THOUGHT_MODES, TYPINGS, ExpertPolicy, VLMPolicy
from lmforge.agents.rl import train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig
from lmforge.agents.rl_soup import train_agent_rl_soup
from lmforge.agents.rollout import evaluate_agent, run_episodes, save_gif
from lmforge.agents.sft import train_agent_sft
from lmforge.agents.sft_config import AgentRunConfig
from lmforge.agents.task_clauses import CLAUSE_TEMPLATES
from lmforge.agents.tasks import BUILDERS, SPLITS, task_for_instruction
from lmforge.commands.common import (
    CommandError,
    add_recipe_arguments,
    model_folder,
    run_config,
    subparser,
)
from lmforge.io import atomic_write_json
from lmforge.models.hf import load_model
from lmforge.models.vlm import VisionLanguageModel
from lmforge.tokenizer import load_tokenizer
from lmforge.train.vlm_sft import image_processor_for

EXAMPLES = {
    "sft": (
        "  lmforge agent sft --config recipes/agent-tiny.yaml            # a tiny agent from scratch\n"
        "  lmforge agent sft agent.kinds=[perception,state_qa,grounding]  # a grounding stage\n"
        "  lmforge agent sft --model runs/agent-ground/model agent.kinds=[trajectory,reflection]\n"
        "  lmforge agent sft --config recipes/agent-pointer.yaml   # grounding by a pointer head\n"
    ),
    "rl": (
        "  lmforge agent rl --model runs/agent-tiny/model                  # GRPO on failed tasks\n"
        "  lmforge agent rl --model runs/agent-tiny/model rl.group_size=8 rl.format_weight=0.2\n"
        "  lmforge agent rl --model runs/agent-tiny/model --seeds 3 --rounds 2  # merged seeds\n"
        "  lmforge agent rl --model runs/agent-tiny/model --seeds 3 --jobs 3  # members side by side\n"
    ),
    "eval": (
        "  lmforge agent eval --model runs/agent-tiny/model --tasks heldout --episodes 50\n"
        "  lmforge agent eval --expert --tasks heldout_template     # the scripted expert (oracle)\n"
        "  lmforge agent eval --model runs/agent-pointer/model --grounding 200  # + held-out grounding\n"
    ),
    "run": (
        "  lmforge agent run --model runs/agent-tiny/model --task list_open --seed 3 --gif ep.gif\n"
        '  lmforge agent run --model runs/agent-tiny/model --task "Tick Remember me, then press Sign in"\n'
        '  lmforge agent run --expert --task "Set Size to Large, then press OK" --seed 5\n'
    ),
}

# the fixed and composed templates by name, the clause templates by their pattern
TEMPLATE_NAMES = (", ".join(sorted(set(BUILDERS) - set(CLAUSE_TEMPLATES)))
                  + ", or a clause template CONTAINER_ACTION[_ACTION] (plain_set_tick, "
                  "tab_choose_tick, …; lmforge.agents.task_clauses)")  # fmt: skip


def add_parser(subparsers: Any) -> None:
    group = subparsers.add_parser("agent", help="GUI agents: SFT, evaluation, episodes")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = subparser(actions, "sft", "agent SFT of a VLM on GUI perception, grounding, "
                  "trajectories and reflections, then held-out evaluation", EXAMPLES["sft"])  # fmt: skip
    add_recipe_arguments(p, "agent")
    p.add_argument(
        "--model", metavar="DIR", help="a qwen2_vl folder to start from (model.init_from)"
    )
    p.set_defaults(run=run_sft, command="agent sft")
    p = subparser(actions, "rl", "online GRPO in the GUI environment: episodes in groups, "
                  "task success + format reward", EXAMPLES["rl"])  # fmt: skip
    add_recipe_arguments(p, "agent-rl")
    p.add_argument("--model", metavar="DIR", help="the SFT agent's folder (model.init_from)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="> 1: N runs with their own seeds, weight-averaged (a soup, WARP) (1)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, metavar="R",
                   help="with --seeds: R rounds, each round's soup the next one's start (1)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="with --seeds: train J members at a time, each in its own process (1)")  # fmt: skip
    p.set_defaults(run=run_rl, command="agent rl")
    p = subparser(actions, "eval", "success rate, mean steps, grounding accuracy and invalid-action "
                  "rate on GUI tasks, per template", EXAMPLES["eval"])  # fmt: skip
    add_policy_arguments(p)
    p.add_argument("--tasks", choices=SPLITS, default="heldout", help="task split (heldout)")
    p.add_argument("--episodes", type=int, default=50, metavar="N", help="tasks to run (50)")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--grounding", type=int, default=0, metavar="N",
                   help="also score N held-out-layout grounding questions, by the pointer head "
                   "when the model has one (0)")  # fmt: skip
    p.set_defaults(run=run_eval, command="agent eval")
    p = subparser(actions, "run", "one episode: the responses step by step, optionally a GIF",
                  EXAMPLES["run"])  # fmt: skip
    add_policy_arguments(p)
    p.add_argument("--task", required=True, metavar="TEXT",
                   help="an instruction in free text, or a task template name: "
                   + TEMPLATE_NAMES)  # fmt: skip
    p.add_argument("--split", choices=SPLITS, default="heldout", help="layouts to draw from")
    p.add_argument("--gif", metavar="FILE", help="write the episode as an animated GIF")
    p.set_defaults(run=run_episode, command="agent run")


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--model", metavar="DIR", help="an agent's qwen2_vl folder (agent sft's model/)"
    )
    who.add_argument("--expert", action="store_true", help="the scripted expert instead (oracle)")
    p.add_argument("--seed", type=int, default=0, help="first task seed (0)")
    p.add_argument("--history", type=int, default=2, metavar="K", help="screenshots shown (2)")
    p.add_argument("--max-steps", type=int, default=15, metavar="N", help="per episode (15)")
    p.add_argument("--screen", type=int, default=128, metavar="PX", help="screen side (128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (0)")
    p.add_argument("--no-grammar", action="store_true", help="decode without the action grammar")
    p.add_argument("--typing", choices=TYPINGS, default="instruction",
                   help="under the grammar, what type() may write: spans of the instruction "
                   "(default) or any string (free)")  # fmt: skip
    p.add_argument("--thoughts", choices=THOUGHT_MODES, default="expert",
                   help="under the grammar, the thought: one of the expert's sentences with the "
                   "instruction's words in its slots (default) or free text (free)")  # fmt: skip
    p.add_argument("--clicks", choices=CLICK_MODES, default=None,
                   help="a pointer model's clicks: from the grounding question about the element "
                   "the thought names (grounded, the default) or pointed from the episode's "
                   "context (pointer)")  # fmt: skip
    p.add_argument("--text-clicks", action="store_true",
                   help="a pointer model writes its click coordinates as text instead of pointing")  # fmt: skip


def policy_from_args(args: argparse.Namespace):
    if args.expert:
        return ExpertPolicy()
    folder = model_folder(args.model)
    model = load_model(folder, dtype=torch.float32)
    if not isinstance(model, VisionLanguageModel):
        raise CommandError(f"--model {args.model}: not a vision-language (qwen2_vl) folder")
    if args.history < 1:
        raise CommandError(f"--history {args.history}: show at least 1 screenshot")
    if args.clicks == "grounded" and getattr(model, "pointer_head", None) is None:
        raise CommandError(f"--clicks grounded: {args.model} has no pointer head to point with")
    clicks = args.clicks or "grounded"  # (a model without a head writes its clicks as text)
    return VLMPolicy(model, load_tokenizer(folder), image_processor_for(model, args.screen),
                     (args.screen, args.screen), args.history, temperature=args.temperature,
                     constrained=not args.no_grammar, seed=args.seed, typing=args.typing,
                     thoughts=args.thoughts, clicks=clicks,
                     pointer=False if args.text_clicks else None)  # fmt: skip


def run_sft(args: argparse.Namespace) -> int:
    config = run_config(args, AgentRunConfig)
    if config.model.init_from:
        model_folder(config.model.init_from)
    train_agent_sft(config)
    return 0


def run_rl(args: argparse.Namespace) -> int:
    config = run_config(args, AgentRLConfig)
    if not config.model.init_from:
        raise CommandError("give --model DIR: the SFT agent to start RL from")
    if args.seeds < 1 or args.rounds < 1 or args.jobs < 1:
        raise CommandError(f"--seeds {args.seeds} --rounds {args.rounds} --jobs {args.jobs}: "
                           "each must be ≥ 1")  # fmt: skip
    model_folder(config.model.init_from)
    if args.seeds > 1 or args.rounds > 1:
        train_agent_rl_soup(config, args.seeds, args.rounds, jobs=args.jobs)
    else:
        train_agent_rl(config)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CommandError(f"--episodes {args.episodes}: run at least one")
    policy = policy_from_args(args)
    summary, _ = evaluate_agent(policy, args.tasks, args.episodes, args.seed, args.max_steps,
                                (args.screen, args.screen))  # fmt: skip
    print(
        f"{'template':<18} {'episodes':>8} {'success':>8} {'steps':>6} {'ground':>7} {'invalid':>8}"
    )
    rows = [*summary["per_template"].items(), ("all", summary)]
    for name, s in rows:
        print(f"{name:<18} {s['episodes']:>8} {s['success_rate']:>8.3f} {s['mean_steps']:>6.2f} "
              f"{s['grounding_accuracy']:>7.3f} {s['invalid_action_rate']:>8.3f}")  # fmt: skip
    if args.grounding > 0 and not args.expert:
        figures = grounding_eval(policy.model, policy.tokenizer, policy.processor, args.grounding,
                                 args.seed + 7919, args.screen, args.history)  # fmt: skip
        print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()) + f" ({args.grounding} "
              "held-out-layout questions" + (", by the pointer)" if "grounding_accuracy_text" in
                                             figures else ")"))  # fmt: skip
        summary["grounding"] = figures
    if args.json:
        atomic_write_json(Path(args.json), summary)
    return 0


def run_episode(args: argparse.Namespace) -> int:
    try:
        task = task_for_instruction(args.task, args.seed, args.split, args.screen, args.screen)
    except ValueError as exc:
        raise CommandError(f"--task: {exc}") from exc
    free = task.meta.get("free_text", False)
    if free and args.expert:
        raise CommandError(f"--expert follows a task's goal: give a template name ({TEMPLATE_NAMES}) "
                           "or a template's exact instruction, not free text")  # fmt: skip
    policy = policy_from_args(args)
    run = run_episodes(policy, [task], args.max_steps)[0]
    print(f"task: {task.instruction}")
    if free:
        print(f"window: {task.template}'s ({task.window.title}); free text, so no success check")
    for i, (text, step) in enumerate(zip(run.responses, run.record.steps, strict=True), 1):
        mark = "" if step.valid else "   [invalid]"
        print(f"step {i}: " + json.dumps(text)[1:-1] + mark)
    if free:
        print(f"ended after {len(run.record.steps)} steps")
    else:
        print(
            "success" if run.record.success else "failure", f"after {len(run.record.steps)} steps"
        )
    if args.gif:
        print(f"gif: {save_gif(run, args.gif)}")
    return 0
