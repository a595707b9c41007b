"""Agent RL over several seeds, merged: WARP's rounds of GRPO runs and weight averaging.

Each round trains ``seeds`` GRPO runs (`lmforge.agents.rl.train_agent_rl`, each with its own
``train.seed`` and so its own task pool, rollouts and sampling) from the round's start, and
averages their weights into a soup (`lmforge.models.average`, θ = (1/n) Σ_i θ_i — WARP,
Ramé et al. 2024, §3.2: policies RL-trained from one start with different seeds merge into
one that scores above each); the soup starts the next round (WARP's iterated merges, §3.4 —
measured on the tiny GUI agent, a second round of the recipe lost ground unless
``rl.kl_coef`` > 0 held it near its start: BENCHMARKS.md, issue 18, session 32).
The last soup is ``out_dir/model``, evaluated on the held-out episodes beside the starting
agent under the same evaluation (`lmforge.agents.rl.rl_eval_section`, ``train.seed``'s
episodes), as one RL run reports.

    config = load_config("recipes/agent-rl-tiny.yaml", ["model.init_from=runs/sft/model"],
                         AgentRLConfig)
    summary = train_agent_rl_soup(config, seeds=3, rounds=2)

Layout: ``out_dir/round-R/seed-S/`` (each member's run folder; a finished member has
``member.json`` and is not trained again, so a killed soup resumes at the member it was in),
``out_dir/round-R/soup/`` (the round's merged agent), ``out_dir/model/``,
``agent_eval.json``, ``agent_eval_start.json`` and ``soup.json`` (the members, per round).

With ``jobs`` > 1 a round's unfinished members train side by side, each in its own spawned
process (`train_member`; ``train.cpu_threads`` threads each): the members are the same files
as one after another (each run depends only on its config and seed); each process holds its
own model and rollouts (≈ 5–6 GB for the tiny agent recipe), so ``jobs`` is bounded by memory
as well as cores.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lmforge.agents.rl import rl_eval_section, train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig, check_agent_rl_config
from lmforge.agents.sft import evaluate_agent_model
from lmforge.config import ConfigError
from lmforge.io import atomic_write_json, read_json
from lmforge.models.average import load_averaged
from lmforge.models.hf import load_model, save_model
from lmforge.tokenizer import load_tokenizer
from lmforge.train.vlm_sft import image_processor_for
from lmforge.vision.processor import save_preprocessor_config


def member_config(
    config: AgentRLConfig, start: str, round_: int, k: int, seeds: int
) -> AgentRLConfig:
    """Member ``k`` of round ``round_``: its own folder, ``train.seed`` (the run's seed
    + round × seeds + k), the round's start, and no held-out evaluation of its own."""
    member = copy.deepcopy(config)
    member.out_dir = str(Path(config.out_dir) / f"round-{round_}" / f"seed-{k}")
    member.train.seed = config.train.seed + round_ * seeds + k
    member.model.init_from = start
    member.rl.eval_tasks = 0
    return member


def save_agent(model: Any, source: Path, folder: Path, screen: int) -> None:
    """``model`` as an agent folder: weights, ``source``'s tokenizer, the image processor."""
    save_model(model, folder, tokenizer=load_tokenizer(source))
    save_preprocessor_config(image_processor_for(model, screen).config, folder)


def train_member(member: AgentRLConfig, console: Console | None = None) -> str:
    """Train one member (`member_config`) and mark it finished (``member.json``: its seed,
    start and model folder, written last and atomically); returns the model folder."""
    summary = train_agent_rl(member, console=console)
    atomic_write_json(Path(member.out_dir) / "member.json",
                      {"seed": member.train.seed, "start": member.model.init_from,
                       "model_dir": summary["model_dir"]})  # fmt: skip
    return summary["model_dir"]


def train_round(members: list[AgentRLConfig], jobs: int, console: Console) -> list[Path]:
    """The round's member folders, training those without ``member.json``: in this process
    one after another, or (``jobs`` > 1) up to ``jobs`` at once in spawned processes."""
    todo = [m for m in members if not (Path(m.out_dir) / "member.json").is_file()]
    for m in todo:
        console.print(f"[bold]soup[/]: seed {m.train.seed} from {m.model.init_from}"
                      + (f" (one of {len(todo)} side by side)" if jobs > 1 else ""))  # fmt: skip
    if jobs > 1 and len(todo) > 1:
        spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=spawn) as pool:
            for future in [pool.submit(train_member, m) for m in todo]:
                future.result()  # re-raises a member's failure here
    else:
        for m in todo:
            train_member(m, console)
    return [Path(read_json(Path(m.out_dir) / "member.json")["model_dir"]) for m in members]


def train_agent_rl_soup(
    config: AgentRLConfig,
    seeds: int = 3,
    rounds: int = 1,
    console: Console | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """``rounds`` rounds of ``seeds`` RL runs, each round's soup the next one's start; writes
    ``out_dir/model`` (the last soup) and its held-out figures beside the starting agent's.
    ``jobs`` > 1: a round's members train that many at a time, each in its own process."""
    check_agent_rl_config(config)
    if seeds < 1 or rounds < 1 or jobs < 1:
        raise ConfigError(f"seeds={seeds}, rounds={rounds}, jobs={jobs}: each must be ≥ 1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a soup of RL runs is single-process: run each seed under torchrun as "
                          "its own `lmforge agent rl`, then `lmforge merge --average`")  # fmt: skip
    if not config.model.init_from:
        raise ConfigError("model.init_from: give the SFT agent's folder to start RL from")
    console = console or Console()
    out, r = Path(config.out_dir), config.rl
    first = Path(config.model.init_from)
    start = first
    members: list[list[str]] = []
    for round_ in range(rounds):
        console.print(f"[bold]soup[/]: round {round_ + 1}/{rounds}, {seeds} members from {start}")
        configs = [member_config(config, str(start), round_, k, seeds) for k in range(seeds)]
        folders = train_round(configs, jobs, console)
        model = load_averaged(folders)
        start = out / f"round-{round_}" / "soup"
        save_agent(model, folders[0], start, r.screen)
        members.append([str(f) for f in folders])
    save_agent(model, start, out / "model", r.screen)  # the last soup, still in memory
    tokenizer = load_tokenizer(start)
    section = rl_eval_section(r)
    summary: dict[str, Any] = {"model_dir": str(out / "model"), "members": members}
    atomic_write_json(out / "soup.json", summary)
    if r.eval_tasks:
        begin = out / "agent_eval_start.json"
        if not begin.is_file():
            base = load_model(first, dtype=torch.float32)
            atomic_write_json(begin, evaluate_agent_model(
                base, load_tokenizer(first), image_processor_for(base, r.screen), section,
                config.train.seed))  # fmt: skip
        summary["agent_eval_start"] = read_json(begin)
        summary["agent_eval"] = evaluate_agent_model(
            model, tokenizer, image_processor_for(model, r.screen), section, config.train.seed
        )
        atomic_write_json(out / "agent_eval.json", summary["agent_eval"])
        before, after = (
            summary[k]["episodes"]["success_rate"] for k in ("agent_eval_start", "agent_eval")
        )
        console.print(f"[bold]soup[/] of {rounds} × {seeds} runs: held-out success {before:.3f} → "
                      f"{after:.3f} ({r.eval_tasks} {r.eval_split} episodes) in {out / 'model'}")  # fmt: skip
    return summary


__all__ = ["member_config", "save_agent", "train_agent_rl_soup", "train_member", "train_round"]
