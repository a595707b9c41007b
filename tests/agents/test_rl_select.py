"""Checkpoint selection for agent RL: fresh validation tasks (no SFT data, no RL pool, the
pool's split); the best score kept strictly (ties keep the earlier weights), its weights
restored; the files a resumed run reads (and a new run ignores); through `train_agent_rl`:
the start, every k steps and the end scored, the exported model the selected weights, and a
resumed run that goes on with the scores so far."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lmforge.agents import rl_select
from lmforge.agents.rl import train_agent_rl
from lmforge.agents.rl_config import AgentRLConfig, AgentRLSection, check_agent_rl_config
from lmforge.agents.rl_select import VALIDATION_SEED, Selection, validation_tasks
from lmforge.agents.rl_tasks import POOL_TOP
from lmforge.agents.tasks import split_choices
from lmforge.config import ConfigError
from lmforge.train.config import load_config


@pytest.fixture(scope="module")
def vlm(agent_vlm_factory):
    model, tok, processor, _ = agent_vlm_factory(4, 2)
    return model, tok, processor


def test_validation_tasks_are_fresh_tasks_of_the_pools_split():
    r = AgentRLSection(select_tasks=12)
    tasks = validation_tasks(r)
    assert [t.seed for t in tasks] == list(range(VALIDATION_SEED, VALIDATION_SEED + 12))
    templates, layouts = split_choices("train")
    assert all(t.template in templates and t.layout in layouts for t in tasks)
    assert validation_tasks(r)[3].instruction == tasks[3].instruction  # deterministic
    seeds = {t.seed for t in tasks}
    for train_seed in (0, 1, 2, 99):  # a fresh pool's seeds count down from 2³¹ − 1
        pool = {POOL_TOP - train_seed * 1_000_003 - i for i in range(1000)}
        assert not seeds & pool
    assert min(seeds) > 1000 * 1_000_003  # the SFT data's count up from 0 (seed · 1,000,003 + i)


def test_validation_plays_greedily_as_the_evaluation_decodes(vlm, monkeypatch):
    model, tok, processor = vlm
    model = copy.deepcopy(model).train()
    r = AgentRLSection(select_tasks=3, typing="free", thoughts="expert", clicks="pointer",
                       eval_max_steps=4)  # fmt: skip
    seen = {}

    def fake_run(policy, tasks, max_steps):
        seen.update(policy=policy, tasks=tasks, max_steps=max_steps, training=model.training)
        return [SimpleNamespace(record=SimpleNamespace(success=s)) for s in (True, False, True)]

    monkeypatch.setattr(rl_select, "run_episodes", fake_run)
    tasks = validation_tasks(r)
    assert rl_select.validation_success(model, tok, processor, tasks, r) == pytest.approx(2 / 3)
    p = seen["policy"]
    assert (p.temperature, p.constrained, p.typing, p.thoughts, p.clicks) == (
        0.0, True, "free", "expert", "pointer")  # fmt: skip
    assert seen["tasks"] is tasks and seen["max_steps"] == 4
    assert not seen["training"] and model.training  # eval mode while playing, then back


def scripted(monkeypatch, scores):
    """validation_success returns ``scores`` in turn."""
    it = iter(scores)
    monkeypatch.setattr(rl_select, "validation_success", lambda *a: next(it))


def test_the_best_is_kept_strictly_and_restored(tmp_path, monkeypatch):
    scripted(monkeypatch, [0.4, 0.5, 0.5, 0.3])
    model = torch.nn.Linear(2, 2)
    sel = Selection(tmp_path, [], AgentRLSection(select_every=1))
    weights = {}
    for step in range(4):
        with torch.no_grad():
            model.weight.fill_(float(step))
        weights[step] = model.weight.clone()
        sel.score(model, None, None, step)
    assert sel.best == (1, 0.5)  # step 2 ties step 1: the earlier stays
    assert sel.scores == {0: 0.4, 1: 0.5, 2: 0.5, 3: 0.3}
    assert sel.restore(model) == 1 and torch.equal(model.weight, weights[1])
    record = json.loads((tmp_path / "selection.json").read_text())
    assert record == {"scores": [[0, 0.4], [1, 0.5], [2, 0.5], [3, 0.3]], "best": 1}
    saved = torch.load(tmp_path / "selected.pt", weights_only=True)
    assert saved["step"] == 1 and torch.equal(saved["state"]["weight"], weights[1])


def test_a_resumed_selection_keeps_the_best_and_drops_later_scores(tmp_path, monkeypatch):
    scripted(monkeypatch, [0.2, 0.6, 0.1, 0.7])
    model = torch.nn.Linear(2, 2)
    first = Selection(tmp_path, [], AgentRLSection(select_every=1))
    for step in range(3):
        with torch.no_grad():
            model.weight.fill_(float(step))
        first.score(model, None, None, step)
    resumed = Selection(tmp_path, [], AgentRLSection(select_every=1), resumed_step=1)
    assert resumed.best == (1, 0.6) and resumed.scores == {0: 0.2, 1: 0.6}  # step 2 replays
    other = torch.nn.Linear(2, 2)
    assert resumed.restore(other) == 1 and torch.all(other.weight == 1.0)
    new = Selection(tmp_path, [], AgentRLSection(select_every=1))  # a new run: files ignored
    assert new.best is None and new.scores == {} and new.restore(other) is None
    new.score(model, None, None, 0)  # … and overwritten
    assert json.loads((tmp_path / "selection.json").read_text())["scores"] == [[0, 0.7]]


def test_bad_selection_settings_name_the_field():
    for bad in ({"select_every": -1}, {"select_every": 5, "select_tasks": 0}):
        config = AgentRLConfig(rl=AgentRLSection(**bad))
        with pytest.raises(ConfigError, match="rl.select_every"):
            check_agent_rl_config(config)


def rl_overrides(out, *extra):
    return [f"out_dir={out}", "rl.pool_tasks=2", "rl.tasks_per_rollout=1", "rl.group_size=2",
            "rl.max_steps=2", "rl.eval_tasks=0", "rl.eval_max_steps=2", "rl.max_new_tokens=48",
            "train.batch_size=1", "train.eval_every=0", "log.progress=false", "log.plot=false",
            "optim.warmup_steps=1", "optim.lr=1e-2", "data.seq_len=256", "rl.select_every=2",
            "rl.select_tasks=2", "train.keep_last=5", *extra]  # fmt: skip


def test_rl_exports_the_selected_weights_and_resumes_the_selection(tmp_path, vlm, monkeypatch):
    model, tok, _ = vlm
    out = tmp_path / "rl"
    # scores in turn: the start, step 2, step 3 (the end; select_every=2)
    scripted(monkeypatch, [0.0, 0.5, 0.25])
    config = load_config(None, rl_overrides(out, "train.max_steps=3", "train.save_every=1"),
                         AgentRLConfig)  # fmt: skip
    summary = train_agent_rl(config, copy.deepcopy(model), tok)
    assert summary["step"] == 3 and summary["selected_step"] == 2
    assert summary["selection"] == [(0, 0.0), (2, 0.5), (3, 0.25)]
    exported = load_file(out / "model" / "model.safetensors")
    selected = torch.load(out / "selected.pt", weights_only=True)
    assert selected["step"] == 2
    step2 = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
    last = load_file(out / "checkpoints" / "step-00000003" / "model.safetensors")
    assert exported.keys() == last.keys()
    assert any(not torch.equal(exported[k], last[k]) for k in last)  # not the last step's
    assert all(torch.equal(exported[k], step2[k]) for k in step2)
    # resumed to step 4: the scores so far kept, the end scored, the best kept (0.5 > 0.4)
    scripted(monkeypatch, [0.4])
    config = load_config(None, rl_overrides(out, "train.max_steps=4", "train.save_every=1",
                                            "train.resume=true"), AgentRLConfig)  # fmt: skip
    summary = train_agent_rl(config, copy.deepcopy(model), tok)
    assert summary["selection"] == [(0, 0.0), (2, 0.5), (3, 0.25), (4, 0.4)]
    assert summary["selected_step"] == 2
    again = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(again[k], exported[k]) for k in exported)
