"""The GUI-agent pipeline end to end on a tiny model: grounding SFT, trajectory SFT, online
GRPO — held-out success after SFT and after RL, held-out grounding accuracy.

Stages (each a run folder under ``--out``; a finished stage is reused, so a rerun resumes
the pipeline):

1. ``ground``: a Qwen2-VL-shaped model from scratch (`lmforge/recipes/agent-tiny.yaml`) on
   grounding clicks (`lmforge.agents.sft.train_agent_sft`), every element of a screen asked
   in one chat (``--grounding-turns``), 8-px image tokens (``--merge-size 1``; the widgets'
   rows are ~12 px, a 2×2-merged token 16 px); grounding accuracy on held-out layouts. With
   a pointer head (``--pointer-size 64``, the default; GUI-Actor, `lmforge.models.
   pointer_head`) a click's point comes from the head pointing at an image token, not from
   the coordinates' text, and grounding accuracy is scored from the pointer's clicks
   (``--pointer-size 0``: text coordinates, as before); the later stages keep the head;
2. ``sft``: from ``ground``, trajectories (the last ``--history`` screenshots + the previous
   actions, a thought per step) and reflections, with grounding mixed in; held-out episode
   success (greedy, grammar);
3. ``rl``: from ``sft``, GRPO in the environment on the training tasks it fails
   (`lmforge.agents.rl.train_agent_rl`, `lmforge/recipes/agent-rl-tiny.yaml`); held-out
   episode success again. With ``--rl-seeds N`` (> 1) or ``--rl-rounds R`` the stage is a
   soup (`lmforge.agents.rl_soup`, WARP): R rounds of N runs with their own seeds, each
   round's weight average the next one's start (members under ``rl/round-R/seed-S``).

The defaults are the recorded pipeline (BENCHMARKS.md, "GUI agent: soups of RL runs",
session 29): the grounding stage of ``agent-match.yaml``, 2,000 trajectory-SFT steps on 300
tasks (pointer targets on the row's number and on the cells whose centre lies in the box; the
grounding stage's 2 language-model layers grown to 4 by block expansion, ``agent.expand_blocks=1``
— a zero-output layer after each, LLaMA Pro — and 200 screens of open lists whose options are
asked, ``agent.option_screens=200``), then the RL recipe run
with five seeds and averaged (``--rl-seeds 5``); episodes are
decoded under the action grammar with ``type()`` held to the instruction's spans
(``agent.typing`` / ``rl.typing``) and the thought to the expert's sentences
(``agent.thoughts`` / ``rl.thoughts``, `lmforge.agents.thoughts`), and a click's point is the
pointer's answer to the grounding question about the element the thought names (``agent.clicks``
/ ``rl.clicks`` = ``grounded``, `lmforge.agents.grounded`; ``pointer``: pointed from the
episode's own context, as before session 22); 400 held-out episodes (at 100 a success rate's
standard error is ~5 points) and 200 held-out grounding questions per evaluation.
The recorded RESULT lines ran on cached stages (``runs/pipe/ground``: grounding 0.935;
``runs/o4/sft``: 0.495 held out); from nothing on a fresh checkout the defaults gave grounding
0.950 and an SFT agent of 0.445 (session 31), so a run from nothing is another pipeline; its
soup of three (session 32) gave ``RESULT gui_agent sft_success=0.445 rl_success=0.502
grounding_acc=0.950`` (+5.75). Rounds past the first (``--rl-rounds 2``) from one member lost
ground there (0.5025 → 0.385), so the default stays one round. Since session 33 the RL
recipe holds a KL penalty to the SFT agent (``rl.kl_coef=0.05``): its three seeds from that SFT
agent, trained by the soup's code path and averaged, give 0.515 (+7.0; members 0.5175 / 0.515 /
0.505). Since session 34 it also draws the grounding bandit's other points at temperature 2
(``rl.ground_temperature=2.0``): the three seeds give 0.525 / 0.5225 / 0.5025, their soup 0.535
(+9.0).
Since session 37 the recipe learns at ``optim.lr=1e-4`` and leaves list_open out of the RL pool
(``rl.templates``), and the default soup has five members: 0.52 / 0.54 / 0.5175 / 0.5375 / 0.5275,
their soup 0.55 (+10.5; the three first seeds' soup 0.54; on 400 other held-out tasks,
``train.seed=5000``'s, 0.49 → 0.575, +8.5; on a third, ``train.seed=10000``'s, 0.4275 → 0.535,
+10.75; over the 1,200 episodes +9.9 — session 38).
Session 39: ``--sft agent.random_screens=400`` (grounding on random windows kept in the
trajectory stage) gives an SFT agent of 0.5175 on the bench's tasks (0.454 → 0.52 over the
1,200); the RL stage from it is not yet measured.

A finished stage made with the other ``--pointer-size`` choice is refused (use another
``--out``). CPU minutes are the process's CPU time, so the figure does not depend on how busy the
machine is.

    python bench/gui_agent.py [--ground-steps 3000] [--sft-steps 2000] [--rl-steps N] [--episodes 400]
        [--rl-seeds 5] [--rl-jobs 1] [--rl-rounds 1] [--ground-recipe agent-match.yaml] [--ground k=v …] [--sft k=v …] [--rl k=v …]

``--ground-recipe`` is the grounding stage's recipe under `lmforge/recipes/` (``agent-match.yaml``:
the glyph stage, the digit target and the number head, whose train-only heads stay in that
stage's folder; ``agent-tiny.yaml``: plain grounding); ``--ground/--sft/--rl k=v`` are
per-stage config overrides (after the defaults; ``--rl-steps`` defaults to the RL recipe's).

Last line: ``RESULT gui_agent sft_success=<a> rl_success=<b> grounding_acc=<g> [gain_low=<l>
gain_high=<h>] minutes=<m>`` (targets: g ≥ 0.9 on held-out layouts; b − a ≥ 0.10). ``a`` is the
SFT agent evaluated by the RL stage (``rl/agent_eval_start.json``: the same held-out tasks,
decoded as the RL stage's evaluation decodes them — ``rl.typing``, ``rl.thoughts``,
``rl.clicks``), so a and b differ only by RL; [l, h] is the 95 % paired-bootstrap interval of
b − a over those tasks (`lmforge.agents.metrics.paired_gain`; printed when both evaluations
hold their per-episode ``successes``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmforge.agents.metrics import paired_gain
from lmforge.agents.rl import train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig
from lmforge.agents.rl_soup import train_agent_rl_soup
from lmforge.agents.sft import train_agent_sft
from lmforge.agents.sft_config import AgentRunConfig
from lmforge.train.config import load_config

RECIPES = Path(__file__).resolve().parents[1] / "lmforge" / "recipes"
# the trajectory stage's settings of the recorded pipeline (runs/pipe, session 14; the
# expanded block and the option screens: runs/o4, session 26)
SFT_DEFAULTS = ["agent.row_target=number", "agent.train_tasks=300", "agent.pointer_cells=centre",
                "agent.expand_blocks=1", "agent.option_screens=200"]  # fmt: skip


def stage(out: Path, name: str, run, pointer: bool | None = None) -> dict:
    """The stage's held-out report, training it unless its folder already holds one (made
    with the same ``pointer`` choice, a pointer head or text coordinates, unless None)."""
    report, config = out / name / "agent_eval.json", out / name / "model" / "config.json"
    if not (report.is_file() and config.is_file()):
        run()
    elif pointer is not None and ("pointer_head" in json.loads(config.read_text())) != pointer:
        raise SystemExit(f"{out / name} was made {'without' if pointer else 'with'} a pointer head; "
                         "give another --out")  # fmt: skip
    return json.loads(report.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-gui-agent")
    ap.add_argument("--ground-steps", type=int, default=3000)
    ap.add_argument("--ground-recipe", default="agent-match.yaml",
                    help="the grounding stage's recipe (a file in lmforge/recipes/)")  # fmt: skip
    ap.add_argument("--sft-steps", type=int, default=2000)
    ap.add_argument("--rl-steps", type=int, default=None, help="default: the RL recipe's")
    ap.add_argument("--rl-seeds", type=int, default=5,
                    help="> 1: the RL stage is a soup of this many seeds' runs (rl_soup); "
                    "1: one run")  # fmt: skip
    ap.add_argument("--rl-jobs", type=int, default=1,
                    help="soup members trained at a time, each in its own process (CPU "
                    "minutes then count this process only)")  # fmt: skip
    ap.add_argument("--rl-rounds", type=int, default=1,
                    help="rounds of the soup, each from the last one's average")  # fmt: skip
    ap.add_argument("--tasks", type=int, default=None,
                    help="expert episodes for the data (default: each stage's recipe)")  # fmt: skip
    ap.add_argument("--episodes", type=int, default=400, help="held-out episodes per evaluation")
    ap.add_argument("--grounding", type=int, default=200, help="held-out grounding examples")
    ap.add_argument("--history", type=int, default=2, help="screenshots an agent step sees")
    ap.add_argument("--merge-size", type=int, default=1, help="patches per side of an image token")
    ap.add_argument("--grounding-turns", type=int, default=8, help="grounding questions per chat")
    ap.add_argument("--max-steps", type=int, default=15, help="per held-out episode")
    ap.add_argument("--random-screens", type=int, default=None,
                    help="random-widget screens added to the grounding stage's data "
                    "(default: the recipe's)")  # fmt: skip
    ap.add_argument("--pointer-size", type=int, default=64,
                    help="width of the pointer head that points clicks (0: text coordinates)")  # fmt: skip
    ap.add_argument("--pointer-weight", type=float, default=1.0,
                    help="the pointer loss's weight against the LM loss")  # fmt: skip
    for name in ("ground", "sft", "rl"):
        ap.add_argument(f"--{name}", nargs="*", default=[], metavar="K=V",
                        help=f"config overrides of the {name} stage")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    common = ["train.resume=false", "log.progress=false", f"agent.history={args.history}",
              f"agent.merge_size={args.merge_size}",
              "agent.grounding_count=0", f"agent.grounding_turns={args.grounding_turns}",
              f"agent.max_steps={args.max_steps}", "agent.eval_split=heldout",
              f"agent.pointer_size={args.pointer_size}",
              f"agent.pointer_weight={args.pointer_weight}"]  # fmt: skip
    if args.tasks is not None:
        common.append(f"agent.train_tasks={args.tasks}")
    pointer = args.pointer_size > 0
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def ground() -> None:
        overrides = [f"out_dir={out / 'ground'}", f"train.max_steps={args.ground_steps}", *common,
                     "agent.kinds=[grounding]", "agent.eval_tasks=0",
                     f"agent.eval_grounding={args.grounding}"]  # fmt: skip
        if args.random_screens is not None:
            overrides.append(f"agent.random_screens={args.random_screens}")
        overrides += args.ground
        train_agent_sft(load_config(RECIPES / args.ground_recipe, overrides, AgentRunConfig))

    def sft() -> None:
        overrides = [f"out_dir={out / 'sft'}", f"train.max_steps={args.sft_steps}", *SFT_DEFAULTS,
                     *common,
                     f"model.init_from={out / 'ground' / 'model'}",
                     "agent.kinds=[grounding,trajectory,reflection]",
                     f"agent.eval_tasks={args.episodes}", f"agent.eval_grounding={args.grounding}",
                     *args.sft]  # fmt: skip
        train_agent_sft(load_config(RECIPES / "agent-tiny.yaml", overrides, AgentRunConfig))

    def rl() -> None:
        steps = [] if args.rl_steps is None else [f"train.max_steps={args.rl_steps}"]
        overrides = [f"out_dir={out / 'rl'}", *steps, "train.resume=false",
                     "log.progress=false", f"model.init_from={out / 'sft' / 'model'}",
                     f"rl.eval_tasks={args.episodes}", f"rl.history={args.history}",
                     f"rl.eval_max_steps={args.max_steps}", *args.rl]  # fmt: skip
        config = load_config(RECIPES / "agent-rl-tiny.yaml", overrides, AgentRLConfig)
        if args.rl_seeds > 1 or args.rl_rounds > 1:
            train_agent_rl_soup(config, args.rl_seeds, args.rl_rounds, jobs=args.rl_jobs)
        else:
            train_agent_rl(config)

    ground_report = stage(out, "ground", ground, pointer)
    grounding = ground_report["grounding_accuracy"]
    after_sft = stage(out, "sft", sft, pointer)
    after_rl = stage(out, "rl", rl)
    minutes = (time.process_time() - cpu0) / 60
    wall = (time.perf_counter() - wall0) / 60
    start = out / "rl" / "agent_eval_start.json"  # the SFT agent under the RL stage's evaluation
    before = json.loads(start.read_text()) if start.is_file() else after_sft
    a = before["episodes"]["success_rate"]
    b = after_rl["episodes"]["success_rate"]
    print(f"held-out success of the sft agent in its own stage: "
          f"{after_sft['episodes']['success_rate']:.3f}; under the rl stage's decoding: {a:.3f}")  # fmt: skip
    for name, report in (("sft", before), ("rl", after_rl)):
        per = " ".join(
            f"{k}={v['success_rate']:.2f}" for k, v in report["episodes"]["per_template"].items()
        )
        print(f"held-out success after {name}: {per}")
    if pointer:
        print(f"grounding by the pointer: {grounding:.3f}, its text answers "
              f"{ground_report.get('grounding_accuracy_text', float('nan')):.3f}")  # fmt: skip
    print(f"grounding after sft: {after_sft.get('grounding_accuracy', float('nan')):.3f}; "
          f"CPU {minutes:.1f} min, wall {wall:.1f} min (this invocation)")  # fmt: skip
    paired = ""
    if "successes" in before["episodes"] and "successes" in after_rl["episodes"]:
        g = paired_gain(before["episodes"]["successes"], after_rl["episodes"]["successes"])
        print(f"rl - sft on the same {len(before['episodes']['successes'])} episodes: "
              f"{g['gain']:+.4f}, 95 % paired-bootstrap interval [{g['low']:+.4f}, "
              f"{g['high']:+.4f}]; won {g['won']}, lost {g['lost']}")  # fmt: skip
        paired = f"gain_low={g['low']:.4f} gain_high={g['high']:.4f} "
    print(f"RESULT gui_agent sft_success={a:.3f} rl_success={b:.3f} grounding_acc={grounding:.3f} "
          f"{paired}minutes={minutes:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
