"""``lmforge agent sft / eval / run`` through `lmforge.cli.main`: exit status, output, the
files written, clean errors."""

from __future__ import annotations

import json
import re

from PIL import Image

from lmforge.agents.action_grammar import instruction_spans
from lmforge.agents.thoughts import thought_regex
from lmforge.cli import main

SMALL = [
    "agent.train_tasks=2", "agent.eval_tasks=0", "agent.eval_grounding=0", "agent.max_steps=1",
    "agent.vision_hidden=32", "agent.hidden_size=32", "agent.num_layers=1", "agent.vocab_size=400",
    "agent.num_heads=2", "agent.num_kv_heads=1", "agent.vision_heads=2", "agent.vision_depth=1",
    "data.seq_len=256", "train.batch_size=2", "train.max_steps=2", "train.eval_every=0",
    "train.save_every=0", "log.progress=false", "log.plot=false", "optim.warmup_steps=1",
]  # fmt: skip


def test_sft_then_eval_and_run_the_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["agent", "sft", "--out", str(out), *SMALL]) == 0
    assert (out / "model" / "config.json").is_file() and (out / "metrics.jsonl").is_file()
    capsys.readouterr()
    summary = tmp_path / "eval.json"
    code = main(["agent", "eval", "--model", str(out / "model"), "--episodes", "1", "--max-steps", "1",
                 "--json", str(summary)])  # fmt: skip
    assert code == 0
    assert json.loads(summary.read_text())["invalid_action_rate"] == 0.0  # under the grammar
    assert capsys.readouterr().out.splitlines()[-1].startswith("all ")
    gif = tmp_path / "ep.gif"
    code = main(["agent", "run", "--model", str(out / "model"), "--task", "radio_apply",
                 "--max-steps", "1", "--gif", str(gif), "--typing", "free"])  # fmt: skip
    assert code == 0 and "step 1: Thought: " in capsys.readouterr().out
    assert Image.open(gif).n_frames >= 1
    code = main(["agent", "run", "--model", str(out / "model"), "--task", "radio_apply",
                 "--clicks", "grounded"])  # fmt: skip
    assert code == 2 and "has no pointer head" in capsys.readouterr().err
    code = main(["agent", "run", "--model", str(out / "model"), "--task",
                 "Tick Remember me, then press Sign in", "--max-steps", "1", "--thoughts", "expert"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0] == "task: Tick Remember me, then press Sign in"
    assert lines[1] == "window: login_remember's (Sign in); free text, so no success check"
    assert lines[2].startswith("step 1: Thought: ") and lines[-1] == "ended after 1 steps"
    thought = lines[2].removeprefix("step 1: Thought: ").split("\\nAction: ")[0]  # expert's
    spans = instruction_spans("Tick Remember me, then press Sign in")
    assert re.fullmatch(thought_regex(spans), thought), thought


def test_eval_and_run_the_expert(tmp_path, capsys):
    assert (
        main(["agent", "eval", "--expert", "--tasks", "heldout_template", "--episodes", "6"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["template", "episodes", "success", "steps", "ground", "invalid"]
    assert lines[-1].split()[:3] == ["all", "6", "1.000"]
    gif = tmp_path / "ep.gif"
    assert main(["agent", "run", "--expert", "--task", "list_open", "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("task: Find '") and "success after" in out
    assert Image.open(gif).n_frames >= 2
    # a template's own instruction, as free text, keeps its success check
    assert main(["agent", "run", "--expert", "--task", "Set Size to Large, then press OK",
                 "--seed", "5"]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines()[-1].startswith("success after")
    assert main(["agent", "run", "--expert", "--task", "tick everything"]) == 2
    assert "--expert follows a task's goal" in capsys.readouterr().err


def test_rl_needs_a_model(tmp_path, capsys):
    assert main(["agent", "rl", "--out", str(tmp_path / "rl")]) == 2
    assert "--model DIR" in capsys.readouterr().err
    assert main(["agent", "rl", "--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["agent", "rl", "--print-config", "rl.group_size=3"]) == 0
    assert "group_size: 3" in capsys.readouterr().out
    assert main(["agent", "rl", "--model", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds 0 --rounds 1 --jobs 1: each must be ≥ 1" in capsys.readouterr().err
    assert main(["agent", "rl", "--model", str(tmp_path), "--seeds", "2", "--jobs", "0"]) == 2
    assert "--jobs 0: each must be ≥ 1" in capsys.readouterr().err


def test_rl_seeds_train_a_soup(tmp_path, monkeypatch):
    """--seeds / --rounds / --jobs go to `train_agent_rl_soup` (tested in
    tests/agents/test_rl_soup.py)."""
    from lmforge.commands import agent

    calls = []
    monkeypatch.setattr(agent, "model_folder", lambda path: path)
    monkeypatch.setattr(agent, "train_agent_rl_soup",
                        lambda c, s, r, jobs: calls.append((c, s, r, jobs)))  # fmt: skip
    monkeypatch.setattr(agent, "train_agent_rl", lambda c: calls.append((c, 1, 1, 1)))
    assert main(["agent", "rl", "--model", str(tmp_path), "--seeds", "3", "--rounds", "2",
                 "--jobs", "2"]) == 0  # fmt: skip
    assert main(["agent", "rl", "--model", str(tmp_path)]) == 0
    assert [call[1:] for call in calls] == [(3, 2, 2), (1, 1, 1)]
    assert calls[0][0].model.init_from == str(tmp_path)


def test_clean_errors(tmp_path, capsys):
    assert main(["agent", "eval", "--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["agent", "eval", "--expert", "--episodes", "0"]) == 2
    assert "--episodes 0" in capsys.readouterr().err
    assert main(["agent", "eval", "--expert", "--clicks", "nearest"]) == 2
    assert "--clicks" in capsys.readouterr().err


def test_pointer_agent_sft_and_eval_score_grounding_by_pointing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ptr"
    assert main(["agent", "sft", "--out", str(out), *SMALL, "agent.pointer_size=16"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["pointer_head"] == {"size": 16}
    capsys.readouterr()
    summary = tmp_path / "eval.json"
    code = main(["agent", "eval", "--model", str(out / "model"), "--episodes", "1", "--max-steps",
                 "1", "--grounding", "6", "--json", str(summary)])  # fmt: skip
    assert code == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("grounding_accuracy=") and last.endswith("by the pointer)")
    figures = json.loads(summary.read_text())["grounding"]
    assert {"grounding_accuracy", "grounding_accuracy_text"} <= set(figures)
    assert all(0 <= v <= 1 for k, v in figures.items() if not k.endswith("_n"))
    # --text-clicks: the same pointer model writes its coordinates as text
    from lmforge.commands import agent as agent_command

    made, real = [], agent_command.VLMPolicy
    monkeypatch.setattr(
        agent_command, "VLMPolicy", lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    )
    for flag, pointing, clicks in (([], True, "grounded"), (["--text-clicks"], False, "grounded"),
                                   (["--clicks", "pointer"], True, "pointer")):  # fmt: skip
        assert main(["agent", "run", "--model", str(out / "model"), "--task", "list_open",
                     "--max-steps", "1", *flag]) == 0  # fmt: skip
        assert made[-1].pointer is pointing and made[-1].clicks == clicks
