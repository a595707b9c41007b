"""Custom rewards: specs, loading a user's module (dotted name or file), the keyword arguments
a function receives, errors naming the function, weights, and a reward model's scores."""

from __future__ import annotations

import sys

import pytest
import torch

from lmforge.align.custom_rewards import (
    CombinedReward,
    RewardFunctionError,
    RewardSpec,
    call_reward_function,
    load_reward_function,
    parse_reward_spec,
    reward_model_scores,
)
from lmforge.align.rl_tasks import prompt_record, r1_reward
from lmforge.align.rollout import Completion

MODULE = """
calls = []

def exact(completion, answer):
    calls.append(("exact", completion, answer))
    return float(completion.strip() == str(answer))

def everything(prompt, completion, **fields):
    calls.append(("everything", prompt, completion, fields))
    return 0.5

def broken(completion):
    return 1 / 0

def not_a_number(completion):
    return "high"

def needs_tests(completion, tests):
    return 1.0
"""


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)  # the CLI finds modules in the current directory
    yield tmp_path / "my_rewards_mod.py"
    sys.modules.pop("my_rewards_mod", None)


def test_specs_parse_names_weights_and_builtins():
    assert parse_reward_spec("mod:f") == RewardSpec("mod:f", 1.0)
    assert parse_reward_spec("pkg.mod:f:0.25") == RewardSpec("pkg.mod:f", 0.25)
    assert parse_reward_spec("dir/rewards.py:g:-2") == RewardSpec("dir/rewards.py:g", -2.0)
    assert (
        parse_reward_spec("r1") == RewardSpec("r1")
        and parse_reward_spec("format:0.1").weight == 0.1
    )
    assert parse_reward_spec("mod:f:0.5").name == "f"
    for bad in ("mod", "mod:", ":f", "mod:f-g", "mod:f:nan"):
        with pytest.raises(RewardFunctionError, match="reward"):
            parse_reward_spec(bad)


def test_functions_load_from_the_current_directory_or_a_file(reward_module):
    fn = load_reward_function(parse_reward_spec("my_rewards_mod:exact"))
    assert fn(completion=" 7", answer="7") == 1.0
    by_path = load_reward_function(parse_reward_spec(f"{reward_module}:exact"))
    assert by_path(completion="7", answer="8") == 0.0
    with pytest.raises(RewardFunctionError, match="has no 'nope' .*callables: .*exact"):
        load_reward_function(parse_reward_spec("my_rewards_mod:nope"))
    with pytest.raises(RewardFunctionError, match="cannot import 'no_such_mod_xyz'"):
        load_reward_function(parse_reward_spec("no_such_mod_xyz:f"))
    with pytest.raises(RewardFunctionError, match="no such file"):
        load_reward_function(parse_reward_spec("missing/rewards.py:f"))


def test_a_function_gets_what_it_names_or_everything_with_kwargs_and_errors_name_it(
    reward_module,
):
    reward = CombinedReward([parse_reward_spec("my_rewards_mod:exact:2"),
                             parse_reward_spec("my_rewards_mod:everything:-1")])  # fmt: skip
    chat = [{"role": "user", "content": "3+4?"}]
    item = prompt_record({"prompt": chat, "answer": 7, "tests": ["t1"]}, "data.jsonl:4")
    scores = reward(item, Completion([1], [2], "7", "stop"))
    assert scores == {"reward_exact": 1.0, "reward_everything": 0.5, "reward": 2 * 1.0 - 0.5}
    mod = sys.modules["my_rewards_mod"]
    assert mod.calls[0] == ("exact", "7", 7)  # the record's raw answer
    assert mod.calls[1] == ("everything", chat, "7", {"answer": 7, "tests": ["t1"]})
    for name, message in (("broken", r"'my_rewards_mod:broken' raised ZeroDivisionError.*"
                                      r"on data.jsonl:4"),
                          ("not_a_number", r"'my_rewards_mod:not_a_number' returned str 'high'"
                                           r".*must return a float"),
                          ("needs_tests", r"needs 'tests' but the record on data.jsonl:5 has "
                                          r"only answer, completion, prompt")):  # fmt: skip
        bad = CombinedReward([parse_reward_spec(f"my_rewards_mod:{name}")])
        record = {"prompt": "q", "answer": "1"} if name == "needs_tests" else {"prompt": "q"}
        where = "data.jsonl:5" if name == "needs_tests" else "data.jsonl:4"
        with pytest.raises(RewardFunctionError, match=message):
            bad(prompt_record(record, where), Completion([], [1], "x", "stop"))
    with pytest.raises(RewardFunctionError, match="must be finite"):
        call_reward_function(lambda completion: float("inf"), "inf", {"completion": "x"})


def test_builtins_are_the_r1_reward_and_its_parts():
    from lmforge.data.tasks.arithmetic import ArithmeticProblem

    problem = ArithmeticProblem(3, "+", 4)
    c = Completion([], [1] * 5, "<think>3+4=7</think><answer>7</answer>", "stop")
    want = r1_reward(problem, c, 0.1)
    got = CombinedReward([parse_reward_spec("r1")], format_weight=0.1)(problem, c)
    assert got["reward"] == want["reward"] and got["accuracy"] == 1.0 and got["format"] == 1.0
    parts = CombinedReward([parse_reward_spec("accuracy"), parse_reward_spec("format:0.5")])
    assert parts(problem, c)["reward"] == 1.5

    def by_field(a, b, op, problem, completion):  # a generated problem's fields, and itself
        assert isinstance(problem, ArithmeticProblem)
        return float(str(a + b) in completion)

    assert call_reward_function(by_field, "f", {"a": 3, "b": 4, "op": "+", "problem": problem,
                                                "completion": c.text}) == 1.0  # fmt: skip


def test_reward_model_scores_are_its_last_token_outputs_and_add_with_their_weight():
    from lmforge.align.reward_model import RewardModel
    from lmforge.models.presets import preset_config

    torch.manual_seed(0)
    rm = RewardModel(preset_config("tiny", vocab_size=32, hidden_size=32, intermediate_size=64))
    torch.nn.init.normal_(rm.score.weight)
    rm.eval()
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    with torch.no_grad():
        alone = [rm(torch.tensor([s])).item() for s in seqs]
    assert reward_model_scores(rm, seqs, batch_size=2) == pytest.approx(alone, abs=1e-5)
    combined = CombinedReward([], reward_model=rm, reward_model_weight=0.5)
    items = [prompt_record({"prompt": "q"}, "")] * 2
    out = combined.score_many(items, [Completion([1, 2], [3], "", "stop"),
                                      Completion([4, 5], [6, 7, 8], "", "stop")])  # fmt: skip
    assert [o["reward_model"] for o in out] == pytest.approx(alone[:2], abs=1e-5)
    assert [o["reward"] for o in out] == pytest.approx([0.5 * a for a in alone[:2]], abs=1e-5)
    with pytest.raises(RewardFunctionError, match="no reward"):
        CombinedReward([])
