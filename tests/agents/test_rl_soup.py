"""A soup of agent RL runs (`lmforge.agents.rl_soup`): members per round with their own seeds
and folders, each round's soup the weight average of its members (θ = (1/n) Σ θ_i, checked
against the members' files) and the next round's start; a rerun trains nothing again."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge.agents import rl_soup
from lmforge.agents.rl_config import AgentRLConfig
from lmforge.agents.rl_soup import member_config, train_agent_rl_soup
from lmforge.config import ConfigError
from lmforge.models.hf import save_model
from lmforge.train.config import load_config
from lmforge.vision.processor import save_preprocessor_config

TINY = ["rl.pool_tasks=2", "rl.failed_only=false", "rl.tasks_per_rollout=1", "rl.group_size=2",
        "rl.max_steps=2", "rl.eval_tasks=1", "rl.eval_max_steps=1", "rl.max_new_tokens=48",
        "train.max_steps=1", "train.batch_size=1", "train.eval_every=0", "train.save_every=0",
        "log.progress=false", "log.plot=false", "optim.warmup_steps=1", "data.seq_len=256",
        "train.seed=5"]  # fmt: skip


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory, agent_vlm_factory):
    model, tok, processor, _ = agent_vlm_factory(4, 2)
    folder = tmp_path_factory.mktemp("agent") / "model"
    save_model(model, folder, tokenizer=tok)
    save_preprocessor_config(processor.config, folder)
    return folder


def test_member_configs_have_their_own_seed_folder_and_start(tmp_path):
    config = load_config(None, [f"out_dir={tmp_path}", "train.seed=5"], AgentRLConfig)
    seeds = {(r, k): member_config(config, "s", r, k, 3) for r in range(2) for k in range(3)}
    assert sorted(m.train.seed for m in seeds.values()) == list(range(5, 11))
    assert seeds[1, 2].out_dir == str(tmp_path / "round-1" / "seed-2")
    assert seeds[0, 0].model.init_from == "s" and seeds[0, 0].rl.eval_tasks == 0
    assert config.train.seed == 5 and config.rl.eval_tasks != 0  # the run's config untouched


def test_soup_rounds_average_their_members_and_resume(tmp_path, agent_dir, monkeypatch):
    out = tmp_path / "soup"
    config = load_config(None, [f"out_dir={out}", f"model.init_from={agent_dir}", *TINY],
                         AgentRLConfig)  # fmt: skip
    summary = train_agent_rl_soup(config, seeds=2, rounds=2)
    marks = [[json.loads((out / f"round-{r}" / f"seed-{k}" / "member.json").read_text())
              for k in range(2)] for r in range(2)]  # fmt: skip
    assert [m["seed"] for ms in marks for m in ms] == [5, 6, 7, 8]
    assert {m["start"] for m in marks[0]} == {str(agent_dir)}
    assert {m["start"] for m in marks[1]} == {str(out / "round-0" / "soup")}
    for r in range(2):
        members = [load_file(f"{m['model_dir']}/model.safetensors") for m in marks[r]]
        soup = load_file(out / f"round-{r}" / "soup" / "model.safetensors")
        for key in soup:
            want = (members[0][key].double() + members[1][key].double()) / 2
            torch.testing.assert_close(soup[key], want.to(soup[key].dtype))
    final = load_file(out / "model" / "model.safetensors")
    last = load_file(out / "round-1" / "soup" / "model.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in last)
    assert (out / "model" / "preprocessor_config.json").is_file()
    assert summary["agent_eval"]["episodes"]["episodes"] == 1
    assert json.loads((out / "agent_eval_start.json").read_text())["episodes"]["episodes"] == 1
    assert len(json.loads((out / "soup.json").read_text())["members"]) == 2

    def refuse(*a, **k):
        raise AssertionError("a finished member was trained again")

    monkeypatch.setattr(rl_soup, "train_agent_rl", refuse)
    again = train_agent_rl_soup(config, seeds=2, rounds=2)
    assert again["agent_eval"] == summary["agent_eval"]


def test_members_side_by_side_are_the_same_files(tmp_path, agent_dir, monkeypatch):
    """jobs=2: the round's two members train at once in spawned processes (nothing trains in
    this one) and come out bit-identical to the members trained one after another here."""
    files = {}
    for jobs in (1, 2):
        if jobs == 2:  # a spawned process imports rl_soup afresh: the patch is only here

            def refuse(*a, **k):
                raise AssertionError("a member trained in the calling process")

            monkeypatch.setattr(rl_soup, "train_agent_rl", refuse)
        out = tmp_path / f"jobs{jobs}"
        config = load_config(None, [f"out_dir={out}", f"model.init_from={agent_dir}", *TINY,
                                    "rl.eval_tasks=0"], AgentRLConfig)  # fmt: skip
        summary = train_agent_rl_soup(config, seeds=2, jobs=jobs)
        files[jobs] = [load_file(f"{m}/model.safetensors") for m in summary["members"][0]]
        assert all(str(out) in m for m in summary["members"][0])
    for one, two in zip(files[1], files[2], strict=True):
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    start = load_file(agent_dir / "model.safetensors")
    assert any(not torch.equal(files[2][0][k], start[k]) for k in start)  # they did train


def test_soup_refusals(tmp_path, agent_dir, monkeypatch):
    config = load_config(
        None, [f"out_dir={tmp_path}", f"model.init_from={agent_dir}"], AgentRLConfig
    )
    with pytest.raises(ConfigError, match="seeds=0"):
        train_agent_rl_soup(config, seeds=0)
    with pytest.raises(ConfigError, match="jobs=0"):
        train_agent_rl_soup(config, seeds=2, jobs=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="single-process"):
        train_agent_rl_soup(config, seeds=2)
    monkeypatch.delenv("WORLD_SIZE")
    config.model.init_from = ""
    with pytest.raises(ConfigError, match="model.init_from"):
        train_agent_rl_soup(config, seeds=2)
