"""RL task wiring shared by GRPO and PPO: problems of each task, JSONL prompt/answer files,
chat-formatted prompts and the R1 rule reward."""

from __future__ import annotations

import json

import pytest

from lmforge.align.rl_tasks import (
    PromptAnswer,
    prompt_record,
    r1_prompt_ids,
    r1_reward,
    read_prompt_answers,
    task_problems,
)
from lmforge.align.rollout import Completion
from lmforge.data.tasks.arithmetic import arithmetic_problems
from lmforge.data.tasks.countdown import countdown_problems


def test_task_problems_default_to_the_generators_own_settings():
    assert task_problems("arithmetic", "train", 20, 3) == arithmetic_problems(20, 3, "train")
    assert task_problems("countdown", "test", 5, 1) == countdown_problems(5, 1, "test")
    got = task_problems("arithmetic", "test", 10, 0, digits=3, ops=["+"])
    assert got == arithmetic_problems(10, 0, "test", 3, ("+",))


def test_prompt_files_hold_out_a_seeded_val_fraction_or_val_paths_and_name_bad_lines(tmp_path):
    from lmforge.train.sft import split_validation

    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": i, "tests": [i]}) + "\n"
                            for i in range(20)))  # fmt: skip
    train = task_problems("prompts", "train", 100, 0, paths=[str(path)], val_fraction=0.1)
    test = task_problems("prompts", "test", 100, 0, paths=[str(path)], val_fraction=0.1)
    everything = read_prompt_answers([str(path)])
    assert (train, test) == split_validation(everything, 0.1, 0)  # as SFT holds examples out
    assert len(test) == 2 and len(train) == 18
    assert {x.prompt for x in train}.isdisjoint(x.prompt for x in test)
    assert test[0].answer == str(test[0].fields["answer"])  # raw fields kept for rewards
    assert test[0].fields["tests"] == [test[0].fields["answer"]]
    assert task_problems("prompts", "test", 100, 0, paths=[str(path)], val_fraction=0) == []
    held = tmp_path / "held.json"  # a JSON array file, given as data.val_paths
    held.write_text(json.dumps([{"prompt": "h", "answer": "1"}]))
    assert task_problems("prompts", "test", 5, 0, paths=[str(path)], val_paths=[str(held)]) == [
        PromptAnswer("h", "1", {"answer": "1"})
    ]
    assert len(task_problems("prompts", "train", 5, 0, paths=[str(path)],
                             val_paths=[str(held)])) == 5  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": "1"}\n\n{"question": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: expected 'prompt'.*'question'"):
        read_prompt_answers([str(bad)])


def test_conversational_prompts_go_through_the_chat_template():
    class Tok:
        def apply_chat_template(self, messages, add_generation_prompt=False):
            assert add_generation_prompt
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

        def encode(self, text):
            return [ord(c) for c in text]

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    item = prompt_record({"prompt": chat, "answer": 3}, "f:1")
    assert r1_prompt_ids(Tok(), item, "ignored: the record has a system turn") == [
        ord(c) for c in "system:be brief|user:hi"
    ]
    conv = prompt_record({"messages": [*chat[1:], {"role": "assistant", "content": "hello"}]}, "")
    assert conv.prompt == chat[1:] and conv.fields["reference"] == "hello"  # not in the prompt
    assert r1_prompt_ids(Tok(), conv, "sys") == [ord(c) for c in "system:sys|user:hi"]
    with pytest.raises(ValueError, match="f:2: a conversation must be"):
        prompt_record({"prompt": [{"text": "x"}]}, "f:2")
    with pytest.raises(ValueError, match="no 'answer' for the built-in accuracy reward"):
        r1_reward(prompt_record({"prompt": "q"}, "f:3"), Completion([], [1], "x", "stop"))


def test_r1_prompt_ids_are_the_chat_template_with_the_assistant_opening():
    class Tok:
        def apply_chat_template(self, messages, add_generation_prompt=False):
            assert add_generation_prompt
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

        def encode(self, text):
            return [ord(c) for c in text]

    item = PromptAnswer("2+2?", "4")
    assert r1_prompt_ids(Tok(), item) == [ord(c) for c in "user:2+2?"]
    assert r1_prompt_ids(Tok(), item, "think") == [ord(c) for c in "system:think|user:2+2?"]


def test_r1_reward_scores_accuracy_format_and_overlong():
    from lmforge.data.tasks.arithmetic import ArithmeticProblem

    p = ArithmeticProblem(12, "+", 30)
    good = Completion([], [0] * 10, "<think>2+0=2, 1+3=4</think><answer>42</answer>", "stop")
    assert r1_reward(p, good) == {"reward": 1.1, "accuracy": 1.0, "format": 1.0}
    wrong = Completion([], [0] * 10, "<answer>41</answer>", "stop")
    assert r1_reward(p, wrong) == {"reward": 0.0, "accuracy": 0.0, "format": 0.0}
    long = Completion([], [0] * 18, good.text, "length")
    r = r1_reward(p, long, format_weight=0.5, max_new_tokens=20, overlong_cache=4)
    assert r["reward"] == pytest.approx(1.5 - 0.5)
    # a prompt with a reference answer is checked by math_verify
    assert r1_reward(PromptAnswer("q", "42"), good)["accuracy"] == 1.0
